// The fused ternary projection: PackedProjection's step (quant/packed_projection.h) as a few CUDA
// kernels over the packed weights, and the same arithmetic on the CPU as its reference
// (quant/fused_projection_reference.h). Plain C++: no LibTorch and no CUDA header, so the
// kernels build with nvcc wherever it is installed, even next to a CPU-only LibTorch.
//
// Layout. The packed buffer holds every unit (a whole tensor, or one output channel) of every
// layer end to end, float32, in the order and memory layout PackedProjection packs them. Each
// unit is cut into tiles of at most kTile elements; a tile belongs to one unit. Layout (below)
// describes units and tiles with plain arrays; HostLayout owns them on the host, and the same
// view over a device copy drives the kernels.
//
// What one projection computes, per unit u of length L in layer l (U_l units), all per-unit
// arithmetic in double, every element-wise value in float:
//   mean_u = Σ|w| / L;  Δ = float(δ·mean_u);  d = sqrtf(m / c) + ε with LAT's moments m
//   (c: bias correction), else d = 1.
//   1 + lat_iterations passes: M = |w| > Δ, α = float(Σ d|w|M / max(Σ dM, 1e-12)), and after
//   every pass but the last Δ = α/2. The last pass's Δ and α are the unit's.
//   code = sign(w)·M;  Ŵ = code·α (float32, or bf16 rounded to nearest even).
//   ρ = [|w| ≤ float(α·clip)], times (1−β) + 4β·(s − s²), s = 1/(1 + e^(−τ(|w| − Δ))),
//   τ = float(κ / max(mean_u, 1e-12)) when `rescale`; then ρ / max(float(Σρ/L), 1e-12) when
//   `normalize` (and `rescale`). e^x is fused_math.h's Exp, a polynomial (not expf).
//   Regularizer: n = sqrt(Σw²·ΣM), inv = n > 1e-12 ? 1/n : 0, cos_u = Σ|w|M·inv;
//   ∂R_l/∂w = w·float(cos_u/U_l / max(Σw², 1e-12)) − code·float(inv/U_l);
//   Σ_l R_l = layers − Σ_u cos_u/U_l.
//   Statistics per unit: α, Δ, ΣM (nonzero codes) and cos_u.
//
// Determinism: every sum has a fixed order, so results are identical run to run and the CPU
// reference repeats them bit for bit. In a tile, lane t (of kLanes) adds elements t, t+kLanes,
// ... in double, then lanes are added as a tree (lane t += lane t+s for s = kLanes/2, ..., 1);
// a unit's tile sums are added the same way, in tile order, by whichever block of the unit
// finishes last (no atomics on values, no host synchronisation). Products of two floats are
// exact in double, so fused multiply-adds cannot change a sum; the element-wise float
// arithmetic is compiled without contraction (-fmad=false), and e^x is the same polynomial on
// both sides (no library expf, whose CUDA version differs by up to 2 ulp), so ρ should match
// bit for bit too; the parity test still allows ρ 1e-5 until a GPU run has shown that.
//
// Thread safety: the launch functions are thread-safe; one workspace serves one stream at a
// time.
#ifndef TERN_QUANT_CUDA_FUSED_PROJECTION_H_
#define TERN_QUANT_CUDA_FUSED_PROJECTION_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

typedef struct CUstream_st* cudaStream_t;  // as cuda_runtime_api.h declares it

