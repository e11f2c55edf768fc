// tern_projection_bench: what the packed ternary quantizer costs per training
// step on a whole model, apart from the convolutions: TernaryModel's
// BeforeForward() (the packed projection: Ŵ, ρ, ∂R/∂W for every quantized
// layer) and AfterBackward() (ρ ⊙ gradient, + λ·∂R/∂W, LAT's moments), timed
// alone on a model whose latent weights and gradients are set by hand.
//
// The projection is memory-bound: each of its element-wise operations reads
// and writes the whole packed weight buffer. So the time is also given in
// "passes": multiples of one out-of-place multiply over a buffer of the same
// number of elements (read N, write N), timed in the same run on the same
// device. That figure does not depend on the machine, and says how far a
// fused kernel could go (about 3 passes: read W and the moments, write Ŵ).
//
//   tern_projection_bench [--arch resnet18] [--width 1.0] [--classes 1000]
//       [--methods "twn hla"] [--device cpu|cuda] [--bf16] [--threads 2]
//       [--warmup 3] [--reps 15] [--by-op] [--paths "fused aten"]
//
// Prints one markdown table: per method, the quantized elements, then median
// (and minimum) milliseconds per step of BeforeForward, AfterBackward and the
// reference pass, and the two calls in passes. HLA is timed in phase 2
// (ternary forward, regularizer on, LAT moments present). --by-op: then, per
// method, BeforeForward's time by ATen operation (the outermost ones; on CUDA
// the device is synchronized after each, which slows the call down).
// --paths "fused aten": each method once per path of PackedProjection (the
// fused CUDA kernels of quant/cuda, and the ATen kernels), rows side by side;
// on a build without the fused kernels both rows run the ATen path (said in
// the title).
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/check.h"
#include "quant/packed_projection.h"
#include "quant/ternary_model.h"
#include "worker/trainer/models.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Timing {
  double median_ms = 0, min_ms = 0;
};

Timing Summarize(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front()};
}

void Synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

// --by-op: milliseconds and calls per outermost ATen operation while on.
struct OpTimes {
  bool on = false;
  bool cuda = false;
  int depth = 0;
  std::vector<Clock::time_point> starts;
  std::map<std::string, std::pair<double, int64_t>> by_name;
};
OpTimes g_ops;

std::unique_ptr<at::ObserverContext> OnOpStart(const at::RecordFunction&) {
  if (g_ops.on && g_ops.depth++ == 0) {
    if (g_ops.cuda) torch::cuda::synchronize();
    g_ops.starts.push_back(Clock::now());
  }
  return nullptr;
}

void OnOpEnd(const at::RecordFunction& fn, at::ObserverContext*) {
  if (!g_ops.on || g_ops.depth == 0 || --g_ops.depth > 0) return;
  if (g_ops.cuda) torch::cuda::synchronize();
  auto& entry = g_ops.by_name[fn.name()];
  entry.first +=
      std::chrono::duration<double, std::milli>(Clock::now() - g_ops.starts.back()).count();
  ++entry.second;
  g_ops.starts.pop_back();
}

