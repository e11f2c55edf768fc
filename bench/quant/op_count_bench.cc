// tern_op_count_bench: how many ATen operations one training step issues, per
// phase, for ResNet-20 with FP, TWN and HLA (packed and layer-by-layer
// projection) and torch::optim::SGD vs MultiTensorSgd. On a GPU nearly every
// counted op is one kernel launch, and these steps are launch-bound
// (docs/BENCHMARKS.md), so the count predicts where GPU time goes; it is
// measured here on the CPU, where the same code issues the same ops.
//
// Counted: operations that launch a kernel themselves: those not in
// NoKernelOps() (views, empty tensors, metadata) with no nested operation that
// launches one (index_select, whose only nested operation is a resize_, counts;
// sum, whose nested fill_ is counted, does not), and
// each multi-tensor `_foreach_` operation as one (on CUDA it is a handful of
// fused kernels for all its tensors; on the CPU it loops over them). Output:
// one markdown table on stdout; with --detail, then the operations of the last
// configuration (packed HLA) beyond FP's, by phase and name.
//
//   tern_op_count_bench [--width 1.0] [--batch 8] [--detail]
#include <ATen/record_function.h>
#include <torch/torch.h>

#include <cstring>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "quant/ternary_model.h"
#include "worker/trainer/models.h"
#include "worker/trainer/multi_tensor_sgd.h"

namespace {

using tern::quant::Method;

// Operations that only make views, allocate or read metadata: no kernel.
const std::set<std::string>& NoKernelOps() {
  static const std::set<std::string> ops = {
      "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::narrow", "aten::slice",
      "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::as_strided", "aten::expand",
      "aten::t", "aten::transpose", "aten::permute", "aten::detach", "aten::detach_", "detach",
      "aten::alias", "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::resize_",
      "aten::set_", "aten::lift_fresh", "aten::result_type", "aten::to", "aten::_unsafe_view",
      "aten::flatten", "aten::contiguous", "aten::is_nonzero", "aten::view_as", "aten::expand_as",
      "aten::unbind", "aten::split", "aten::chunk", "aten::numpy_T", "aten::requires_grad_"};
  return ops;
}

struct Frame {
  bool has_child = false;  // a nested operation launches a kernel
  bool foreach = false;  // a _foreach_ op: counted once, its children not
  std::string name;
};
thread_local std::vector<Frame> g_stack;
thread_local int g_inside_foreach = 0;
bool g_counting = false;
std::map<std::string, int64_t> g_counts;  // phase -> leaf ops
std::map<std::string, std::map<std::string, int64_t>> g_op_counts;  // phase -> op -> count
std::string g_phase;

std::unique_ptr<at::ObserverContext> OnStart(const at::RecordFunction& fn) {
  Frame frame;
  frame.foreach = std::strncmp(fn.name(), "aten::_foreach_", 15) == 0;
  frame.name = fn.name();
  if (frame.foreach && g_inside_foreach++ == 0 && g_counting) {
    ++g_counts[g_phase];
    ++g_op_counts[g_phase][fn.name()];
  }
  g_stack.push_back(frame);
  return nullptr;
}

void OnEnd(const at::RecordFunction& fn, at::ObserverContext*) {
  if (g_stack.empty()) return;
  const Frame frame = g_stack.back();
  g_stack.pop_back();
  // Autograd's per-node frames only wrap the node's operations.
  const bool launches_itself = !frame.has_child && fn.scope() == at::RecordScope::FUNCTION &&
                               NoKernelOps().count(frame.name) == 0 &&
                               frame.name.rfind("autograd::", 0) != 0;
  if (!g_stack.empty() && (frame.foreach || frame.has_child || launches_itself)) {
    g_stack.back().has_child = true;
  }
  if (frame.foreach) {
    --g_inside_foreach;
    return;
  }
  if (!g_counting || !launches_itself || g_inside_foreach > 0) return;
  ++g_counts[g_phase];
  // Named with its outermost operation when nested ("aten::sum > aten::fill_").
  const std::string outer = g_stack.empty() ? "" : g_stack.front().name + " > ";
  ++g_op_counts[g_phase][outer + fn.name()];
}

struct Config {
  std::string name;
  bool quantized = false;
  Method method = Method::kFp;
  bool packed = true;
  bool multi_tensor_sgd = true;
};

void Phase(const std::string& name) { g_phase = name; }

std::map<std::string, int64_t> CountStep(const Config& c, double width, int64_t batch) {
  torch::manual_seed(0);
  auto model = tern::trainer::BuildClassifier({"resnet20", 1, 10, width}).value();
  std::unique_ptr<tern::quant::TernaryModel> quant;
  if (c.quantized) {
    quant = tern::quant::TernaryModel::Attach(model, tern::quant::MakePreset(c.method)).value();
    quant->set_packed(c.packed);
    quant->SetProgress(0.5);  // HLA phase 2: ternary forward, regularizer, rescaled STE
  }
  std::vector<torch::optim::OptimizerParamGroup> groups = {
      torch::optim::OptimizerParamGroup(model->parameters())};
  const auto options = torch::optim::SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(5e-4);
  std::unique_ptr<torch::optim::Optimizer> opt;
  if (c.multi_tensor_sgd) {
    opt = std::make_unique<tern::trainer::MultiTensorSgd>(groups, options);
  } else {
    opt = std::make_unique<torch::optim::SGD>(groups, options);
  }
  const at::Tensor x = torch::randn({batch, 1, 28, 28});
  const at::Tensor y = torch::randint(0, 10, {batch}, torch::kLong);
  model->train();
  // Step 1 fills optimizer and LAT state; step 2 is counted.
  for (int step = 0; step < 2; ++step) {
    g_counts.clear();
    g_op_counts.clear();
    g_counting = step == 1;
    Phase("zero_grad");
    opt->zero_grad();
    Phase("before_forward");
    if (quant) quant->BeforeForward();
    Phase("forward + loss");
    at::Tensor loss = torch::cross_entropy_loss(model->forward(x), y);
    if (quant) loss = loss + quant->RegularizationLoss();
    Phase("backward");
    loss.backward();
    Phase("after_backward");
    if (quant) quant->AfterBackward();
    Phase("optimizer");
    opt->step();
    g_counting = false;
  }
  return g_counts;
}

}  // namespace

