// tern_quant_overhead_bench: what ternary quantization costs per layer.
//
// For the layer shapes of a CIFAR ResNet-20 (3x3 convs 16→16 at 32x32,
// 32→32 at 16x16, 64→64 at 8x8, and the 64→10 classifier; batch 128) it
// times one training step's forward + backward of a one-layer module, plain
// FP and with quant::TernaryModel attached (TWN, LAT, TTQ, HLA with
// regularizer and re-scaled STE; per tensor and per channel), and then the
// quantizer's own work alone (projection + Dequantize + ρ, the regularizer
// forward + backward) in microseconds. Prints markdown tables: the median
// over rounds, and the minimum, which is the steadier figure on a machine
// shared with other work.
//
//   tern_quant_overhead_bench [--threads 2] [--reps 10] [--warmup 3]
//                             [--batch 128] [--micro-iters 20] [--micro-samples 11]
//                             [--layers conv16,conv32,conv64,fc]
//
// Timed rounds are interleaved (one step of every configuration per round)
// so that background load hits all configurations alike. Single-threaded
// driver; LibTorch uses --threads intra-op threads.
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/version.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "common/check.h"
#include "quant/options.h"
#include "quant/ternary_model.h"
#include "quant/ternary_ops.h"

namespace {

namespace nn = torch::nn;
using tern::quant::Granularity;
using tern::quant::Method;
using tern::quant::QuantOptions;
using Clock = std::chrono::steady_clock;

struct LayerShape {
  const char* key;      // --layers name
  const char* name;     // table label
  int64_t in, out;      // channels (features for the Linear)
  int64_t spatial;      // H = W of the input; 0 for the Linear
};

// The repeated layer shapes of CIFAR ResNet-20: the 3x3 convs of its three
// stages (all but the two stride-2 convs and the 1x1 shortcuts) and the
// classifier.
const LayerShape kLayers[] = {
    {"conv16", "conv 16→16 3x3 @32x32", 16, 16, 32},
    {"conv32", "conv 32→32 3x3 @16x16", 32, 32, 16},
    {"conv64", "conv 64→64 3x3 @8x8", 64, 64, 8},
    {"fc", "fc 64→10", 64, 10, 0},
};

const Method kMethods[] = {Method::kTwn, Method::kLat, Method::kTtq, Method::kHla};

// Layers selected by --layers (all by default).
std::vector<bool> g_selected(std::size(kLayers), true);

// One Conv2d (3x3, stride 1, pad 1, no bias, as in ResNet) or one Linear.
class OneLayer : public nn::Module {
 public:
  explicit OneLayer(const LayerShape& shape) {
    if (shape.spatial > 0) {
      conv_ = register_module(
          "conv", nn::Conv2d(nn::Conv2dOptions(shape.in, shape.out, 3).padding(1).bias(false)));
    } else {
      fc_ = register_module("fc", nn::Linear(shape.in, shape.out));
    }
  }
  at::Tensor forward(const at::Tensor& x) { return conv_ ? conv_(x) : fc_(x); }

