#include "quant/fused_projection_reference.h"

#include <algorithm>
#include <vector>

#include "common/check.h"
#include "quant/cuda/fused_math.h"

namespace tern::quant::fused {
namespace {

using math::kMaxSums;
using math::kUnitFields;

// The kernels' fixed summation order (fused_projection.h, "Determinism"): lane t of kLanes
// adds its values in order, then lanes are added as a tree.
struct Lanes {
  double v[kMaxSums][kLanes] = {};
  void Add(int lane, const double* values, int count) {
    for (int k = 0; k < count; ++k) v[k][lane] += values[k];
  }
  void Finish(int count, double* out) {
    for (int s = kLanes / 2; s > 0; s >>= 1) {
      for (int t = 0; t < s; ++t) {
        for (int k = 0; k < count; ++k) v[k][t] += v[k][t + s];
      }
    }
    for (int k = 0; k < count; ++k) out[k] = v[k][0];
  }
};

// One pass: `element(unit, i, values)` gives `count` values of element i; their sums per
// tile, then per unit (tile sums in tile order), reach `finish(unit, sums)`.
template <typename Element, typename Finish>
void Pass(const Layout& l, int count, Element element, Finish finish) {
  std::vector<double> partials(l.tiles * kMaxSums);
  for (int64_t tile = 0; tile < l.tiles; ++tile) {
    const int64_t u = l.tile_unit[tile];
    const int64_t begin = l.tile_begin[tile];
    const int64_t end = std::min(begin + kTile, l.unit_offset[u] + l.unit_length[u]);
    Lanes lanes;
    double values[kMaxSums];
    for (int t = 0; t < kLanes; ++t) {
      for (int64_t i = begin + t; i < end; i += kLanes) {
        element(u, i, values);
        lanes.Add(t, values, count);
      }
    }
    lanes.Finish(count, &partials[tile * kMaxSums]);
  }
  for (int64_t u = 0; u < l.units; ++u) {
    Lanes lanes;
    for (int t = 0; t < kLanes; ++t) {
      for (int64_t j = t; j < l.unit_tiles[u]; j += kLanes) {
        lanes.Add(t, &partials[(l.unit_first_tile[u] + j) * kMaxSums], count);
      }
    }
    double sums[kMaxSums];
    lanes.Finish(count, sums);
    finish(u, sums);
  }
}

}  // namespace

Layout HostLayout::View(const int64_t* t) const {
  Layout l;
  l.total = total;
  l.units = units;
  l.tiles = tiles;
  l.layers = layers;
  l.unit_offset = t;
  l.unit_length = t + units;
  l.unit_layer_units = t + 2 * units;
  l.unit_first_tile = t + 3 * units;
  l.unit_tiles = t + 4 * units;
  l.tile_unit = t + 5 * units;
  l.tile_begin = t + 5 * units + tiles;
  return l;
}

HostLayout MakeLayout(const std::vector<int64_t>& layer_numel,
                      const std::vector<int64_t>& layer_units) {
  TERN_CHECK(layer_numel.size() == layer_units.size()) << "MakeLayout: one unit count per layer";
  std::vector<int64_t> offset, length, units_of_layer, first_tile, tiles, tile_unit, tile_begin;
  int64_t total = 0;
  for (size_t layer = 0; layer < layer_numel.size(); ++layer) {
    const int64_t n = layer_numel[layer], units = layer_units[layer];
    TERN_CHECK(n > 0 && units > 0 && n % units == 0)
        << "MakeLayout: layer " << layer << " of " << n << " elements in " << units << " units";
    for (int64_t k = 0; k < units; ++k) {
      const int64_t u = static_cast<int64_t>(offset.size());
      offset.push_back(total);
      length.push_back(n / units);
      units_of_layer.push_back(units);
      first_tile.push_back(static_cast<int64_t>(tile_unit.size()));
      for (int64_t begin = 0; begin < n / units; begin += kTile) {
        tile_unit.push_back(u);
        tile_begin.push_back(total + begin);
      }
      tiles.push_back(static_cast<int64_t>(tile_unit.size()) - first_tile.back());
      total += n / units;
    }
  }
  HostLayout h;
  h.total = total;
  h.units = static_cast<int64_t>(offset.size());
  h.tiles = static_cast<int64_t>(tile_unit.size());
  h.layers = static_cast<int64_t>(layer_numel.size());
  for (const auto* part :
       {&offset, &length, &units_of_layer, &first_tile, &tiles, &tile_unit, &tile_begin}) {
    h.table.insert(h.table.end(), part->begin(), part->end());
  }
  return h;
}

void ReferenceProjection(const ProjectionArgs& a) {
  const Layout& l = a.layout;
  std::vector<double> state(l.units * kUnitFields, 0.0);
  auto at = [&](int64_t u) { return &state[u * kUnitFields]; };
  // Σ|w|, Σw²: mean|W|, ‖W‖² and the TWN threshold.
  Pass(
      l, 2,
      [&](int64_t, int64_t i, double* v) {
        v[0] = fabsf(a.w[i]);
        v[1] = static_cast<double>(a.w[i]) * a.w[i];
      },
      [&](int64_t u, const double* sums) {
        math::FinishAbs(sums, l.unit_length[u], a.delta_factor, at(u));
      });
  // The masks: α = Σ d|w|M / Σ dM, Δ = α/2 between passes.
  const bool weighted = a.moments != nullptr;
  const float correction =
      a.moment_correction_device != nullptr ? *a.moment_correction_device : a.moment_correction;
  for (int pass = 0; pass <= a.lat_iterations; ++pass) {
    const bool last = pass == a.lat_iterations;
    Pass(
        l, weighted && last ? 4 : 2,
        [&](int64_t u, int64_t i, double* v) {
          const float abs_w = fabsf(a.w[i]);
          const bool kept = abs_w > static_cast<float>(at(u)[math::kDelta]);
          const float d =
              weighted ? math::Importance(a.moments[i], correction, a.lat_epsilon) : 1.0f;
          v[0] = kept ? static_cast<double>(d) * abs_w : 0.0;
          v[1] = kept ? d : 0.0f;
          v[2] = kept ? abs_w : 0.0f;
          v[3] = kept ? 1.0 : 0.0;
        },
        [&](int64_t u, const double* sums) {
          math::FinishMask(sums, last, weighted, l.unit_layer_units[u], at(u));
        });
  }
  // Ŵ, ρ, ∂R/∂W; Σρ per unit for the normalization.
  const float kappa = a.kappa_device != nullptr ? *a.kappa_device : a.kappa;
  const float one_minus_beta = 1.0f - a.beta, four_beta = 4.0f * a.beta;
  const bool normalize = a.with_rho && a.rescale && a.normalize;
  Pass(
      l, 1,
      [&](int64_t u, int64_t i, double* v) {
        const double* s = at(u);
        const float w = a.w[i], delta = static_cast<float>(s[math::kDelta]);
        const float alpha = static_cast<float>(s[math::kAlpha]);
        const float code = math::Code(w, delta);
        const float w_hat = code * alpha;
        if (a.w_hat_type == WHatType::kBFloat16) {
          static_cast<uint16_t*>(a.w_hat)[i] = math::Bf16Bits(w_hat);
        } else {
          static_cast<float*>(a.w_hat)[i] = w_hat;
        }
        v[0] = 0.0;
        if (a.with_rho) {
          const float rho =
              math::Rho(fabsf(w), alpha * a.clip, a.rescale, math::Tau(kappa, s[math::kMeanAbs]),
                        delta, one_minus_beta, four_beta);
          a.rho[i] = rho;
          v[0] = rho;
        }
        if (a.with_regularizer) {
          a.reg_grad[i] = math::RegGrad(w, code, static_cast<float>(s[math::kCoefW]),
                                        static_cast<float>(s[math::kCoefT]));
        }
      },
      [&](int64_t u, const double* sums) { at(u)[math::kRhoSum] = sums[0]; });
  if (normalize) {
    for (int64_t u = 0; u < l.units; ++u) {
      const float divisor = math::RhoDivisor(at(u)[math::kRhoSum], l.unit_length[u]);
      for (int64_t i = l.unit_offset[u]; i < l.unit_offset[u] + l.unit_length[u]; ++i) {
        a.rho[i] = a.rho[i] / divisor;
      }
    }
  }
  if (a.with_regularizer) {  // layers − Σ_u cos_u/U_l, the units summed as lanes
    Lanes lanes;
    for (int t = 0; t < kLanes; ++t) {
      for (int64_t u = t; u < l.units; u += kLanes) lanes.Add(t, &at(u)[math::kCosOverU], 1);
    }
    double cos_sum;
    lanes.Finish(1, &cos_sum);
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

void ReferenceGradients(const GradientArgs& a) {
  const float one_minus_decay = 1.0f - a.decay;
  for (const GradientLayer& layer : a.layers) {
    for (int64_t i = 0; i < layer.numel; ++i) {
      math::Gradient(layer.grad, layer.rho, layer.reg_grad, layer.moment, i, a.lambda, a.decay,
                     one_minus_decay);
    }
  }
}

uint16_t FloatToBf16(float x) { return math::Bf16Bits(x); }

float Bf16ToFloat(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float out;
  memcpy(&out, &wide, sizeof(out));
  return out;
}

}  // namespace tern::quant::fused
