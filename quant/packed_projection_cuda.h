// The fused CUDA kernels' launches for FusedPackedProjection (packed_projection_fused.h) on
// the current CUDA stream of `device`, under a guard for it; a failed launch is a broken
// invariant (the arguments were checked) and reported with CUDA's message. Built only where
// LibTorch has CUDA and nvcc is found (TERN_WITH_FUSED_PROJECTION).
#ifndef TERN_QUANT_PACKED_PROJECTION_CUDA_H_
#define TERN_QUANT_PACKED_PROJECTION_CUDA_H_

#include <ATen/ATen.h>

#include "quant/cuda/fused_projection.h"

namespace tern::quant {

void LaunchFusedProjection(const fused::ProjectionArgs& args, const at::Device& device);
void LaunchFusedGradients(const fused::GradientArgs& args, const at::Device& device);

}  // namespace tern::quant

#endif  // TERN_QUANT_PACKED_PROJECTION_CUDA_H_
