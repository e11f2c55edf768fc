// FusedPackedProjection: PackedProjection's fused path on float32 weights. On a CUDA device it
// hands the fused kernels of quant/cuda/fused_projection.h the packed tensors' data pointers
// and the current CUDA stream, and never waits for the device (CUDA builds with nvcc only:
// TERN_WITH_FUSED_PROJECTION, packed_projection_cuda.h). On the CPU it runs the same
// arithmetic (quant/fused_projection_reference.h) with its tiles spread over ATen's intra-op
// threads: the same bits for any number of threads. Internal to PackedProjection.
// Not thread-safe (one workspace). Outputs are new tensors on every call, except that on the
// CPU a buffer of the previous call that nothing else holds any more is written again
// (fresh buffers of ResNet-18's size cost a page fault per 4 KiB, about a fifth of the time).
#ifndef TERN_QUANT_PACKED_PROJECTION_FUSED_H_
#define TERN_QUANT_PACKED_PROJECTION_FUSED_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "quant/cuda/fused_projection.h"
#include "quant/packed_projection.h"

namespace tern::quant {

class FusedPackedProjection {
 public:
  // Whether this build has a fused path for float32 weights on `device` (the CPU always; CUDA
  // with the kernels), and TERN_FUSED_PROJECTION=0 is not set.
  static bool Available(const at::Device& device);

  // Layers of `layer_numel` elements in `layer_units` units each, packed end to end on
  // `device` (Available(device) must hold).
  FusedPackedProjection(const std::vector<int64_t>& layer_numel,
                        const std::vector<int64_t>& layer_units, at::Device device);

  // Whether Run() computes what `options` ask (Ŵ in float32 or bf16, κ and the correction
  // tensors float32 on the device).
  bool Supports(const PackedProjection::Options& options) const;

  // The packed results (flat, [total]; unit_stats [4, units]) for the packed latent weights
  // `flat` and LAT's packed `moments` (undefined: d = 1); on CUDA enqueued on the current
  // stream.
  struct Flat {
    at::Tensor w_hat, rho, reg_grad, reg_value, unit_stats;
  };
  Flat Run(const at::Tensor& flat, const at::Tensor& moments,
           const PackedProjection::Options& options);

  // PackedProjection::UpdateGradients' fused path; false (nothing done) when the tensors do
  // not qualify.
  static bool UpdateGradients(const PackedProjection::GradientUpdate& update);

 private:
  // A buffer for the output `field`: previous_'s when only previous_ holds it (CPU), else new.
  at::Tensor OutputBuffer(at::Tensor Flat::*field, at::IntArrayRef sizes,
                          const at::TensorOptions& options);

  at::Device device_;
  fused::HostLayout host_layout_;
  at::Tensor table_;      // CUDA: host_layout_.table on the device
  at::Tensor workspace_;  // CUDA: fused::WorkspaceBytes, zeroed once
  fused::Layout layout_;  // over table_ (CUDA) or host_layout_ (CPU)
  Flat previous_;         // CPU: the last call's outputs, for OutputBuffer()
};

}  // namespace tern::quant

#endif  // TERN_QUANT_PACKED_PROJECTION_FUSED_H_