namespace tern::quant::fused {

constexpr int64_t kTile = 2048;  // elements of a tile (one thread block)
constexpr int kLanes = 256;      // threads of a block; the order of every sum

// Units and tiles of a packed buffer, as arrays (host or device memory).
struct Layout {
  int64_t total = 0;  // elements
  int64_t units = 0, tiles = 0, layers = 0;
  const int64_t* unit_offset = nullptr;       // [units] first element
  const int64_t* unit_length = nullptr;       // [units] L
  const int64_t* unit_layer_units = nullptr;  // [units] U of the unit's layer
  const int64_t* unit_first_tile = nullptr;   // [units]
  const int64_t* unit_tiles = nullptr;        // [units]
  const int64_t* tile_unit = nullptr;         // [tiles]
  const int64_t* tile_begin = nullptr;  // [tiles] first element; ends at kTile or the unit's end
};

// The arrays of a Layout, owned on the host. `table` holds the seven arrays end to end, in
// Layout's order: copy it to the device as is and View() that copy.
struct HostLayout {
  int64_t total = 0, units = 0, tiles = 0, layers = 0;
  std::vector<int64_t> table;
  Layout View(const int64_t* table_copy) const;  // over a copy of `table`
  Layout View() const { return View(table.data()); }
};

// The layout of layers of `layer_numel` elements cut into `layer_units` equal units each.
HostLayout MakeLayout(const std::vector<int64_t>& layer_numel,
                      const std::vector<int64_t>& layer_units);

enum class WHatType { kFloat32, kBFloat16 };

// One projection step. Pointers are device memory for the kernels, host memory for the
// reference; arrays are [layout.total] unless said otherwise.
struct ProjectionArgs {
  Layout layout;
  const float* w = nullptr;        // the packed latent weights
  const float* moments = nullptr;  // LAT's packed second moments, or null (d = 1)
  float delta_factor = 0.7f;       // δ
  int lat_iterations = 0;          // 0: TWN
  float moment_correction = 1.0f, lat_epsilon = 1e-8f;
  const float* moment_correction_device = nullptr;  // [1] read when the kernel runs; wins
  bool with_rho = true, rescale = true, normalize = true;
  float beta = 0.5f, kappa = 5.0f, clip = 2.0f;
  const float* kappa_device = nullptr;  // [1] read when the kernel runs; wins over kappa
  bool with_regularizer = false;
  void* w_hat = nullptr;  // Ŵ, in w_hat_type
  WHatType w_hat_type = WHatType::kFloat32;
  float* rho = nullptr;         // with_rho
  float* reg_grad = nullptr;    // with_regularizer
  float* reg_value = nullptr;   // [1] with_regularizer: Σ_l R_l
  float* unit_stats = nullptr;  // [4 · units] or null: α, Δ, nonzero codes, cos_u (rows of units)
  void* workspace = nullptr;    // kernels only: WorkspaceBytes(layout), see ClearWorkspace
};

// ∂L/∂W ← ∂L/∂Ŵ ⊙ ρ + λ·∂R/∂W, then LAT's v ← decay·v + (1 − decay)·g² (g the new gradient),
// for every layer in one launch (or one per kMaxGradientLayers layers). Each layer's four
// arrays share one dense memory layout; element i of one is element i of the others.
struct GradientLayer {
  float* grad = nullptr;
  const float* rho = nullptr;       // or null: no ρ
  const float* reg_grad = nullptr;  // or null: no regularizer
  float* moment = nullptr;          // or null: no moments
  int64_t numel = 0;
};
constexpr int kMaxGradientLayers = 24;  // per launch (kernel parameters are passed by value)
struct GradientArgs {
  std::vector<GradientLayer> layers;
  float lambda = 0.0f;
  float decay = 0.99f;
};

// The result of a launch: `ok()` or the failing call and CUDA's message. Launches do not wait
// for the device: errors of a running kernel show at the next synchronising call.
struct LaunchStatus {
  int cuda_error = 0;
  std::string message;
  bool ok() const { return cuda_error == 0; }
};

// Bytes of scratch memory one projection needs; ClearWorkspace() must zero it once (the
// kernels leave its counters at zero, so a CUDA graph may replay them).
size_t WorkspaceBytes(const Layout& layout);
LaunchStatus ClearWorkspace(const Layout& layout, void* workspace, cudaStream_t stream);

// Enqueues the projection on `stream` (2 + lat_iterations kernels, + 1 to normalize ρ).
LaunchStatus LaunchProjection(const ProjectionArgs& args, cudaStream_t stream);

// Enqueues the gradient update on `stream`.
LaunchStatus LaunchGradients(const GradientArgs& args, cudaStream_t stream);

// The GPU architectures the kernels were compiled for, e.g. "sm_90", and the number of CUDA
// devices (0, with no error, where there is none or no driver).
std::string CompiledArchitectures();
int DeviceCount();

}  // namespace tern::quant::fused

#endif  // TERN_QUANT_CUDA_FUSED_PROJECTION_H_
