// The fused projection's CPU implementation (quant/fused_projection_reference.h, the arithmetic
// the CUDA kernels must repeat): the same bits on any threads, in cache ranges of any size, with
// its AVX2 code and inside PackedProjection; and
// against PackedProjection's ATen path and the layer-by-layer
// functions of ternary_ops.h: every method's projection (TWN, LAT with and without moments,
// HLA, HLA without regularizer, HLA without re-scaling; TTQ never takes the packed path), per
// tensor and per channel, odd sizes, row-major and channels_last, Ŵ in float32 and bf16; and
// the fused gradient update against ATen's.
#include "quant/fused_projection_reference.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "quant/cuda/fused_math.h"
#include "quant/packed_projection.h"
#include "quant/ternary_ops.h"

namespace tern::quant {
namespace {

::testing::AssertionResult Close(const at::Tensor& a, const at::Tensor& b, double rtol = 1e-5,
                                 double atol = 1e-6) {
  if (a.sizes() != b.sizes()) return ::testing::AssertionFailure() << "shapes differ";
  if (torch::allclose(a.to(at::kDouble), b.to(at::kDouble), rtol, atol)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "max |a - b| = " << (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// The layer's elements in its memory order (PackedProjection's packing), and back.
at::Tensor MemoryOrder(const at::Tensor& w) {
  if (w.dim() == 4 && !w.is_contiguous() && w.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return w.permute({0, 2, 3, 1}).contiguous().view(-1);
  }
  return w.contiguous().view(-1);
}
at::Tensor FromMemoryOrder(const at::Tensor& flat, const at::Tensor& like) {
  if (like.dim() == 4 && !like.is_contiguous() &&
      like.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return flat.view({like.size(0), like.size(2), like.size(3), like.size(1)})
        .permute({0, 3, 1, 2});
  }
  return flat.view(like.sizes());
}

struct Config {
  std::string name;
  int lat_iterations = 0;
  bool moments = false, rescale = false, normalize = true, regularizer = false;
};

// The projections of TernaryModel's methods (quant/options.cc), plus LAT's first step
// (no moments yet) and ρ without normalization.
std::vector<Config> Configs() {
  return {{"twn", 0, false, false, true, false},
          {"lat", 3, true, false, true, false},
          {"lat first step", 3, false, false, true, false},
          {"hla", 3, true, true, true, true},
          {"hla_no_regularizer", 3, true, true, true, false},
          {"hla_no_rescale", 3, true, false, true, true},
          {"hla not normalized", 3, true, true, false, true}};
}

std::vector<at::Tensor> Weights(const std::vector<std::vector<int64_t>>& shapes, bool channels_last,
                                uint64_t seed = 3) {
  torch::manual_seed(seed);
  std::vector<at::Tensor> out;
  for (const auto& shape : shapes) {
    at::Tensor w = torch::randn(shape);
    if (channels_last && w.dim() == 4) w = w.contiguous(at::MemoryFormat::ChannelsLast);
    out.push_back(w);
  }
  return out;
}

// Odd sizes: a unit of 245, one of 9, channels of one element, 19899 elements per tensor
// (10 tiles, the last one partial), and a channel count no chunk divides.
const std::vector<std::vector<int64_t>> kOddShapes = {{3, 5, 7, 7},   {1, 9},  {4, 1, 1, 1},
                                                      {67, 33, 3, 3}, {5, 12}, {7, 3, 1, 1}};

struct Reference {
  fused::HostLayout layout;
  std::vector<float> w, moments, w_hat, rho, reg_grad, stats;
  std::vector<uint16_t> w_hat_bf16;
  float reg_value = 0;
};

Reference RunReference(const std::vector<at::Tensor>& weights,
                       const std::vector<at::Tensor>& moments, Granularity g,
                       const PackedProjection::Options& o, bool bf16,
                       const float* kappa_device = nullptr, const fused::ParallelFor& parallel = {},
                       int64_t cache_chunk = 0, fused::CpuIsa isa = fused::CpuIsa::kBaseline) {
  Reference r;
  std::vector<int64_t> numel, units;
  for (const at::Tensor& w : weights) {
    numel.push_back(w.numel());
    units.push_back(NumUnits(w, g));
    const at::Tensor flat = MemoryOrder(w);
    r.w.insert(r.w.end(), flat.data_ptr<float>(), flat.data_ptr<float>() + flat.numel());
  }
  for (const at::Tensor& m : moments) {
    const at::Tensor flat = MemoryOrder(m);
    r.moments.insert(r.moments.end(), flat.data_ptr<float>(),
                     flat.data_ptr<float>() + flat.numel());
  }
  r.layout = fused::MakeLayout(numel, units);
  const int64_t total = r.layout.total;
  r.w_hat.assign(total, -7.0f);
  r.w_hat_bf16.assign(total, 0);
  r.rho.assign(total, -7.0f);
  r.reg_grad.assign(total, -7.0f);
  r.stats.assign(4 * r.layout.units, -7.0f);
  fused::ProjectionArgs a;
  a.layout = r.layout.View();
  a.w = r.w.data();
  a.moments = r.moments.empty() ? nullptr : r.moments.data();
  a.delta_factor = static_cast<float>(o.delta_factor);
  a.lat_iterations = o.lat_iterations;
  a.moment_correction = static_cast<float>(o.moment_correction);
  a.lat_epsilon = static_cast<float>(o.lat_epsilon);
  a.with_rho = o.with_rho;
  a.rescale = o.rescale;
  a.normalize = o.normalize;
  a.beta = static_cast<float>(o.beta);
  a.kappa = static_cast<float>(o.kappa);
  a.kappa_device = kappa_device;
  a.clip = static_cast<float>(o.clip);
  a.with_regularizer = o.with_regularizer;
  a.w_hat_type = bf16 ? fused::WHatType::kBFloat16 : fused::WHatType::kFloat32;
  a.w_hat = bf16 ? static_cast<void*>(r.w_hat_bf16.data()) : static_cast<void*>(r.w_hat.data());
  a.rho = r.rho.data();
  a.reg_grad = r.reg_grad.data();
  a.reg_value = &r.reg_value;
  a.unit_stats = r.stats.data();
  fused::ReferenceProjection(a, parallel, cache_chunk, isa);
  return r;
}

// Layer `k`'s part of a packed array, as a tensor of the layer's shape.
at::Tensor Slice(const std::vector<float>& flat, const std::vector<at::Tensor>& weights, size_t k) {
  int64_t offset = 0;
  for (size_t i = 0; i < k; ++i) offset += weights[i].numel();
  const at::Tensor part =
      torch::from_blob(const_cast<float*>(flat.data()) + offset, {weights[k].numel()}).clone();
  return FromMemoryOrder(part, weights[k]);
}

PackedProjection::Options OptionsFor(const Config& c) {
  PackedProjection::Options o;
  o.lat_iterations = c.lat_iterations;
  o.moment_correction = 0.25;
  o.rescale = c.rescale;
  o.normalize = c.normalize;
  o.kappa = 12.0;
  o.with_regularizer = c.regularizer;
  return o;
}

void ExpectReferenceMatches(const std::vector<at::Tensor>& weights, Granularity g,
                            const Config& c) {
  SCOPED_TRACE(c.name + " " + GranularityName(g));
  const PackedProjection::Options o = OptionsFor(c);
  std::vector<at::Tensor> moments;
  if (c.moments) {
    torch::manual_seed(4);
    for (const at::Tensor& w : weights) moments.push_back(torch::rand_like(w) * 1e-3);
  }
  PackedProjection packed(weights, g);
  PackedProjection::Options aten_options = o;
  aten_options.fused = false;
  const PackedProjection::Output aten = packed.Run(weights, aten_options, moments);
  const Reference r = RunReference(weights, moments, g, o, /*bf16=*/false);
  int64_t unit = 0;
  double reg_value = 0;
  for (size_t k = 0; k < weights.size(); ++k) {
    SCOPED_TRACE("layer " + std::to_string(k));
    const at::Tensor& w = weights[k];
    EXPECT_TRUE(Close(Slice(r.w_hat, weights, k), aten.w_hat[k])) << "w_hat vs ATen";
    EXPECT_TRUE(Close(Slice(r.rho, weights, k), aten.rho[k])) << "rho vs ATen";
    if (c.regularizer) {
      EXPECT_TRUE(Close(Slice(r.reg_grad, weights, k), aten.reg_grad[k])) << "reg_grad vs ATen";
    }
    // Layer by layer (ternary_ops.h), statistics included.
    const TernaryProjection p =
        c.lat_iterations > 0
            ? ProjectLat(w,
                         c.moments ? (moments[k] / o.moment_correction).sqrt() + o.lat_epsilon
                                   : at::Tensor(),
                         g, o.lat_iterations, o.delta_factor)
            : ProjectTwn(w, g, o.delta_factor);
    EXPECT_TRUE(Close(Slice(r.w_hat, weights, k), Dequantize(p.codes, p.pos_scale, p.neg_scale)));
    EXPECT_TRUE(Close(Slice(r.rho, weights, k),
                      RescaleFactor(w, p, g, c.rescale, o.beta, o.kappa, o.clip, c.normalize)))
        << "rho vs RescaleFactor";
    if (c.regularizer) {
      EXPECT_TRUE(
          Close(Slice(r.reg_grad, weights, k), HypersphericalRegularizerGrad(w, p.codes, g)));
      reg_value += HypersphericalRegularizer(w, p.codes, g).item<double>();
    }
    const int64_t units = NumUnits(w, g);
    const auto stat = [&](int row) {
      return torch::from_blob(const_cast<float*>(r.stats.data()) + row * r.layout.units + unit,
                              {units})
          .clone();
    };
    EXPECT_TRUE(Close(stat(0), p.pos_scale)) << "alpha";
    EXPECT_TRUE(Close(stat(1), p.delta)) << "delta";
    EXPECT_TRUE(torch::equal(stat(2), (p.codes.reshape({units, -1}) != 0).sum(1).to(at::kFloat)))
        << "nonzero codes";
    EXPECT_TRUE(Close(stat(3), UnitCosine(w, p.codes, g))) << "cos";
    unit += units;
  }
  if (c.regularizer) {
    EXPECT_NEAR(r.reg_value, aten.reg_value.item<double>(), 1e-5);
    EXPECT_NEAR(r.reg_value, reg_value, 1e-5);
  }
}

TEST(FusedProjectionReferenceTest, EqualsTheAtenPathAndLayerByLayerForEveryMethod) {
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
    for (bool channels_last : {false, true}) {
      SCOPED_TRACE(channels_last ? "channels_last" : "row-major");
      const auto weights = Weights(kOddShapes, channels_last);
      for (const Config& c : Configs()) ExpectReferenceMatches(weights, g, c);
    }
  }
}

// A zero channel and a zero layer: no cosine, a zero regularizer gradient, nothing NaN.
TEST(FusedProjectionReferenceTest, ZeroUnitsStayFinite) {
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
    auto weights = Weights({{8, 4, 3, 3}, {6, 4, 1, 1}, {5, 12}}, false);
    weights[0][2].zero_();
    weights[2].zero_();
    const Config hla = Configs()[3];
    ExpectReferenceMatches(weights, g, hla);
    const Reference r = RunReference(weights, {}, g, OptionsFor(hla), false);
    for (float x : r.reg_grad) ASSERT_TRUE(std::isfinite(x));
    for (float x : r.rho) ASSERT_TRUE(std::isfinite(x));
  }
}

// Ŵ in bf16 is the float Ŵ rounded to nearest even, as c10's conversion (and so autocast's
// cast, and the ATen path's bf16 Ŵ) rounds it.
TEST(FusedProjectionReferenceTest, Bf16WHatIsTheFloatWHatRoundedAsC10Rounds) {
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
    const auto weights = Weights(kOddShapes, false, 9);
    const PackedProjection::Options o = OptionsFor(Configs()[3]);
    std::vector<at::Tensor> moments;
    for (const at::Tensor& w : weights) moments.push_back(torch::rand_like(w) * 1e-3);
    const Reference f32 = RunReference(weights, moments, g, o, false);
    const Reference b16 = RunReference(weights, moments, g, o, true);
    const at::Tensor expected =
        torch::from_blob(const_cast<float*>(f32.w_hat.data()), {f32.layout.total})
            .to(at::kBFloat16);
    std::vector<float> widened;
    for (uint16_t bits : b16.w_hat_bf16) widened.push_back(fused::Bf16ToFloat(bits));
    EXPECT_TRUE(torch::equal(torch::from_blob(widened.data(), {b16.layout.total}).to(at::kBFloat16),
                             expected));
    EXPECT_TRUE(torch::equal(torch::from_blob(widened.data(), {b16.layout.total}),
                             expected.to(at::kFloat)));
    // And the ATen path's bf16 Ŵ, layer by layer (same α to within summation order).
    PackedProjection::Options bf16 = o;
    bf16.w_hat_dtype = at::kBFloat16;
    bf16.fused = false;
    const PackedProjection::Output aten = PackedProjection(weights, g).Run(weights, bf16, moments);
    for (size_t k = 0; k < weights.size(); ++k) {
      EXPECT_TRUE(Close(Slice(widened, weights, k), aten.w_hat[k].to(at::kFloat), 1e-2, 0))
          << "layer " << k;
    }
  }
  // Rounding ties and special values, bit for bit.
  const std::vector<float> values = {0.0f,    -0.0f,  1.0f,  1.00390625f, 1.01171875f, -1.00390625f,
                                     3.4e38f, 1e-40f, -2.5f, 0.1f,        1.0f / 3.0f};
  for (float x : values) {
    const float widened = fused::Bf16ToFloat(fused::FloatToBf16(x));
    EXPECT_EQ(widened, torch::tensor({x}).to(at::kBFloat16).to(at::kFloat).item<float>()) << x;
  }
}

// κ and the moment correction read through pointers (device scalars for a CUDA graph) give
// what the values give.
TEST(FusedProjectionReferenceTest, ScalarsThroughPointersEqualValues) {
  const auto weights = Weights(kOddShapes, false);
  std::vector<at::Tensor> moments;
  for (const at::Tensor& w : weights) moments.push_back(torch::rand_like(w) * 1e-3);
  PackedProjection::Options o = OptionsFor(Configs()[3]);
  const Reference plain = RunReference(weights, moments, Granularity::kChannel, o, false);
  const float kappa = static_cast<float>(o.kappa);
  o.kappa = 1e6;
  const Reference pointed = RunReference(weights, moments, Granularity::kChannel, o, false, &kappa);
  EXPECT_EQ(plain.rho, pointed.rho);
  EXPECT_EQ(plain.w_hat, pointed.w_hat);
}

// Pieces of `grain`, started last first, each on a thread of its own.
void ReversedThreads(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  std::vector<std::thread> threads;
  for (int64_t begin = (n - 1) / grain * grain; begin >= 0; begin -= grain) {
    threads.emplace_back(body, begin, std::min(n, begin + grain));
  }
  for (std::thread& t : threads) t.join();
}

// Every sum has its fixed order whatever runs the tiles: the same bits on any threads, in
// ranges of units of any size (cache_chunk), and with AVX2 code as with the baseline's.
TEST(FusedProjectionReferenceTest, ThreadsCacheChunksAndAvx2GiveTheSameBits) {
  const bool avx2 = fused::CpuIsaAvailable(fused::CpuIsa::kAvx2);
  if (!avx2) std::cout << "[ SKIPPED  ] the AVX2 rows: this CPU or build has no AVX2\n";
  struct Way {
    std::string name;
    fused::ParallelFor parallel;
    int64_t cache_chunk = 0;
    fused::CpuIsa isa = fused::CpuIsa::kBaseline;
  };
  std::vector<Way> ways = {{"threads", ReversedThreads, 0, fused::CpuIsa::kBaseline},
                           {"chunk 1", {}, 1, fused::CpuIsa::kBaseline},
                           {"chunk 300 threads", ReversedThreads, 300, fused::CpuIsa::kBaseline},
                           {"chunk 20000", {}, 20000, fused::CpuIsa::kBaseline}};
  if (avx2) {
    ways.push_back({"avx2", {}, 0, fused::CpuIsa::kAvx2});
    ways.push_back({"avx2 chunk 300 threads", ReversedThreads, 300, fused::CpuIsa::kAvx2});
  }
  const auto weights = Weights(kOddShapes, true, 5);
  std::vector<at::Tensor> moments;
  for (const at::Tensor& w : weights) moments.push_back(torch::rand_like(w) * 1e-3);
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
    for (const Config& c : Configs()) {
      for (bool bf16 : {false, true}) {
        const PackedProjection::Options o = OptionsFor(c);
        const std::vector<at::Tensor> m = c.moments ? moments : std::vector<at::Tensor>();
        const Reference plain = RunReference(weights, m, g, o, bf16);
        for (const Way& way : ways) {
          SCOPED_TRACE(c.name + " " + GranularityName(g) + (bf16 ? " bf16 " : " ") + way.name);
          const Reference r =
              RunReference(weights, m, g, o, bf16, nullptr, way.parallel, way.cache_chunk, way.isa);
          EXPECT_EQ(plain.w_hat, r.w_hat);
          EXPECT_EQ(plain.w_hat_bf16, r.w_hat_bf16);
          EXPECT_EQ(plain.rho, r.rho);
          EXPECT_EQ(plain.stats, r.stats);
          if (c.regularizer) {
            EXPECT_EQ(plain.reg_grad, r.reg_grad);
            EXPECT_EQ(plain.reg_value, r.reg_value);
          }
        }
      }
    }
  }
  torch::manual_seed(6);
  const std::vector<at::Tensor> grads = {torch::randn({3, 5, 7, 7}), torch::randn({70000})};
  const std::vector<at::Tensor> rhos = {torch::rand_like(grads[0]), torch::rand_like(grads[1])};
  const std::vector<at::Tensor> regs = {torch::randn_like(grads[0]), torch::randn_like(grads[1])};
  const std::vector<at::Tensor> moms = {torch::rand_like(grads[0]), torch::rand_like(grads[1])};
  // The gradient update's outputs (gradients and moments) for one way of running it.
  auto update = [&](const fused::ParallelFor& parallel, fused::CpuIsa isa) {
    std::vector<at::Tensor> out;
    fused::GradientArgs a;
    a.lambda = 0.01f;
    for (size_t k = 0; k < grads.size(); ++k) {
      out.push_back(grads[k].clone());
      out.push_back(moms[k].clone());
      fused::GradientLayer layer;
      layer.grad = out[2 * k].data_ptr<float>();
      layer.moment = out[2 * k + 1].data_ptr<float>();
      layer.rho = rhos[k].data_ptr<float>();
      layer.reg_grad = regs[k].data_ptr<float>();
      layer.numel = grads[k].numel();
      a.layers.push_back(layer);
    }
    fused::ReferenceGradients(a, parallel, isa);
    return out;
  };
  const std::vector<at::Tensor> plain = update({}, fused::CpuIsa::kBaseline);
  std::vector<std::vector<at::Tensor>> others = {update(ReversedThreads, fused::CpuIsa::kBaseline)};
  if (avx2) others.push_back(update(ReversedThreads, fused::CpuIsa::kAvx2));
  for (const auto& other : others) {
    for (size_t k = 0; k < plain.size(); ++k) EXPECT_TRUE(torch::equal(plain[k], other[k])) << k;
  }
}

// PackedProjection on float32 CPU weights runs this code on ATen's threads: its outputs are
// the reference's bits (one thread or two), and TERN_FUSED_PROJECTION=0 keeps the ATen path.
TEST(FusedProjectionReferenceTest, PackedProjectionOnTheCpuIsTheReference) {
  const auto weights = Weights(kOddShapes, true, 7);
  std::vector<at::Tensor> moments;
  for (const at::Tensor& w : weights) moments.push_back(torch::rand_like(w) * 1e-3);
  const int threads = at::get_num_threads();
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
    PackedProjection packed(weights, g);
    ASSERT_TRUE(packed.fused());
    for (const Config& c : Configs()) {
      for (int n : {1, 2}) {
        SCOPED_TRACE(c.name + " " + GranularityName(g) + " threads " + std::to_string(n));
        at::set_num_threads(n);
        const PackedProjection::Options o = OptionsFor(c);
        const std::vector<at::Tensor> m = c.moments ? moments : std::vector<at::Tensor>();
        const PackedProjection::Output out = packed.Run(weights, o, m);
        const Reference r = RunReference(weights, m, g, o, false);
        for (size_t k = 0; k < weights.size(); ++k) {
          EXPECT_TRUE(torch::equal(out.w_hat[k], Slice(r.w_hat, weights, k))) << "w_hat " << k;
          EXPECT_EQ(out.w_hat[k].strides(), weights[k].strides()) << k;
          EXPECT_TRUE(torch::equal(out.rho[k], Slice(r.rho, weights, k))) << "rho " << k;
          if (c.regularizer) {
            EXPECT_TRUE(torch::equal(out.reg_grad[k], Slice(r.reg_grad, weights, k))) << k;
          }
        }
        if (c.regularizer) {
          EXPECT_EQ(out.reg_value.item<float>(), r.reg_value);
        }
        ASSERT_TRUE(out.unit_stats.defined());
        EXPECT_TRUE(torch::equal(out.unit_stats.view(-1),
                                 torch::from_blob(const_cast<float*>(r.stats.data()),
                                                  {static_cast<int64_t>(r.stats.size())})));
      }
    }
  }
  at::set_num_threads(threads);
  ASSERT_EQ(setenv("TERN_FUSED_PROJECTION", "0", 1), 0);
  PackedProjection aten(weights, Granularity::kChannel);
  unsetenv("TERN_FUSED_PROJECTION");
  EXPECT_FALSE(aten.fused());
  EXPECT_FALSE(aten.Run(weights, OptionsFor(Configs()[3]), moments).unit_stats.defined());
}