 private:
  nn::Conv2d conv_{nullptr};
  nn::Linear fc_{nullptr};
};

// One row of the step table: a layer under one method and granularity.
struct Config {
  size_t layer = 0;
  Method method = Method::kFp;
  Granularity granularity = Granularity::kTensor;
  std::shared_ptr<OneLayer> module;
  std::unique_ptr<tern::quant::TernaryModel> quant;  // null for FP
  std::vector<at::Tensor> params;                     // to clear grads
  std::vector<double> seconds;                        // one per timed round
};

double Median(const std::vector<double>& values) {
  TERN_CHECK(!values.empty());
  std::vector<double> v = values;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double Minimum(const std::vector<double>& v) {
  TERN_CHECK(!v.empty());
  return *std::min_element(v.begin(), v.end());
}

// "0.52 0.61 0.70" (1, 5, 15 minutes), or "n/a" off Linux.
std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  if (!(in >> one >> five >> fifteen)) return "n/a";
  return one + " " + five + " " + fifteen;
}

template <typename F>
double SecondsOf(F&& body) {
  const auto start = Clock::now();
  body();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One training step of `c` on input `x` with output gradient `dy`:
// the quantizer's BeforeForward, forward, R(W), backward, AfterBackward.
// Gradients are cleared outside the timed region.
double TimeStep(Config& c, const at::Tensor& x, const at::Tensor& dy) {
  for (auto& p : c.params) p.mutable_grad() = at::Tensor();
  x.mutable_grad() = at::Tensor();
  return SecondsOf([&] {
    if (c.quant) c.quant->BeforeForward();
    const at::Tensor y = c.module->forward(x);
    std::vector<at::Tensor> roots = {y};
    std::vector<at::Tensor> grads = {dy};
    if (c.quant) {
      const at::Tensor reg = c.quant->RegularizationLoss();
      if (reg.requires_grad()) {
        roots.push_back(reg);
        grads.push_back(at::ones_like(reg));
      }
    }
    torch::autograd::backward(roots, grads);
    if (c.quant) c.quant->AfterBackward();
  });
}

std::string MethodLabel(Method m) {
  switch (m) {
    case Method::kFp: return "FP";
    case Method::kTwn: return "TWN";
    case Method::kLat: return "LAT";
    case Method::kTtq: return "TTQ";
    case Method::kHla: return "HLA";
    default: return tern::quant::MethodName(m);
  }
}

// --------------------------------------------------------- step benchmark

// One markdown table of `configs` under `stat` (median or minimum).
void PrintStepTable(const std::vector<Config>& configs, int64_t batch, int reps,
                    const char* stat_name, double (*stat)(const std::vector<double>&)) {
  std::printf("\n### Forward + backward per step (%s ms over %d rounds; ratio to FP)\n\n",
              stat_name, reps);
  std::printf("| layer (batch %lld) | gran. | FP |", static_cast<long long>(batch));
  for (Method m : kMethods) std::printf(" %s |", MethodLabel(m).c_str());
  std::printf("\n|---|---|---|");
  for (size_t i = 0; i < std::size(kMethods); ++i) std::printf("---|");
  std::printf("\n");
  for (size_t l = 0; l < std::size(kLayers); ++l) {
    if (!g_selected[l]) continue;
    double fp_ms = 0;
    for (const Config& c : configs) {
      if (c.layer == l && c.method == Method::kFp) fp_ms = 1e3 * stat(c.seconds);
    }
    for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
      std::printf("| %s | %s | %.2f |", kLayers[l].name, tern::quant::GranularityName(g), fp_ms);
      for (Method m : kMethods) {
        for (const Config& c : configs) {
          if (c.layer != l || c.method != m || c.granularity != g) continue;
          const double ms = 1e3 * stat(c.seconds);
          std::printf(" %.2f (%.2f×) |", ms, ms / fp_ms);
        }
      }
      std::printf("\n");
    }
  }
}

void RunStepBenchmark(int64_t batch, int warmup, int reps) {
  std::vector<at::Tensor> inputs, out_grads;
  for (const LayerShape& s : kLayers) {
    at::Tensor x = s.spatial > 0 ? at::randn({batch, s.in, s.spatial, s.spatial})
                                 : at::randn({batch, s.in});
    x.requires_grad_(true);  // inner layers also produce ∂L/∂x
    inputs.push_back(x);
    out_grads.push_back(s.spatial > 0 ? at::randn({batch, s.out, s.spatial, s.spatial})
                                      : at::randn({batch, s.out}));
  }
  std::vector<Config> configs;
  for (size_t l = 0; l < std::size(kLayers); ++l) {
    if (!g_selected[l]) continue;
    auto add = [&](Method m, Granularity g) {
      Config c;
      c.layer = l;
      c.method = m;
      c.granularity = g;
      c.module = std::make_shared<OneLayer>(kLayers[l]);
      c.params = c.module->parameters();
      if (m != Method::kFp) {
        QuantOptions o = tern::quant::MakePreset(m);
        o.granularity = g;
        o.keep_first_fp = false;  // the only layer is both first and last
        o.keep_last_fp = false;
        auto attached = tern::quant::TernaryModel::Attach(c.module, o);
        TERN_CHECK(attached.ok()) << attached.status().message();
        c.quant = std::move(*attached);
        // Phase 2 of HLA: ternary forward, regularizer at λ_max, κ annealing.
        c.quant->SetProgress(0.5);
        for (const auto& p : c.quant->TrainableParameters()) c.params.push_back(p);
      }
      configs.push_back(std::move(c));
    };
    add(Method::kFp, Granularity::kTensor);
    for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
      for (Method m : kMethods) add(m, g);
    }
  }
  // Warm-up also gives LAT/HLA non-trivial second moments.
  for (int r = 0; r < warmup; ++r) {
    for (Config& c : configs) TimeStep(c, inputs[c.layer], out_grads[c.layer]);
  }
  for (int r = 0; r < reps; ++r) {
    for (Config& c : configs) {
      c.seconds.push_back(TimeStep(c, inputs[c.layer], out_grads[c.layer]));
    }
  }

