// The fused projection's kernels (contract: fused_projection.h; arithmetic: fused_math.h).
//
// One thread block per tile (at most kTile elements of one unit, kLanes threads). A pass
// kernel sums its values over the block's tile in the fixed lane order, writes the tile's
// sums, and the block that completes its unit (an atomic counter per unit, reset by that
// block) adds the unit's tile sums in tile order and computes the unit's values: the next
// kernel reads them. So a projection is 2 + lat_iterations kernels (+ 1 to normalize ρ), with
// no host synchronisation and no floating-point atomics.
#include <cuda_runtime_api.h>

#include <string>

#include "quant/cuda/fused_math.h"
#include "quant/cuda/fused_projection.h"

namespace tern::quant::fused {
namespace {

using math::kMaxSums;
using math::kUnitFields;

// Every CUDA call goes through this: on failure, returns the call and CUDA's message.
#define TERN_CUDA_RETURN_IF_ERROR(call)                                                     \
  do {                                                                                      \
    const cudaError_t tern_cuda_error = (call);                                             \
    if (tern_cuda_error != cudaSuccess) {                                                   \
      cudaGetLastError(); /* clears a non-sticky error */                                   \
      return LaunchStatus{static_cast<int>(tern_cuda_error),                                \
                          std::string(#call) + ": " + cudaGetErrorString(tern_cuda_error)}; \
    }                                                                                       \
  } while (0)

struct Workspace {
  double* partials;    // [tiles × kMaxSums]
  double* state;       // [units × kUnitFields]
  unsigned* counters;  // [units + 1]: tiles done per unit; units done (last slot)
};

__host__ __device__ inline Workspace Carve(const Layout& l, void* base) {
  Workspace w;
  w.partials = static_cast<double*>(base);
  w.state = w.partials + l.tiles * kMaxSums;
  w.counters = reinterpret_cast<unsigned*>(w.state + l.units * kUnitFields);
  return w;
}

struct Shared {
  double v[kMaxSums][kLanes];
  int last;
};

// Adds the lanes of sh.v as a tree (fused_projection.h, "Determinism"); the sums end in v[k][0].
__device__ void TreeSum(Shared& sh, int count) {
  for (int s = kLanes / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      for (int k = 0; k < count; ++k) sh.v[k][threadIdx.x] += sh.v[k][threadIdx.x + s];
    }
    __syncthreads();
  }
}

// Records this block's tile sums (`acc`, per lane); in the block that completes unit `u`,
// fills `sums` with the unit's sums (tile sums added in tile order) and returns true.
__device__ bool TileDone(Shared& sh, const double* acc, int count, int64_t tile, int64_t u,
                         const Layout& l, const Workspace& ws, double* sums) {
  const int t = threadIdx.x;
  for (int k = 0; k < count; ++k) sh.v[k][t] = acc[k];
  __syncthreads();
  TreeSum(sh, count);
  if (t == 0) {
    for (int k = 0; k < count; ++k) ws.partials[tile * kMaxSums + k] = sh.v[k][0];
    __threadfence();
    const unsigned done = atomicAdd(&ws.counters[u], 1u);
    sh.last = done + 1 == static_cast<unsigned>(l.unit_tiles[u]);
  }
  __syncthreads();
  if (!sh.last) return false;
  __threadfence();
  double unit_acc[kMaxSums] = {0.0, 0.0, 0.0, 0.0};
  const int64_t first = l.unit_first_tile[u];
  for (int64_t j = t; j < l.unit_tiles[u]; j += kLanes) {
    for (int k = 0; k < count; ++k) unit_acc[k] += __ldcg(&ws.partials[(first + j) * kMaxSums + k]);
  }
  for (int k = 0; k < count; ++k) sh.v[k][t] = unit_acc[k];
  __syncthreads();
  TreeSum(sh, count);
  for (int k = 0; k < count; ++k) sums[k] = sh.v[k][0];
  if (t == 0) ws.counters[u] = 0;  // every tile of u is done: ready for the next pass
  return true;
}

struct Tile {
  int64_t unit, begin, end;
};
__device__ Tile ThisTile(const Layout& l) {
  Tile tile;
  tile.unit = l.tile_unit[blockIdx.x];
  tile.begin = l.tile_begin[blockIdx.x];
  tile.end = min(tile.begin + kTile, l.unit_offset[tile.unit] + l.unit_length[tile.unit]);
  return tile;
}

// Σ|w|, Σw².
__global__ void __launch_bounds__(kLanes) AbsKernel(ProjectionArgs a, Workspace ws) {
  __shared__ Shared sh;
  const Layout& l = a.layout;
  const Tile tile = ThisTile(l);
  double acc[kMaxSums] = {0.0, 0.0, 0.0, 0.0};
  for (int64_t i = tile.begin + threadIdx.x; i < tile.end; i += kLanes) {
    acc[0] += fabsf(a.w[i]);
    acc[1] += static_cast<double>(a.w[i]) * a.w[i];
  }
  double sums[kMaxSums];
  if (TileDone(sh, acc, 2, blockIdx.x, tile.unit, l, ws, sums) && threadIdx.x == 0) {
    math::FinishAbs(sums, l.unit_length[tile.unit], a.delta_factor,
                    &ws.state[tile.unit * kUnitFields]);
  }
}

// One mask pass: Σ d|w|M, Σ dM (and Σ|w|M, ΣM on the last weighted pass).
__global__ void __launch_bounds__(kLanes) MaskKernel(ProjectionArgs a, Workspace ws, int last) {
  __shared__ Shared sh;
  const Layout& l = a.layout;
  const Tile tile = ThisTile(l);
  const bool weighted = a.moments != nullptr;
  const int count = weighted && last ? 4 : 2;
  const float correction =
      a.moment_correction_device != nullptr ? *a.moment_correction_device : a.moment_correction;
  const float delta = static_cast<float>(ws.state[tile.unit * kUnitFields + math::kDelta]);
  double acc[kMaxSums] = {0.0, 0.0, 0.0, 0.0};
  for (int64_t i = tile.begin + threadIdx.x; i < tile.end; i += kLanes) {
    const float abs_w = fabsf(a.w[i]);
    const bool kept = abs_w > delta;
    const float d = weighted ? math::Importance(a.moments[i], correction, a.lat_epsilon) : 1.0f;
    acc[0] += kept ? static_cast<double>(d) * abs_w : 0.0;
    acc[1] += kept ? d : 0.0f;
    acc[2] += kept ? abs_w : 0.0f;
    acc[3] += kept ? 1.0 : 0.0;
  }
  double sums[kMaxSums];
  if (!TileDone(sh, acc, count, blockIdx.x, tile.unit, l, ws, sums)) return;
  const int64_t u = tile.unit;
  if (threadIdx.x == 0) {
    double* s = &ws.state[u * kUnitFields];
    math::FinishMask(sums, last, weighted, l.unit_layer_units[u], s);
    if (last && a.unit_stats != nullptr) {
      a.unit_stats[u] = static_cast<float>(s[math::kAlpha]);
      a.unit_stats[l.units + u] = static_cast<float>(s[math::kDelta]);
      a.unit_stats[2 * l.units + u] = static_cast<float>(s[math::kNonzero]);
      a.unit_stats[3 * l.units + u] = static_cast<float>(s[math::kCos]);
    }
  }
  if (!last || !a.with_regularizer) return;
  // Σ_l R_l = layers − Σ_u cos_u/U_l, by the block that completes the last unit.
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned done = atomicAdd(&ws.counters[l.units], 1u);
    sh.last = done + 1 == static_cast<unsigned>(l.units);
  }
  __syncthreads();
  if (!sh.last) return;
  __threadfence();
  double cos_acc[kMaxSums] = {0.0, 0.0, 0.0, 0.0};
  for (int64_t v = threadIdx.x; v < l.units; v += kLanes) {
    cos_acc[0] += __ldcg(&ws.state[v * kUnitFields + math::kCosOverU]);
  }
  sh.v[0][threadIdx.x] = cos_acc[0];
  __syncthreads();
  TreeSum(sh, 1);
  if (threadIdx.x == 0) {
    *a.reg_value = static_cast<float>(static_cast<double>(l.layers) - sh.v[0][0]);
    ws.counters[l.units] = 0;
  }
}

// Ŵ, ρ (before normalization), ∂R/∂W; Σρ per unit when ρ is normalized.
__global__ void __launch_bounds__(kLanes)
    WriteKernel(ProjectionArgs a, Workspace ws, int normalize) {
  __shared__ Shared sh;
  const Layout& l = a.layout;
  const Tile tile = ThisTile(l);
  const double* s = &ws.state[tile.unit * kUnitFields];
  const float delta = static_cast<float>(s[math::kDelta]);
  const float alpha = static_cast<float>(s[math::kAlpha]);
  const float kappa = a.kappa_device != nullptr ? *a.kappa_device : a.kappa;
  const float tau = math::Tau(kappa, s[math::kMeanAbs]);
  const float one_minus_beta = 1.0f - a.beta, four_beta = 4.0f * a.beta;
  const float alpha_clip = alpha * a.clip;
  const float coef_w = static_cast<float>(s[math::kCoefW]);
  const float coef_t = static_cast<float>(s[math::kCoefT]);
  double acc[kMaxSums] = {0.0, 0.0, 0.0, 0.0};
  for (int64_t i = tile.begin + threadIdx.x; i < tile.end; i += kLanes) {
    const float w = a.w[i];
    const float code = math::Code(w, delta);
    const float w_hat = code * alpha;
    if (a.w_hat_type == WHatType::kBFloat16) {
      static_cast<uint16_t*>(a.w_hat)[i] = math::Bf16Bits(w_hat);
    } else {
      static_cast<float*>(a.w_hat)[i] = w_hat;
    }
    if (a.with_rho) {
      const float rho =
          math::Rho(fabsf(w), alpha_clip, a.rescale, tau, delta, one_minus_beta, four_beta);
      a.rho[i] = rho;
      acc[0] += rho;
    }
    if (a.with_regularizer) a.reg_grad[i] = math::RegGrad(w, code, coef_w, coef_t);
  }
  if (!normalize) return;
  double sums[kMaxSums];
  if (TileDone(sh, acc, 1, blockIdx.x, tile.unit, l, ws, sums) && threadIdx.x == 0) {
    ws.state[tile.unit * kUnitFields + math::kRhoSum] = sums[0];
  }
}

__global__ void __launch_bounds__(kLanes) NormalizeKernel(ProjectionArgs a, Workspace ws) {
  const Layout& l = a.layout;
  const Tile tile = ThisTile(l);
  const float divisor =
      math::RhoDivisor(ws.state[tile.unit * kUnitFields + math::kRhoSum], l.unit_length[tile.unit]);
  for (int64_t i = tile.begin + threadIdx.x; i < tile.end; i += kLanes) {
    a.rho[i] = a.rho[i] / divisor;
  }
}

constexpr int64_t kGradientBlock = 4 * kLanes;  // elements per block

struct GradientBatch {
  GradientLayer layers[kMaxGradientLayers];
  int64_t first_block[kMaxGradientLayers + 1];  // prefix sums of each layer's blocks
  int count;
  float lambda, decay, one_minus_decay;
};

__global__ void __launch_bounds__(kLanes) GradientKernel(GradientBatch b) {
  int k = 0;
  while (k + 1 < b.count && b.first_block[k + 1] <= blockIdx.x) ++k;
  const GradientLayer& layer = b.layers[k];
  const int64_t begin = (blockIdx.x - b.first_block[k]) * kGradientBlock;
  const int64_t end = min(begin + kGradientBlock, layer.numel);
  for (int64_t i = begin + threadIdx.x; i < end; i += kLanes) {
    math::Gradient(layer.grad, layer.rho, layer.reg_grad, layer.moment, i, b.lambda, b.decay,
                   b.one_minus_decay);
  }
}

}  // namespace

size_t WorkspaceBytes(const Layout& l) {
  return sizeof(double) * static_cast<size_t>(l.tiles * kMaxSums + l.units * kUnitFields) +
         sizeof(unsigned) * static_cast<size_t>(l.units + 1);
}

LaunchStatus ClearWorkspace(const Layout& l, void* workspace, cudaStream_t stream) {
  TERN_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(workspace, 0, WorkspaceBytes(l), stream));
  return {};
}