int main(int argc, char** argv) {
  double width = 1.0;
  int64_t batch = 8;
  bool detail = false;
  for (int i = 1; i < argc; i += 2) {
    if (std::strcmp(argv[i], "--detail") == 0) {
      detail = true;
      --i;
    } else if (i + 1 >= argc) {
      std::cerr << "usage: tern_op_count_bench [--width 1.0] [--batch 8] [--detail]\n";
      return 2;
    } else if (std::strcmp(argv[i], "--width") == 0) {
      width = std::stod(argv[i + 1]);
    } else if (std::strcmp(argv[i], "--batch") == 0) {
      batch = std::stoll(argv[i + 1]);
    } else {
      std::cerr << "usage: tern_op_count_bench [--width 1.0] [--batch 8] [--detail]\n";
      return 2;
    }
  }
  at::set_num_threads(1);
  at::addGlobalCallback(at::RecordFunctionCallback(&OnStart, &OnEnd));
  const std::vector<Config> configs = {
      {"FP, torch::optim::SGD", false, Method::kFp, true, false},
      {"FP, MultiTensorSgd", false, Method::kFp, true, true},
      {"TWN, per layer, torch::optim::SGD", true, Method::kTwn, false, false},
      {"TWN, packed, MultiTensorSgd", true, Method::kTwn, true, true},
      {"HLA, per layer, torch::optim::SGD", true, Method::kHla, false, false},
      {"HLA, per layer, MultiTensorSgd", true, Method::kHla, false, true},
      {"HLA, packed, MultiTensorSgd", true, Method::kHla, true, true},
  };
  const std::vector<std::string> phases = {"zero_grad",  "before_forward", "forward + loss",
                                           "backward",   "after_backward", "optimizer"};
  std::cout << "ATen operations that launch a kernel, per training step: ResNet-20 x" << width
            << ", batch " << batch << ", 1 input channel, first conv and classifier FP, step 2 "
            << "(HLA at progress 0.5: ternary forward, regularizer, rescaled STE)\n\n";
  std::cout << "| configuration |";
  for (const auto& p : phases) std::cout << " " << p << " |";
  std::cout << " total |\n|---|";
  for (size_t i = 0; i <= phases.size(); ++i) std::cout << "---|";
  std::cout << "\n";
  std::map<std::string, std::map<std::string, int64_t>> fp_ops;
  for (const Config& c : configs) {
    const auto counts = CountStep(c, width, batch);
    if (c.name == "FP, MultiTensorSgd") fp_ops = g_op_counts;
    int64_t total = 0;
    std::cout << "| " << c.name << " |";
    for (const auto& p : phases) {
      const auto it = counts.find(p);
      const int64_t n = it == counts.end() ? 0 : it->second;
      total += n;
      std::cout << " " << n << " |";
    }
    std::cout << " " << total << " |\n";
  }
  if (detail) {
    std::cout << "\nOperations of \"" << configs.back().name << "\" beyond \"FP, MultiTensorSgd\":\n\n"
              << "| phase | operation | extra per step |\n|---|---|---|\n";
    for (const auto& p : phases) {
      for (const auto& [op, n] : g_op_counts[p]) {
        const int64_t extra = n - fp_ops[p][op];
        if (extra != 0) std::cout << "| " << p << " | " << op << " | " << extra << " |\n";
      }
    }
  }
  return 0;
}
