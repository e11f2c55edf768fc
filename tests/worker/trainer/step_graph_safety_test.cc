// What makes a training step capturable as a CUDA graph, checked on the CPU
// (the graph itself needs a GPU: tests/gpu). A replay repeats the captured
// kernels with the host arguments they had at capture, so the step that
// optimization.cuda_graph captures (CapturableStepBody: quantizer forward
// weights, task loss, backward) must
//   1. read nothing back to the host (no .item(), no data-dependent shapes),
//   2. issue, for two steps of one StepStructure(), the same operations with
//      the same non-tensor arguments: every per-step value (κ, LAT's moment
//      correction, the batch) must reach it through device memory.
// Both are observed with a RecordFunction callback on the real classification
// task (synthetic data, static batches) and TernaryModel, for every method
// the option allows, in both HLA phases. The negative control shows the
// comparison sees a baked-in host scalar: without device scalars, κ and the
// correction differ between the two steps' arguments.
#include <ATen/record_function.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <iomanip>
#include <iostream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "quant/ternary_model.h"
#include "worker/trainer/data.h"
#include "worker/trainer/multi_tensor_sgd.h"
#include "worker/trainer/spec.h"
#include "worker/trainer/step_graph.h"
#include "worker/trainer/task.h"

namespace tern::trainer {
namespace {

// Operations that read a tensor's value on the host (a device sync) or make
// shapes that depend on values.
const std::set<std::string>& HostReads() {
  static const std::set<std::string> ops = {
      "aten::_local_scalar_dense", "aten::item",   "aten::is_nonzero", "aten::nonzero",
      "aten::masked_select",       "aten::equal",  "aten::allclose",   "aten::unique_dim",
      "aten::_unique",             "aten::_unique2", "aten::unique_consecutive"};
  return ops;
}

// Every operation the process runs while recording, with its non-tensor
// arguments ("aten::mul(5.0)"), in order.
class OpRecorder {
 public:
  OpRecorder() {
    handle_ = at::addGlobalCallback(
        at::RecordFunctionCallback(&OpRecorder::OnStart).needsInputs(true));
  }
  ~OpRecorder() { at::removeCallback(handle_); }

  std::vector<std::string> Record(const std::function<void()>& body) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ops_.clear();
      recording_ = true;
    }
    body();
    std::lock_guard<std::mutex> lock(mu_);
    recording_ = false;
    return ops_;
  }

 private:
  static std::unique_ptr<at::ObserverContext> OnStart(const at::RecordFunction& fn) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!recording_) return nullptr;
    std::ostringstream op;
    op << fn.name() << "(";
    if (fn.scope() == at::RecordScope::FUNCTION) {
      for (const c10::IValue& v : fn.inputs()) {
        if (v.isTensor() || v.isTensorList() || v.isList() || v.isNone()) {
          op << "T,";  // values live in device memory; lists of tensors too
        } else if (v.isStorage()) {
          op << "S,";  // set_'s storage: host metadata, no kernel argument
        } else if (v.isDouble()) {
          op << std::setprecision(17) << v.toDouble() << ",";  // every bit
        } else {
          op << v << ",";
        }
      }
    }
    op << ")";
    ops_.push_back(op.str());
    return nullptr;
  }

  static std::mutex mu_;
  static bool recording_;
  static std::vector<std::string> ops_;
  at::CallbackHandle handle_;
};
std::mutex OpRecorder::mu_;
bool OpRecorder::recording_ = false;
std::vector<std::string> OpRecorder::ops_;

struct StepTrace {
  int64_t structure = 0;
  bool capturable = false;
  std::vector<std::string> ops;
};