// Times `fn` `reps` times after `warmup` untimed calls, each call preceded
// by an untimed `prepare()`, synchronizing the device around each call.
template <typename Prepare, typename Fn>
Timing Time(const torch::Device& device, int warmup, int reps, Prepare prepare, Fn fn) {
  for (int i = 0; i < warmup; ++i) {
    prepare();
    fn();
  }
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    prepare();
    Synchronize(device);
    const auto start = Clock::now();
    fn();
    Synchronize(device);
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  return Summarize(ms);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Cost of the packed ternary quantizer per training step"};
  std::string arch = "resnet18", methods = "twn hla", device_name = "cpu", paths = "fused";
  double width = 1.0;
  int64_t classes = 1000;
  int threads = 2, warmup = 3, reps = 15;
  bool bf16 = false, by_op = false;
  app.add_option("--arch", arch, "resnet18, resnet20, ...");
  app.add_option("--width", width, "width multiplier");
  app.add_option("--classes", classes, "classifier outputs");
  app.add_option("--methods", methods, "space-separated: twn lat hla");
  app.add_option("--device", device_name, "cpu or cuda");
  app.add_flag("--bf16", bf16, "write Ŵ in bf16 (as under bf16 autocast on CUDA)");
  app.add_option("--threads", threads, "intra-op threads (CPU)");
  app.add_option("--warmup", warmup, "untimed calls first");
  app.add_option("--reps", reps, "timed calls");
  app.add_flag("--by-op", by_op, "BeforeForward's time by ATen operation, per method");
  app.add_option("--paths", paths, "space-separated: fused (the default path) aten");
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(threads);
  const torch::Device device(device_name == "cuda" ? torch::kCUDA : torch::kCPU);
  TERN_CHECK(!device.is_cuda() || torch::cuda::is_available()) << "--device cuda: no CUDA device";
  TERN_CHECK(warmup >= 0 && reps >= 1) << "--warmup >= 0 and --reps >= 1";

  std::printf(
      "Packed ternary quantizer per training step, %s x%.2f (%lld classes), %s%s, "
      "%d thread(s), median (min) of %d after %d warm-up; fused kernels %s\n\n",
      arch.c_str(), width, static_cast<long long>(classes), device_name.c_str(),
      bf16 ? ", Ŵ in bf16" : "", threads, reps, warmup,
      !tern::quant::PackedProjection::fused_built() ? "not in this build"
      : device.is_cuda()                            ? "built (CUDA)"
                                                    : "built, CUDA only");
  std::printf("| method | quantized weights | BeforeForward ms | AfterBackward ms | one pass ms | "
              "BeforeForward passes | AfterBackward passes |\n|---|---|---|---|---|---|---|\n");
  if (by_op) at::addGlobalCallback(at::RecordFunctionCallback(&OnOpStart, &OnOpEnd));
  std::vector<std::string> by_op_lines;
  std::vector<std::pair<std::string, std::string>> runs;  // method, path
  {
    std::istringstream names(methods);
    for (std::string name; names >> name;) {
      std::istringstream path_names(paths);
      for (std::string path; path_names >> path;) {
        if (path != "fused" && path != "aten") {
          std::fprintf(stderr, "--paths: unknown path '%s' (fused, aten)\n", path.c_str());
          return 2;
        }
        runs.emplace_back(name, path);
      }
    }
  }
  for (const auto& run : runs) {
    const std::string& name = run.first;
    const std::string& path = run.second;
    const std::string label = paths == "fused" ? name : name + " (" + path + ")";
    tern::quant::Method method;
    if (name == "twn") {
      method = tern::quant::Method::kTwn;
    } else if (name == "lat") {
      method = tern::quant::Method::kLat;
    } else if (name == "hla") {
      method = tern::quant::Method::kHla;
    } else {
      std::fprintf(stderr, "--methods: unknown method '%s' (twn, lat, hla)\n", name.c_str());
      return 2;
    }
    torch::manual_seed(0);
    auto built = tern::trainer::BuildClassifier({arch, 3, classes, width});
    if (!built.ok()) {
      std::fprintf(stderr, "--arch: %s\n", built.status().ToString().c_str());
      return 2;
    }
    std::shared_ptr<tern::trainer::Classifier> model = *built;
    model->to(device);
    if (device.is_cuda()) {  // as the trainer lays them out on CUDA
      torch::NoGradGuard no_grad;
      for (auto& p : model->parameters()) {
        if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
      }
    }
    auto q = tern::quant::TernaryModel::Attach(model, tern::quant::MakePreset(method)).value();
    q->set_fused_projection(path == "fused");
    q->state()->to(device);
    if (bf16) q->set_forward_dtype(at::kBFloat16);
    q->SetProgress(0.6);  // HLA: phase 2 (ternary forward, regularizer on)
    model->train();
    // Gradients as a backward would leave them (∂L/∂Ŵ in the latent's .grad).
    int64_t quantized = 0;
    for (const auto& layer : q->Stats(false)) {
      if (layer.quantized) quantized += layer.numel;
    }
    auto fill_gradients = [&] {
      torch::NoGradGuard no_grad;
      for (auto& p : model->parameters()) {
        if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
        p.mutable_grad().fill_(1e-3);
      }
    };
    // One step first: LAT's moments exist from the first AfterBackward on.
    q->BeforeForward();
    fill_gradients();
    q->AfterBackward();
    const auto nothing = [] {};
    const Timing before = Time(device, warmup, reps, nothing, [&] { q->BeforeForward(); });
    // AfterBackward consumes what the step's BeforeForward computed (ρ, ∂R/∂W).
    const Timing after = Time(
        device, warmup, reps,
        [&] {
          q->BeforeForward();
          fill_gradients();
        },
        [&] { q->AfterBackward(); });
    const at::Tensor a = torch::rand({quantized}, torch::TensorOptions().device(device));
    at::Tensor b = torch::empty_like(a);
    const Timing pass = Time(device, warmup, reps, nothing, [&] { at::mul_out(b, a, 0.5); });
    std::printf("| %s | %lld | %.3f (%.3f) | %.3f (%.3f) | %.3f (%.3f) | %.1f | %.1f |\n",
                label.c_str(), static_cast<long long>(quantized), before.median_ms, before.min_ms,
                after.median_ms, after.min_ms, pass.median_ms, pass.min_ms,
                before.median_ms / pass.median_ms, after.median_ms / pass.median_ms);
    if (by_op) {
      g_ops = OpTimes();
      g_ops.cuda = device.is_cuda();
      g_ops.on = true;
      for (int i = 0; i < reps; ++i) q->BeforeForward();
      g_ops.on = false;
      std::vector<std::pair<double, std::string>> rows;
      for (const auto& [op, entry] : g_ops.by_name) {
        char row[256];
        std::snprintf(row, sizeof(row), "%s: %.2f ms in %.1f calls, %.1f passes", op.c_str(),
                      entry.first / reps, static_cast<double>(entry.second) / reps,
                      entry.first / reps / pass.median_ms);
        rows.emplace_back(entry.first, row);
      }
      std::sort(rows.rbegin(), rows.rend());
      by_op_lines.push_back(label + ", BeforeForward by operation (per call):");
      for (const auto& row : rows) by_op_lines.push_back("  " + row.second);
    }
  }
  if (!by_op_lines.empty()) std::printf("\n");
  for (const std::string& line : by_op_lines) std::printf("%s\n", line.c_str());
  return 0;
}