// On the CPU the projection writes into its last call's buffers again, but only those nothing
// else holds: outputs (or views of them) the caller kept keep their values.
TEST(FusedProjectionReferenceTest, PackedProjectionKeepsTheOutputsItsCallerHolds) {
  auto weights = Weights(kOddShapes, false, 8);
  PackedProjection packed(weights, Granularity::kChannel);
  const PackedProjection::Options o = OptionsFor(Configs()[3]);  // HLA: Ŵ, ρ and ∂R/∂W
  const PackedProjection::Output held = packed.Run(weights, o);
  const at::Tensor w_hat = held.w_hat[0].clone(), rho = held.rho[1].clone();
  const at::Tensor reg_grad = held.reg_grad[2].clone();
  for (at::Tensor& w : weights) w.mul_(-2.0);
  const void* dropped_rho = nullptr;
  {
    const PackedProjection::Output dropped = packed.Run(weights, o);
    EXPECT_NE(dropped.rho[0].data_ptr(), held.rho[0].data_ptr());
    dropped_rho = dropped.rho[0].data_ptr();
  }
  EXPECT_TRUE(torch::equal(held.w_hat[0], w_hat));
  EXPECT_TRUE(torch::equal(held.rho[1], rho));
  EXPECT_TRUE(torch::equal(held.reg_grad[2], reg_grad));
  // Nothing holds the last call's outputs: the next call writes them afresh.
  for (at::Tensor& w : weights) w.mul_(0.5);
  const PackedProjection::Output again = packed.Run(weights, o);
  EXPECT_EQ(again.rho[0].data_ptr(), dropped_rho);
  const Reference r = RunReference(weights, {}, Granularity::kChannel, o, false);
  for (size_t k = 0; k < weights.size(); ++k) {
    EXPECT_TRUE(torch::equal(again.w_hat[k], Slice(r.w_hat, weights, k))) << k;
    EXPECT_TRUE(torch::equal(again.rho[k], Slice(r.rho, weights, k))) << k;
    EXPECT_TRUE(torch::equal(again.reg_grad[k], Slice(r.reg_grad, weights, k))) << k;
  }
}