  PrintStepTable(configs, batch, reps, "median", Median);
  PrintStepTable(configs, batch, reps, "minimum", Minimum);
}

// ---------------------------------------------------- quantizer-only work

// µs per call of `body` over `samples` samples of `iters` calls each.
struct Micros {
  double median = 0, minimum = 0;
};

template <typename F>
Micros MicrosPerCall(int samples, int iters, F&& body) {
  std::vector<double> v;
  for (int s = 0; s < samples + 1; ++s) {  // sample 0 is a warm-up
    const double t = SecondsOf([&] {
      for (int i = 0; i < iters; ++i) body();
    });
    if (s > 0) v.push_back(1e6 * t / iters);
  }
  return {Median(v), Minimum(v)};
}

// What BeforeForward computes outside autograd for one layer: the
// projection (with LAT's importance from the second moments), Ŵ, and ρ.
void RunQuantizerOnlyBenchmark(int samples, int iters) {
  const QuantOptions defaults;
  const double kappa = std::sqrt(defaults.kappa_start * defaults.kappa_end);  // mid phase 2
  std::printf("\n### Quantizer work alone per layer and step (µs per call: median / minimum over %d "
              "samples of %d calls)\n\n", samples, iters);
  std::printf("Projection + Ŵ + ρ is what `BeforeForward()` computes for the layer (LAT/HLA include the\n"
              "importance d = sqrt(v̂) + ε; TWN/LAT/TTQ have no re-scaling, so their ρ is the clip mask\n"
              "(TTQ: none)). R fwd+bwd is the hyperspherical regularizer, HLA only.\n\n");
  std::printf("| layer | weights | gran. | TWN | LAT | TTQ | HLA | HLA R fwd+bwd |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (size_t l = 0; l < std::size(kLayers); ++l) {
    if (!g_selected[l]) continue;
    const LayerShape& s = kLayers[l];
    const at::Tensor w = s.spatial > 0 ? at::randn({s.out, s.in, 3, 3}) * 0.1
                                       : at::randn({s.out, s.in}) * 0.1;
    const at::Tensor second_moment = at::rand_like(w) * 1e-4;
    for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
      const int64_t units = tern::quant::NumUnits(w, g);
      const at::Tensor wp = at::full({units}, 0.1), wn = at::full({units}, 0.1);
      at::NoGradGuard no_grad;
      auto lat_importance = [&] {
        const double correction = 1.0 - std::pow(defaults.second_moment_decay, 100.0);
        return (second_moment / correction).sqrt() + defaults.lat_epsilon;
      };
      const Micros twn = MicrosPerCall(samples, iters, [&] {
        const auto p = tern::quant::ProjectTwn(w, g, defaults.twn_delta_factor);
        const at::Tensor w_hat = tern::quant::Dequantize(p.codes, p.pos_scale, p.neg_scale);
        const at::Tensor rho = tern::quant::RescaleFactor(w, p, g, false, defaults.beta, kappa,
                                                          defaults.clip, defaults.normalize);
      });
      auto lat_like = [&](bool rescale) {
        return MicrosPerCall(samples, iters, [&] {
          const auto p = tern::quant::ProjectLat(w, lat_importance(), g, defaults.lat_iterations,
                                                 defaults.twn_delta_factor);
          const at::Tensor w_hat = tern::quant::Dequantize(p.codes, p.pos_scale, p.neg_scale);
          const at::Tensor rho = tern::quant::RescaleFactor(w, p, g, rescale, defaults.beta, kappa,
                                                            defaults.clip, defaults.normalize);
        });
      };
      const Micros lat = lat_like(false);
      const Micros hla = lat_like(true);
      const Micros ttq = MicrosPerCall(samples, iters, [&] {
        const auto p = tern::quant::ProjectTtq(w, g, defaults.ttq_threshold, wp, wn);
        const at::Tensor w_hat = tern::quant::Dequantize(p.codes, p.pos_scale, p.neg_scale);
      });
      const auto codes = tern::quant::ProjectLat(w, at::Tensor(), g, defaults.lat_iterations,
                                                 defaults.twn_delta_factor).codes;
      Micros reg;
      {
        at::AutoGradMode grad_mode(true);
        const at::Tensor latent = w.clone().requires_grad_(true);
        reg = MicrosPerCall(samples, iters, [&] {
          latent.mutable_grad() = at::Tensor();
          tern::quant::HypersphericalRegularizer(latent, codes, g).backward();
        });
      }
      std::printf("| %s | %lld | %s |", s.name, static_cast<long long>(w.numel()),
                  tern::quant::GranularityName(g));
      for (const Micros& m : {twn, lat, ttq, hla, reg}) {
        std::printf(" %.0f / %.0f |", m.median, m.minimum);
      }
      std::printf("\n");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tern_quant_overhead_bench: per-layer cost of the ternary quantizers"};
  int threads = 2, reps = 10, warmup = 3, micro_iters = 20, micro_samples = 11;
  int64_t batch = 128;
  app.add_option("--threads", threads, "LibTorch intra-op threads (at::set_num_threads)");
  app.add_option("--reps", reps, "timed rounds of the step benchmark (median reported)");
  app.add_option("--warmup", warmup, "untimed rounds before those");
  app.add_option("--batch", batch, "batch size of the layer inputs");
  app.add_option("--micro-iters", micro_iters, "calls per sample in the quantizer-only table");
  app.add_option("--micro-samples", micro_samples, "samples in the quantizer-only table");
  std::vector<std::string> layers;
  app.add_option("--layers", layers, "subset of conv16, conv32, conv64, fc (default: all)")
      ->delimiter(',')
      ->check(CLI::IsMember({"conv16", "conv32", "conv64", "fc"}));
  CLI11_PARSE(app, argc, argv);
  if (threads < 1 || reps < 1 || warmup < 0 || batch < 1 || micro_iters < 1 || micro_samples < 1) {
    std::fprintf(stderr, "tern_quant_overhead_bench: flags must be positive\n");
    return 2;
  }
  if (!layers.empty()) {
    for (size_t l = 0; l < std::size(kLayers); ++l) {
      g_selected[l] = std::find(layers.begin(), layers.end(), kLayers[l].key) != layers.end();
    }
  }
  at::set_num_threads(threads);
  at::manual_seed(0);
  std::printf("## Quantizer overhead: LibTorch %s, %d intra-op threads, batch %lld, float32, CPU\n",
              TORCH_VERSION, at::get_num_threads(), static_cast<long long>(batch));
  std::printf("\nLoad average (1/5/15 min) at start: %s\n", LoadAverage().c_str());
  RunStepBenchmark(batch, warmup, reps);
  RunQuantizerOnlyBenchmark(micro_samples, micro_iters);
  std::printf("\nLoad average at end: %s\n", LoadAverage().c_str());
  return 0;
}
