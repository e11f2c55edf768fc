#include "quant/fused_projection_cpu.h"

#include <math.h>

#include <algorithm>
#include <functional>
#include <type_traits>
#include <vector>

#include "quant/cuda/fused_math.h"

// The passes below, their lambdas and template instances are compiled for the target this
// object is built for. The headers above are not: their inline functions are inlined here and
// take the target of the caller, while any copy of them the linker may share between the two
// objects is baseline code, safe on every CPU. -ffp-contract=off and no FMA in the target: the
// same operations, rounded the same, as the baseline.
#ifdef TERN_FUSED_CPU_AVX2
#pragma GCC push_options
#pragma GCC target("avx2")
#define TERN_FUSED_CPU_NAMESPACE cpu_avx2
#else
#define TERN_FUSED_CPU_NAMESPACE cpu_baseline
#endif

namespace tern::quant::fused::TERN_FUSED_CPU_NAMESPACE {
namespace {

using math::kMaxSums;
using math::kUnitFields;

// The kernels' fixed summation order (fused_projection.h, "Determinism"): lane t of kLanes
// adds its values in order, then lanes are added as a tree.
template <int kCount>
struct Lanes {
  double v[kCount][kLanes] = {};
  void Add(int lane, const double* values) {
    for (int k = 0; k < kCount; ++k) v[k][lane] += values[k];
  }
  void Finish(double* out) {
    for (int s = kLanes / 2; s > 0; s >>= 1) {
      for (int t = 0; t < s; ++t) {
        for (int k = 0; k < kCount; ++k) v[k][t] += v[k][t + s];
      }
    }
    for (int k = 0; k < kCount; ++k) out[k] = v[k][0];
  }
};

// body(begin, end) over [0, n): through `parallel`, or here in one piece.
void ForRange(const ParallelFor& parallel, int64_t n, int64_t grain,
              const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  if (parallel) {
    parallel(n, grain, body);
  } else {
    body(0, n);
  }
}

constexpr int64_t kTileGrain = 8;  // tiles per piece handed to a ParallelFor

// The end of `tile` (its unit's end, or kTile elements on).
int64_t TileEnd(const Layout& l, int64_t tile) {
  const int64_t u = l.tile_unit[tile];
  return std::min(l.tile_begin[tile] + kTile, l.unit_offset[u] + l.unit_length[u]);
}

// Consecutive units [first, last), their tiles [first_tile, last_tile) and their `elements`:
// what one round of passes covers.
struct UnitRange {
  int64_t first = 0, last = 0, first_tile = 0, last_tile = 0, elements = 0;
};

// The buffer's units in ranges of at least `elements` elements (a unit is never split; the
// last range may be shorter); one range of everything for `elements` <= 0.
std::vector<UnitRange> CacheChunks(const Layout& l, int64_t elements) {
  std::vector<UnitRange> chunks;
  UnitRange range;
  for (int64_t u = 0; u < l.units; ++u) {
    range.elements += l.unit_length[u];
    range.last = u + 1;
    range.last_tile = l.unit_first_tile[u] + l.unit_tiles[u];
    if (elements > 0 && range.elements >= elements) {
      chunks.push_back(range);
      range = UnitRange{u + 1, u + 1, range.last_tile, range.last_tile, 0};
    }
  }
  if (range.last > range.first) chunks.push_back(range);
  return chunks;
}

// One pass over the units of `range`: `for_unit(unit)` gives the unit's element function,
// `element(i, values)` the kCount values of element i (per-unit constants hoisted out of the
// loop); their sums per tile (tiles in parallel), then per unit (tile sums in tile order),
// reach `finish(unit, sums)`. Lane t adds elements begin + t, begin + t + kLanes, ... in
// order, one row of kLanes consecutive elements at a time (a loop the compiler vectorizes).
template <int kCount, typename ForUnit, typename Finish>
void Pass(const Layout& l, const UnitRange& range, const ParallelFor& parallel, ForUnit for_unit,
          Finish finish) {
  const int64_t tiles = range.last_tile - range.first_tile;
  std::vector<double> partials(tiles * kCount);
  ForRange(parallel, tiles, kTileGrain, [&](int64_t first, int64_t last) {
    for (int64_t tile = range.first_tile + first; tile < range.first_tile + last; ++tile) {
      const auto element = for_unit(l.tile_unit[tile]);
      const int64_t end = TileEnd(l, tile);
      Lanes<kCount> lanes;
      for (int64_t row = l.tile_begin[tile]; row < end; row += kLanes) {
        const int n = static_cast<int>(std::min<int64_t>(kLanes, end - row));
        for (int t = 0; t < n; ++t) {
          double values[kMaxSums];  // the element may give more than kCount: unused
          element(row + t, values);
          lanes.Add(t, values);
        }
      }
      lanes.Finish(&partials[(tile - range.first_tile) * kCount]);
    }
  });
  for (int64_t u = range.first; u < range.last; ++u) {
    Lanes<kCount> lanes;
    const int64_t first_partial = l.unit_first_tile[u] - range.first_tile;
    for (int64_t j = 0; j < l.unit_tiles[u]; ++j) {
      lanes.Add(static_cast<int>(j % kLanes), &partials[(first_partial + j) * kCount]);
    }
    double sums[kMaxSums] = {};  // finish() may read past kCount where it does not use them
    lanes.Finish(sums);
    finish(u, sums);
  }
}

// f(std::true_type) or f(std::false_type): a run-time flag as a compile-time one.
template <typename F>
void WithFlag(bool flag, F&& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// The last pass: Ŵ, and as asked ρ (its Σ per unit) and ∂R/∂W, from the units' final masks in
// `state`. The flags are compile-time so that the element loop has no branch and vectorizes.
template <bool kBf16, bool kWithRho, bool kWithRegularizer>
void OutputPass(const ProjectionArgs& a, const UnitRange& range, const ParallelFor& parallel,
                double* state) {
  const Layout& l = a.layout;
  const float kappa = a.kappa_device != nullptr ? *a.kappa_device : a.kappa;
  const float one_minus_beta = 1.0f - a.beta, four_beta = 4.0f * a.beta;
  const bool rescale = a.rescale;
  const float clip = a.clip;
  const float* w = a.w;
  float* rho = a.rho;
  float* reg_grad = a.reg_grad;
  void* w_hat = a.w_hat;
  Pass<1>(
      l, range, parallel,
      [&](int64_t u) {
        const double* s = &state[u * kUnitFields];
        const float delta = static_cast<float>(s[math::kDelta]);
        const float alpha = static_cast<float>(s[math::kAlpha]);
        const float alpha_clip = alpha * clip;
        const float tau = math::Tau(kappa, s[math::kMeanAbs]);
        const float coef_w = static_cast<float>(s[math::kCoefW]);
        const float coef_t = static_cast<float>(s[math::kCoefT]);
        return [=](int64_t i, double* v) {
          const float x = w[i];
          const float code = math::Code(x, delta);
          const float w_hat_i = code * alpha;
          if constexpr (kBf16) {
            static_cast<uint16_t*>(w_hat)[i] = math::Bf16Bits(w_hat_i);
          } else {
            static_cast<float*>(w_hat)[i] = w_hat_i;
          }
          v[0] = 0.0;
          if constexpr (kWithRho) {
            const float r =
                math::Rho(fabsf(x), alpha_clip, rescale, tau, delta, one_minus_beta, four_beta);
            rho[i] = r;
            v[0] = r;
          }
          if constexpr (kWithRegularizer) reg_grad[i] = math::RegGrad(x, code, coef_w, coef_t);
        };
      },
      [&](int64_t u, const double* sums) { state[u * kUnitFields + math::kRhoSum] = sums[0]; });
}

// Every pass of one projection over the units of `range`: their sums and masks into `state`,
// their elements of Ŵ, ρ and ∂R/∂W. With LAT's moments, `importance` has room for the
// range's d (the first mask pass computes it, the others read it).
void ProjectUnits(const ProjectionArgs& a, const UnitRange& range, const ParallelFor& parallel,
                  double* state, float* importance) {
  const Layout& l = a.layout;
  auto at = [&](int64_t u) { return &state[u * kUnitFields]; };
  const float* w = a.w;
  // Σ|w|, Σw²: mean|W|, ‖W‖² and the TWN threshold.
  Pass<2>(
      l, range, parallel,
      [&](int64_t) {
        return [w](int64_t i, double* v) {
          v[0] = fabsf(w[i]);
          v[1] = static_cast<double>(w[i]) * w[i];
        };
      },
      [&](int64_t u, const double* sums) {
        math::FinishAbs(sums, l.unit_length[u], a.delta_factor, at(u));
      });
  // The masks: α = Σ d|w|M / Σ dM, Δ = α/2 between passes. M is applied as a factor of 1 or 0
  // (a select the compiler cannot vectorize otherwise): the kernels' values for finite
  // weights and moments, where every masked term is a product ≥ 0.
  const bool weighted = a.moments != nullptr;
  const float correction =
      a.moment_correction_device != nullptr ? *a.moment_correction_device : a.moment_correction;
  for (int pass = 0; pass <= a.lat_iterations; ++pass) {
    const bool last = pass == a.lat_iterations;
    const auto finish = [&](int64_t u, const double* sums) {
      math::FinishMask(sums, last, weighted, l.unit_layer_units[u], at(u));
    };
    if (!weighted) {  // d = 1
      Pass<2>(
          l, range, parallel,
          [&](int64_t u) {
            return [w, delta = static_cast<float>(at(u)[math::kDelta])](int64_t i, double* v) {
              const float abs_w = fabsf(w[i]);
              const double kept = abs_w > delta ? 1.0 : 0.0;
              v[0] = kept * abs_w;
              v[1] = kept;
            };
          },
          finish);
      continue;
    }
    // d = sqrtf(m / c) + ε (a division and a square root) once per element and projection:
    // computed and kept by the first pass, read by the others (the same value).
    const auto weighted_mask = [&](auto compute_d) {
      return [&, compute_d](int64_t u) {
        return [w, moments = a.moments, correction, epsilon = a.lat_epsilon, importance,
                base = l.unit_offset[range.first],
                delta = static_cast<float>(at(u)[math::kDelta])](int64_t i, double* v) {
          float d;
          if constexpr (decltype(compute_d)::value) {
            d = math::Importance(moments[i], correction, epsilon);
            importance[i - base] = d;
          } else {
            d = importance[i - base];
          }
          const float abs_w = fabsf(w[i]);
          const double kept = abs_w > delta ? 1.0 : 0.0;
          v[0] = kept * (static_cast<double>(d) * abs_w);
          v[1] = kept * d;
          v[2] = kept * abs_w;
          v[3] = kept;
        };
      };
    };
    WithFlag(pass == 0, [&](auto compute_d) {
      if (last) {
        Pass<4>(l, range, parallel, weighted_mask(compute_d), finish);
      } else {
        Pass<2>(l, range, parallel, weighted_mask(compute_d), finish);
      }
    });
  }
  // Ŵ, ρ, ∂R/∂W; Σρ per unit for the normalization.
  const bool normalize = a.with_rho && a.rescale && a.normalize;
  WithFlag(a.w_hat_type == WHatType::kBFloat16, [&](auto bf16) {
    WithFlag(a.with_rho, [&](auto with_rho) {
      WithFlag(a.with_regularizer, [&](auto with_regularizer) {
        OutputPass<decltype(bf16)::value, decltype(with_rho)::value,
                   decltype(with_regularizer)::value>(a, range, parallel, state);
      });
    });
  });
  if (normalize) {
    ForRange(
        parallel, range.last_tile - range.first_tile, kTileGrain, [&](int64_t first, int64_t last) {
          for (int64_t tile = range.first_tile + first; tile < range.first_tile + last; ++tile) {
            const int64_t u = l.tile_unit[tile];
            const float divisor = math::RhoDivisor(at(u)[math::kRhoSum], l.unit_length[u]);
            const int64_t end = TileEnd(l, tile);
            for (int64_t i = l.tile_begin[tile]; i < end; ++i) a.rho[i] = a.rho[i] / divisor;
          }
        });
  }
}

}  // namespace

void Projection(const ProjectionArgs& a, const ParallelFor& parallel, int64_t cache_chunk) {
  const Layout& l = a.layout;
  std::vector<double> state(l.units * kUnitFields, 0.0);
  auto at = [&](int64_t u) { return &state[u * kUnitFields]; };
  const std::vector<UnitRange> ranges = CacheChunks(l, cache_chunk);
  int64_t largest = 0;
  for (const UnitRange& range : ranges) largest = std::max(largest, range.elements);
  std::vector<float> importance(a.moments != nullptr ? largest : 0);
  for (const UnitRange& range : ranges) {
    ProjectUnits(a, range, parallel, state.data(), importance.data());
  }
  if (a.with_regularizer) {  // layers − Σ_u cos_u/U_l, the units summed as lanes
    Lanes<1> lanes;
    for (int64_t u = 0; u < l.units; ++u) {
      lanes.Add(static_cast<int>(u % kLanes), &at(u)[math::kCosOverU]);
    }
    double cos_sum;
    lanes.Finish(&cos_sum);
    *a.reg_value = static_cast<float>(static_cast<double>(l.layers) - cos_sum);
  }
  if (a.unit_stats != nullptr) {
    for (int64_t u = 0; u < l.units; ++u) {
      a.unit_stats[u] = static_cast<float>(at(u)[math::kAlpha]);
      a.unit_stats[l.units + u] = static_cast<float>(at(u)[math::kDelta]);
      a.unit_stats[2 * l.units + u] = static_cast<float>(at(u)[math::kNonzero]);
      a.unit_stats[3 * l.units + u] = static_cast<float>(at(u)[math::kCos]);
    }
  }
}

void Gradients(const GradientArgs& a, const ParallelFor& parallel) {
  const float one_minus_decay = 1.0f - a.decay;
  constexpr int64_t kGrain = 32768;  // elements per piece
  for (const GradientLayer& layer : a.layers) {
    ForRange(parallel, layer.numel, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        math::Gradient(layer.grad, layer.rho, layer.reg_grad, layer.moment, i, a.lambda, a.decay,
                       one_minus_decay);
      }
    });
  }
}

}  // namespace tern::quant::fused::TERN_FUSED_CPU_NAMESPACE

#ifdef TERN_FUSED_CPU_AVX2
#pragma GCC pop_options
#endif
