// The fused projection's CPU passes (fused_projection_reference.h), one source compiled twice:
// for any x86-64 or other CPU (cpu_baseline), and on x86-64 also for AVX2 (cpu_avx2: twice the
// vector width, no FMA, so every operation and its rounding are the baseline's and the results
// the same bits). Internal to quant/: ReferenceProjection() and ReferenceGradients() pick one.
#ifndef TERN_QUANT_FUSED_PROJECTION_CPU_H_
#define TERN_QUANT_FUSED_PROJECTION_CPU_H_

#include <cstdint>

#include "quant/cuda/fused_projection.h"
#include "quant/fused_projection_reference.h"

namespace tern::quant::fused {
namespace cpu_baseline {
void Projection(const ProjectionArgs& args, const ParallelFor& parallel, int64_t cache_chunk);
void Gradients(const GradientArgs& args, const ParallelFor& parallel);
}  // namespace cpu_baseline
namespace cpu_avx2 {  // only where TERN_FUSED_HAVE_AVX2 is defined, on a CPU with AVX2
void Projection(const ProjectionArgs& args, const ParallelFor& parallel, int64_t cache_chunk);
void Gradients(const GradientArgs& args, const ParallelFor& parallel);
}  // namespace cpu_avx2
}  // namespace tern::quant::fused

#endif  // TERN_QUANT_FUSED_PROJECTION_CPU_H_
