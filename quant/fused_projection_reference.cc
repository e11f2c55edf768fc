#include "quant/fused_projection_reference.h"

#include <string.h>

#include <vector>

#include "common/check.h"
#include "quant/cuda/fused_math.h"
#include "quant/fused_projection_cpu.h"

namespace tern::quant::fused {

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

CpuIsa BestCpuIsa() {
#ifdef TERN_FUSED_HAVE_AVX2
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return CpuIsa::kAvx2;
#endif
  return CpuIsa::kBaseline;
}

bool CpuIsaAvailable(CpuIsa isa) {
  return isa == CpuIsa::kBaseline || BestCpuIsa() == CpuIsa::kAvx2;
}

void ReferenceProjection(const ProjectionArgs& args, const ParallelFor& parallel,
                         int64_t cache_chunk, CpuIsa isa) {
  TERN_CHECK(CpuIsaAvailable(isa)) << "ReferenceProjection: AVX2 code on a CPU without AVX2";
#ifdef TERN_FUSED_HAVE_AVX2
  if (isa == CpuIsa::kAvx2) return cpu_avx2::Projection(args, parallel, cache_chunk);
#endif
  cpu_baseline::Projection(args, parallel, cache_chunk);
}

void ReferenceGradients(const GradientArgs& args, const ParallelFor& parallel, CpuIsa isa) {
  TERN_CHECK(CpuIsaAvailable(isa)) << "ReferenceGradients: AVX2 code on a CPU without AVX2";
#ifdef TERN_FUSED_HAVE_AVX2
  if (isa == CpuIsa::kAvx2) return cpu_avx2::Gradients(args, parallel);
#endif
  cpu_baseline::Gradients(args, parallel);
}

uint16_t FloatToBf16(float x) { return math::Bf16Bits(x); }

float Bf16ToFloat(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float out;
  memcpy(&out, &wide, sizeof(out));
  return out;
}

}  // namespace tern::quant::fused
