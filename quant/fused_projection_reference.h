// The CPU reference of the fused CUDA projection (quant/cuda/fused_projection.h): the same
// layout, the same formulas (quant/cuda/fused_math.h, shared with the kernels) and the same
// order of every sum, in plain C++ over host arrays. The CUDA kernels must equal it (to
// expf's rounding in ρ; tests/gpu/fused_projection_parity_test.cc), and it must equal
// PackedProjection's ATen path and ternary_ops.h layer by layer up to summation order
// (tests/quant/fused_projection_reference_test.cc). Slow (one thread): for tests.
// Thread-safe for distinct outputs.
#ifndef TERN_QUANT_FUSED_PROJECTION_REFERENCE_H_
#define TERN_QUANT_FUSED_PROJECTION_REFERENCE_H_

#include <cstdint>

#include "quant/cuda/fused_projection.h"

namespace tern::quant::fused {

// Computes what LaunchProjection() computes, with every pointer of `args` in host memory
// (`args.workspace` is not used; a bf16 Ŵ is written as uint16_t bit patterns).
void ReferenceProjection(const ProjectionArgs& args);

// Computes what LaunchGradients() computes, in host memory.
void ReferenceGradients(const GradientArgs& args);

// float -> bf16 bits as the kernels round (to nearest even), and back.
uint16_t FloatToBf16(float x);
float Bf16ToFloat(uint16_t bits);

}  // namespace tern::quant::fused

#endif  // TERN_QUANT_FUSED_PROJECTION_REFERENCE_H_