// ρ's e^x (fused_math.h): within 1 ulp of e^x in double on every 257th float of [-87, 88]
// (by bit pattern, so as densely near 0 as far from it); clamped outside, NaN to the bottom.
TEST(FusedProjectionReferenceTest, ExpIsWithinOneUlp) {
  double worst = 0;
  float worst_at = 0;
  for (const float end : {88.0f, -87.0f}) {
    uint32_t last;
    memcpy(&last, &end, sizeof(last));
    for (uint32_t bits = last & 0x80000000u; bits <= last; bits += 257) {
      float x;
      memcpy(&x, &bits, sizeof(x));
      const double exact = std::exp(static_cast<double>(x));
      const float rounded = static_cast<float>(exact);
      const double ulp = std::nextafter(rounded, FLT_MAX) - rounded;
      const double error = std::fabs(fused::math::Exp(x) - exact) / ulp;
      if (error > worst) {
        worst = error;
        worst_at = x;
      }
    }
  }
  EXPECT_LE(worst, 1.0) << "at x = " << worst_at;
  EXPECT_EQ(fused::math::Exp(0.0f), 1.0f);
  EXPECT_EQ(fused::math::Exp(-1000.0f), fused::math::Exp(-87.0f));
  EXPECT_EQ(fused::math::Exp(1000.0f), fused::math::Exp(88.0f));
  EXPECT_TRUE(std::isfinite(fused::math::Exp(88.0f)));
  EXPECT_GT(fused::math::Exp(-87.0f), 0.0f);
  EXPECT_EQ(fused::math::Exp(std::nanf("")), fused::math::Exp(-87.0f));
}