LaunchStatus LaunchProjection(const ProjectionArgs& a, cudaStream_t stream) {
  const Layout& l = a.layout;
  if (l.tiles == 0) return {};
  const Workspace ws = Carve(l, a.workspace);
  const dim3 grid(static_cast<unsigned>(l.tiles)), block(kLanes);
  AbsKernel<<<grid, block, 0, stream>>>(a, ws);
  TERN_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  for (int pass = 0; pass <= a.lat_iterations; ++pass) {
    MaskKernel<<<grid, block, 0, stream>>>(a, ws, pass == a.lat_iterations ? 1 : 0);
    TERN_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  const bool normalize = a.with_rho && a.rescale && a.normalize;
  WriteKernel<<<grid, block, 0, stream>>>(a, ws, normalize ? 1 : 0);
  TERN_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (normalize) {
    NormalizeKernel<<<grid, block, 0, stream>>>(a, ws);
    TERN_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return {};
}

LaunchStatus LaunchGradients(const GradientArgs& a, cudaStream_t stream) {
  for (size_t start = 0; start < a.layers.size(); start += kMaxGradientLayers) {
    GradientBatch b{};
    b.lambda = a.lambda;
    b.decay = a.decay;
    b.one_minus_decay = 1.0f - a.decay;
    b.first_block[0] = 0;
    for (size_t k = start; k < a.layers.size() && b.count < kMaxGradientLayers; ++k) {
      b.layers[b.count] = a.layers[k];
      const int64_t blocks = (a.layers[k].numel + kGradientBlock - 1) / kGradientBlock;
      b.first_block[b.count + 1] = b.first_block[b.count] + blocks;
      ++b.count;
    }
    if (b.first_block[b.count] == 0) continue;
    GradientKernel<<<static_cast<unsigned>(b.first_block[b.count]), kLanes, 0, stream>>>(b);
    TERN_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return {};
}

std::string CompiledArchitectures() {
#ifdef __CUDA_ARCH_LIST__
#define TERN_STRINGIFY_INNER(x) #x
#define TERN_STRINGIFY(x) TERN_STRINGIFY_INNER(x)
  const std::string list = TERN_STRINGIFY(__CUDA_ARCH_LIST__);  // e.g. "900" or "800,900"
  std::string out, number;
  for (size_t i = 0; i <= list.size(); ++i) {
    if (i < list.size() && list[i] >= '0' && list[i] <= '9') {
      number += list[i];
    } else if (!number.empty()) {
      out += (out.empty() ? "sm_" : ",sm_") + std::to_string(std::stoi(number) / 10);
      number.clear();
    }
  }
  return out;
#else
  return "unknown";
#endif
}

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace tern::quant::fused
