// StepGraph: a training step's forward and backward captured once as a CUDA
// graph and replayed, so a small network's ~200 kernels cost one launch per
// step instead of one each (docs/BENCHMARKS.md: an eager ResNet-20 step on
// the GPU is bound by launches, ~9.5 µs apiece, not by arithmetic).
//
// Run(structure, body) runs `body` (forward + backward of one step,
// returning the loss) on the StepGraph's own CUDA stream, ordered after the
// work already queued on the caller's current stream and before what the
// caller queues next:
//   - eagerly for the first `warmup_runs` calls and for (at least) the first
//     call after `structure` changes (cuDNN autotuning, allocator growth and
//     library workspaces then happen outside any capture);
//   - then captures `body` once (the capture runs nothing) and replays it,
//     on that call and every following one. A new `structure` drops the
//     capture and starts over.
//
// Contract for `body`:
//   - it reads only tensors that outlive the StepGraph and stay where they
//     are (parameters, buffers, input tensors the caller overwrites in place
//     before each Run(), 0-dim device tensors holding per-step scalars); a
//     replay repeats the capture's kernels on the capture's addresses with
//     the capture's host arguments;
//   - no host synchronization (.item(), blocking copies), no collectives,
//     no host-to-device copies of new data, the same shapes on every call;
//   - gradients are written, not added: Run() resets the gradients of
//     `params` to undefined before every eager run and before the capture
//     (AccumulateGrad then stores the new gradient instead of adding), and
//     leaves them alone between replays, which rewrite them in place. The
//     caller must not zero or reset them either.
// Kernels are captured in thread-local mode: the data loader's threads may
// pin memory and query events while the training thread captures.
//
// Not thread-safe. Only CUDA builds (TERN_WITH_CUDA) have it: Create()
// fails elsewhere.
#ifndef TERN_WORKER_TRAINER_STEP_GRAPH_H_
#define TERN_WORKER_TRAINER_STEP_GRAPH_H_

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <vector>

#include "common/status.h"

namespace tern::quant {
class TernaryModel;
}  // namespace tern::quant

namespace tern::trainer {

class TrainingTask;

// The work optimization.cuda_graph captures for one step (micro_batches 1):
// the quantizer's forward weights, the task loss of the batch NextBatch()
// loaded, and its backward; returns that loss, detached. The regularizer is
// not in the differentiated loss: on the packed path, the only capturable one
// (TernaryModel::last_forward_capturable()), its loss is a constant and
// AfterBackward() adds its gradient, as in the eager step.
// tests/worker/trainer/step_graph_safety_test.cc checks on the CPU that it reads no
// value back to the host and that two steps of one structure issue the same
// operations with the same host arguments.
at::Tensor CapturableStepBody(quant::TernaryModel& quant, TrainingTask& task);

class StepGraph {
 public:
  enum class RunKind {
    kEager,     // body ran as usual
    kCaptured,  // body was captured, then the capture replayed once
    kReplayed,  // the capture replayed
  };
  struct Result {
    // body's result; after a capture or replay, the capture's output tensor,
    // which the next Run() overwrites (clone to keep it).
    at::Tensor value;
    RunKind kind = RunKind::kEager;
  };

  // `params`: the tensors whose gradients body's backward produces.
  static StatusOr<std::unique_ptr<StepGraph>> Create(const at::Device& device,
                                                     std::vector<at::Tensor> params,
                                                     int warmup_runs = 3);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  // Fails (an error naming the cause) when body throws or the capture is
  // invalid; the StepGraph then holds no capture and the next Run() starts
  // over with an eager run.
  StatusOr<Result> Run(int64_t structure, const std::function<at::Tensor()>& body);

  int64_t captures() const;  // graphs captured so far
  int64_t replays() const;   // replays so far (each capture replays once)

 private:
  struct Impl;
  explicit StepGraph(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_STEP_GRAPH_H_
