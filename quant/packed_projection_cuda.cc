#include "quant/packed_projection_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/check.h"

namespace tern::quant {

// Every launch's status goes through this.
#define TERN_FUSED_CHECK(status) \
  TERN_CHECK((status).ok()) << "fused projection: " << (status).message

void LaunchFusedProjection(const fused::ProjectionArgs& args, const at::Device& device) {
  const c10::cuda::CUDAGuard guard(device);
  TERN_FUSED_CHECK(fused::LaunchProjection(args, at::cuda::getCurrentCUDAStream().stream()));
}

void LaunchFusedGradients(const fused::GradientArgs& args, const at::Device& device) {
  const c10::cuda::CUDAGuard guard(device);
  TERN_FUSED_CHECK(fused::LaunchGradients(args, at::cuda::getCurrentCUDAStream().stream()));
}

}  // namespace tern::quant