// Four training steps of `method` at progress p, p + 0.01, ... as trainer.cc
// runs them with optimization.cuda_graph (gradients reset before the body, as
// StepGraph does), each body recorded.
std::vector<StepTrace> TraceSteps(const std::string& method, double progress,
                                  bool device_scalars) {
  auto spec = ParseTrainerSpec(R"({"optimization": {"epochs": 1, "batch_size": 8},
      "quantization": {"method": "METHOD_)" + method + R"("},
      "model": {"arch": "resnet20", "width_multiplier": 0.25},
      "dataset": {"kind": "DATASET_SYNTHETIC", "input_size": 16, "max_train_examples": 32,
                  "max_eval_examples": 8, "num_workers": 0}})");
  EXPECT_TRUE(spec.ok()) << spec.status();
  if (!spec.ok()) return {};
  TaskContext ctx;
  ctx.spec = &*spec;
  ctx.static_batches = true;
  torch::manual_seed(1);
  std::unique_ptr<TrainingTask> task = MakeClassificationTask(ctx);
  EXPECT_TRUE(task->Load().ok());
  auto quant = quant::TernaryModel::Attach(task->model(), spec->quant, task->output_layers());
  EXPECT_TRUE(quant.ok()) << quant.status();
  if (!quant.ok()) return {};
  (*quant)->set_device_scalars(device_scalars);
  // The recorder sees ATen operations: the projection's ATen path. The fused one is plain C++
  // on the CPU (invisible here) and reads κ and the correction through pointers on CUDA
  // (tests/quant/fused_projection_reference_test.cc, tests/gpu).
  (*quant)->set_fused_projection(false);
  std::vector<at::Tensor> params = task->model()->parameters();
  MultiTensorSgd optimizer(params, torch::optim::SGDOptions(0.05).momentum(0.9));
  ShardedSampler sampler(task->train_size(), 8, 0, 1, 0, /*shuffle=*/true);
  task->StartTraining(sampler);
  task->StartEpoch(0, 0);
  OpRecorder recorder;
  std::vector<StepTrace> steps;
  for (int step = 0; step < 4; ++step) {
    (*quant)->SetProgress(progress + 0.01 * step);
    EXPECT_TRUE(task->NextBatch().ok());
    for (at::Tensor& p : params) {
      if (p.grad().defined()) p.mutable_grad().reset();
    }
    StepTrace trace;
    trace.structure = (*quant)->StepStructure();
    trace.ops = recorder.Record([&] { CapturableStepBody(**quant, *task); });
    trace.capturable = (*quant)->last_forward_capturable();
    (*quant)->AfterBackward();
    optimizer.step();
    steps.push_back(std::move(trace));
  }
  return steps;
}

std::string FirstDifference(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (a[i] != b[i]) return "op " + std::to_string(i) + ": " + a[i] + " vs " + b[i];
  }
  return a.size() == b.size() ? "" : "lengths " + std::to_string(a.size()) + " vs " +
                                         std::to_string(b.size());
}

TEST(StepGraphSafetyTest, CapturedStepReadsNothingBackAndRepeatsItsArguments) {
  for (const char* method : {"FP", "TWN", "LAT", "HLA", "HLA_NO_REGULARIZER", "HLA_NO_RESCALE"}) {
    for (double progress : {0.1, 0.6}) {  // HLA phase 1 (FP forward + R), phase 2
      SCOPED_TRACE(std::string(method) + " at progress " + std::to_string(progress));
      const std::vector<StepTrace> steps = TraceSteps(method, progress, /*device_scalars=*/true);
      ASSERT_EQ(steps.size(), 4u);
      for (const StepTrace& s : steps) {
        EXPECT_TRUE(s.capturable);
        EXPECT_GT(s.ops.size(), 100u);  // the recorder saw the step
        for (const std::string& op : s.ops) {
          EXPECT_EQ(HostReads().count(op.substr(0, op.find('('))), 0u) << op;
        }
      }
      // LAT's moments exist from the second step on, which therefore runs
      // eagerly (StepGraph runs the first step of every structure eagerly:
      // it allocates the packed moment buffer). The third step is captured,
      // the fourth replays it: they must agree.
      ASSERT_EQ(steps[1].structure, steps[2].structure);
      ASSERT_EQ(steps[2].structure, steps[3].structure);
      EXPECT_EQ(FirstDifference(steps[2].ops, steps[3].ops), "");
    }
  }
}

TEST(StepGraphSafetyTest, HostScalarsWouldBeBakedIntoTheCaptureWithoutDeviceScalars) {
  // κ anneals in phase 2 and LAT's correction changes every step: as host
  // scalars they show up as differing arguments, which a replay would freeze.
  const std::vector<StepTrace> steps = TraceSteps("HLA", 0.6, /*device_scalars=*/false);
  ASSERT_EQ(steps.size(), 4u);
  ASSERT_EQ(steps[2].structure, steps[3].structure);
  const std::string difference = FirstDifference(steps[2].ops, steps[3].ops);
  EXPECT_NE(difference, "");
  std::cout << "without device scalars, first difference: " << difference << "\n";
}

}  // namespace
}  // namespace tern::trainer
