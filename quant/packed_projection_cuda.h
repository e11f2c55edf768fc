// FusedPackedProjection: PackedProjection's path on float32 CUDA weights through the fused
// kernels of quant/cuda/fused_projection.h: it hands them the packed tensors' data pointers
// and the current CUDA stream, and never waits for the device. Built only where LibTorch has
// CUDA and nvcc is found (TERN_WITH_FUSED_PROJECTION); internal to PackedProjection.
// Not thread-safe (one workspace); outputs are new tensors on every call.
#ifndef TERN_QUANT_PACKED_PROJECTION_CUDA_H_
#define TERN_QUANT_PACKED_PROJECTION_CUDA_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "quant/cuda/fused_projection.h"
#include "quant/packed_projection.h"

namespace tern::quant {

class FusedPackedProjection {
 public:
  // Layers of `layer_numel` elements in `layer_units` units each, packed end to end on `device`.
  FusedPackedProjection(const std::vector<int64_t>& layer_numel,
                        const std::vector<int64_t>& layer_units, at::Device device);

  // Whether Run() computes what `options` ask (Ŵ in float32 or bf16, κ and the correction
  // tensors float32 on the device).
  bool Supports(const PackedProjection::Options& options) const;

  // The packed results (flat, [total]; unit_stats [4, units]) for the packed latent weights
  // `flat` and LAT's packed `moments` (undefined: d = 1), enqueued on the current stream.
  struct Flat {
    at::Tensor w_hat, rho, reg_grad, reg_value, unit_stats;
  };
  Flat Run(const at::Tensor& flat, const at::Tensor& moments,
           const PackedProjection::Options& options);

  // PackedProjection::UpdateGradients' fused path; false (nothing done) when the tensors do
  // not qualify.
  static bool UpdateGradients(const PackedProjection::GradientUpdate& update);

  // TERN_FUSED_PROJECTION=0 in the environment: new projections keep the ATen path.
  static bool DisabledByEnvironment();

 private:
  fused::HostLayout host_layout_;
  at::Tensor table_;      // host_layout_.table on the device
  at::Tensor workspace_;  // fused::WorkspaceBytes, zeroed once
  fused::Layout layout_;  // over table_
};

}  // namespace tern::quant

#endif  // TERN_QUANT_PACKED_PROJECTION_CUDA_H_
