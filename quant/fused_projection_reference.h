// The fused projection on the CPU, and the reference of the CUDA kernels
// (quant/cuda/fused_projection.h): the same layout, the same formulas (quant/cuda/fused_math.h,
// shared with the kernels) and the same order of every sum, in plain C++ over host arrays. The
// CUDA kernels must equal it (tests/gpu/fused_projection_parity_test.cc),
// and it must equal PackedProjection's ATen path and ternary_ops.h layer by layer up to
// summation order (tests/quant/fused_projection_reference_test.cc).
//
// PackedProjection runs it on float32 CPU weights (quant/packed_projection.h). With a
// `parallel` runner the tiles (and the gradient update's elements) are spread over threads;
// every sum keeps its fixed order, so the results are the same bits for any runner, any
// number of threads, any `cache_chunk` and either CpuIsa. Thread-safe for distinct outputs.
#ifndef TERN_QUANT_FUSED_PROJECTION_REFERENCE_H_
#define TERN_QUANT_FUSED_PROJECTION_REFERENCE_H_

#include <cstdint>
#include <functional>

#include "quant/cuda/fused_projection.h"

namespace tern::quant::fused {

// Runs `body(begin, end)` over pieces that cover [0, n) exactly once, in any order and on any
// threads, and returns when all are done (at::parallel_for, for example). The pieces handed
// to it are independent. Empty: one thread, in order.
using ParallelFor = std::function<void(int64_t n, int64_t grain,
                                       const std::function<void(int64_t, int64_t)>& body)>;

// The instruction set the CPU code runs with. kAvx2 (x86-64 CPUs since 2013) gives the same
// bits as kBaseline (no FMA, no reordering), about 1.6 times as fast.
enum class CpuIsa { kBaseline, kAvx2 };
CpuIsa BestCpuIsa();  // kAvx2 where this CPU and this build have it
bool CpuIsaAvailable(CpuIsa isa);

// Computes what LaunchProjection() computes, with every pointer of `args` in host memory
// (`args.workspace` is not used; a bf16 Ŵ is written as uint16_t bit patterns).
// `cache_chunk` > 0: all passes run over consecutive units of about that many elements
// (whole units) before the next ones, so that the passes after a range's first read it from
// the caches instead of memory; 0: each pass over the whole buffer. The results are the same
// bits for any `cache_chunk` and `isa` (every sum is per unit, in its fixed order).
// `isa` must be available (CHECK).
void ReferenceProjection(const ProjectionArgs& args, const ParallelFor& parallel = {},
                         int64_t cache_chunk = 0, CpuIsa isa = BestCpuIsa());

// Computes what LaunchGradients() computes, in host memory.
void ReferenceGradients(const GradientArgs& args, const ParallelFor& parallel = {},
                        CpuIsa isa = BestCpuIsa());

// float -> bf16 bits as the kernels round (to nearest even), and back.
uint16_t FloatToBf16(float x);
float Bf16ToFloat(uint16_t bits);

}  // namespace tern::quant::fused

#endif  // TERN_QUANT_FUSED_PROJECTION_REFERENCE_H_
