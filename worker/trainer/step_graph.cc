#include "worker/trainer/step_graph.h"

#include <algorithm>
#include <exception>
#include <optional>
#include <string>
#include <utility>

#include "quant/ternary_model.h"
#include "worker/trainer/task.h"

#ifdef TERN_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace tern::trainer {

at::Tensor CapturableStepBody(quant::TernaryModel& quant, TrainingTask& task) {
  quant.BeforeForward();
  at::Tensor loss = task.MicroBatchLoss(0, 1);
  loss.backward();
  return loss.detach();
}

#ifdef TERN_WITH_CUDA

struct StepGraph::Impl {
  Impl(const at::Device& device, std::vector<at::Tensor> params, int warmup_runs)
      : device(device),
        params(std::move(params)),
        warmup_runs(std::max(1, warmup_runs)),
        stream(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index())) {}

  // Undefined gradients: the next backward stores rather than adds.
  void ResetGradients() {
    for (at::Tensor& p : params) {
      if (p.grad().defined()) p.mutable_grad().reset();
    }
  }

  void DropCapture() {
    graph.reset();  // its memory pool goes once the tensors it made are freed
    captured_value = at::Tensor();
  }

  // Captures body, then replays it once (the capture itself runs nothing).
  Status CaptureAndReplay(const std::function<at::Tensor()>& body) {
    ResetGradients();
    // Start from an idle device: nothing queued whose completion the
    // allocator would have to query while the capture is under way.
    c10::cuda::device_synchronize();
    graph = std::make_unique<at::cuda::CUDAGraph>();
    graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    std::string failure;
    try {
      captured_value = body();
    } catch (const std::exception& e) {
      failure = std::string("the step failed while being captured: ") + e.what();
    }
    try {
      graph->capture_end();
    } catch (const std::exception& e) {
      if (failure.empty()) failure = std::string("the capture is invalid: ") + e.what();
    }
    if (!failure.empty()) {
      DropCapture();
      eager_left = 1;
      return InternalError("CUDA graph: " + failure);
    }
    ++captures;
    graph->replay();
    ++replays;
    return OkStatus();
  }

  at::Device device;
  std::vector<at::Tensor> params;
  int warmup_runs;
  int eager_left = 0;
  std::optional<int64_t> structure;
  c10::cuda::CUDAStream stream;
  at::cuda::CUDAEvent enter, leave;  // caller's stream -> ours -> caller's
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::Tensor captured_value;
  int64_t captures = 0;
  int64_t replays = 0;
};

StatusOr<std::unique_ptr<StepGraph>> StepGraph::Create(const at::Device& device,
                                                       std::vector<at::Tensor> params,
                                                       int warmup_runs) {
  if (!device.is_cuda() || !device.has_index()) {
    return InvalidArgumentError("CUDA graph: needs an indexed CUDA device, got " + device.str());
  }
  try {
    return std::unique_ptr<StepGraph>(
        new StepGraph(std::make_unique<Impl>(device, std::move(params), warmup_runs)));
  } catch (const std::exception& e) {
    return InternalError(std::string("CUDA graph: set-up failed: ") + e.what());
  }
}

StatusOr<StepGraph::Result> StepGraph::Run(int64_t structure,
                                           const std::function<at::Tensor()>& body) {
  Impl& m = *impl_;
  const c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream(m.device.index());
  m.enter.record(caller);
  m.enter.block(m.stream);
  Result result;
  Status status = OkStatus();
  {
    c10::cuda::CUDAStreamGuard on_our_stream(m.stream);
    if (m.structure != structure) {
      // The first runs warm up; a new structure re-captures after (at least)
      // one eager run.
      m.eager_left = m.structure.has_value() ? std::max(m.eager_left, 1) : m.warmup_runs;
      m.structure = structure;
      m.DropCapture();
    }
    try {
      if (m.eager_left > 0) {
        --m.eager_left;
        m.ResetGradients();
        result.value = body();
        result.kind = RunKind::kEager;
      } else if (m.graph == nullptr) {
        status = m.CaptureAndReplay(body);
        result.value = m.captured_value;
        result.kind = RunKind::kCaptured;
      } else {
        m.graph->replay();
        ++m.replays;
        result.value = m.captured_value;
        result.kind = RunKind::kReplayed;
      }
    } catch (const std::exception& e) {
      status = InternalError(std::string("CUDA graph step: ") + e.what());
    }
  }
  m.leave.record(m.stream);
  m.leave.block(caller);
  if (!status.ok()) return status;
  return result;
}

#else  // !TERN_WITH_CUDA

struct StepGraph::Impl {
  int64_t captures = 0;
  int64_t replays = 0;
};

StatusOr<std::unique_ptr<StepGraph>> StepGraph::Create(const at::Device& device,
                                                       std::vector<at::Tensor> /*params*/,
                                                       int /*warmup_runs*/) {
  return FailedPreconditionError("CUDA graph: this build has no CUDA support (device " +
                                 device.str() + ")");
}

StatusOr<StepGraph::Result> StepGraph::Run(int64_t /*structure*/,
                                           const std::function<at::Tensor()>& /*body*/) {
  return FailedPreconditionError("CUDA graph: this build has no CUDA support");
}

#endif  // TERN_WITH_CUDA

StepGraph::StepGraph(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
StepGraph::~StepGraph() = default;
int64_t StepGraph::captures() const { return impl_->captures; }
int64_t StepGraph::replays() const { return impl_->replays; }

}  // namespace tern::trainer