TEST(FusedProjectionReferenceTest, LayoutCutsUnitsIntoTiles) {
  const fused::HostLayout h = fused::MakeLayout({4097 * 2, 1, 6}, {2, 1, 3});
  const fused::Layout l = h.View();
  ASSERT_EQ(l.units, 6);
  EXPECT_EQ(l.total, 4097 * 2 + 1 + 6);
  EXPECT_EQ(l.tiles, 3 + 3 + 1 + 3);
  EXPECT_EQ(l.unit_tiles[0], 3);
  EXPECT_EQ(l.tile_begin[2], 2 * fused::kTile);  // the last tile of unit 0: one element
  EXPECT_EQ(l.tile_begin[3], 4097);
  EXPECT_EQ(l.unit_first_tile[2], 6);
  EXPECT_EQ(l.unit_layer_units[4], 3);
  EXPECT_EQ(l.unit_offset[5], 4097 * 2 + 1 + 4);
  EXPECT_EQ(l.tile_unit[9], 5);
}

// ∂L/∂W = ρ ⊙ ∂L/∂Ŵ + λ·∂R/∂W and LAT's moments, as TernaryModel::AfterBackward's ATen
// kernels compute them.
TEST(FusedProjectionReferenceTest, GradientUpdateEqualsAten) {
  torch::manual_seed(8);
  for (bool rho : {false, true}) {
    for (bool reg : {false, true}) {
      for (bool moments : {false, true}) {
        std::vector<at::Tensor> grads = {torch::randn({3, 5, 7, 7}), torch::randn({1}),
                                         torch::randn({5000})};
        std::vector<at::Tensor> rhos, regs, vs;
        fused::GradientArgs a;
        a.lambda = 0.01f;
        a.decay = 0.99f;
        std::vector<at::Tensor> expected_g, expected_v;
        for (at::Tensor& g : grads) {
          rhos.push_back(torch::rand_like(g) * 2);
          regs.push_back(torch::randn_like(g));
          vs.push_back(torch::rand_like(g));
          at::Tensor e = g.clone();
          if (rho) e.mul_(rhos.back());
          if (reg) e.add_(regs.back(), a.lambda);
          expected_g.push_back(e);
          expected_v.push_back(vs.back() * a.decay + (1 - a.decay) * e * e);
        }
        std::vector<at::Tensor> v_copies;
        for (size_t k = 0; k < grads.size(); ++k) {
          v_copies.push_back(vs[k].clone());
          fused::GradientLayer layer;
          layer.grad = grads[k].data_ptr<float>();
          layer.rho = rho ? rhos[k].data_ptr<float>() : nullptr;
          layer.reg_grad = reg ? regs[k].data_ptr<float>() : nullptr;
          layer.moment = moments ? v_copies[k].data_ptr<float>() : nullptr;
          layer.numel = grads[k].numel();
          a.layers.push_back(layer);
        }
        fused::ReferenceGradients(a);
        for (size_t k = 0; k < grads.size(); ++k) {
          EXPECT_TRUE(Close(grads[k], expected_g[k])) << k;
          EXPECT_TRUE(Close(v_copies[k], moments ? expected_v[k] : vs[k])) << k;
        }
      }
    }
  }
}

}  // namespace
}  // namespace tern::quant
