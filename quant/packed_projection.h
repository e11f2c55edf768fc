// PackedProjection: the TWN or loss-aware (LAT) projection, HLA's re-scaled
// gradient factor ρ and the hyperspherical regularizer's gradient for ALL
// quantized layers of a model in one pass, a fixed number of kernels per training step instead of a
// few dozen per layer (on a GPU each kernel launch costs about as much as the
// arithmetic of a small layer; the per-layer path launched ~75 per layer).
//
// Layout: every unit (a whole tensor, or one output channel) of every layer
// is laid out end to end in one flat buffer, each layer in its weight's own
// memory order (row-major or channels_last: the output channel is the
// outermost dimension of both, so a unit stays one contiguous run; any other
// layout is packed row-major). The buffer is viewed as [chunks, C] with C
// dividing every unit's length, so a per-element pass is one kernel, a
// per-unit sum is a chunk sum, a gather and a second sum (fixed order:
// deterministic; up to 3 sums stacked as [K, chunks, C] share one pass), and
// per-unit values reach their elements through one index_select. Packing
// the weights in is one multi-tensor copy (LibTorch 2.6 and later; a zero and
// a multi-tensor add on 1.13), none for weights moved into the buffer
// (MoveIn), and every per-layer output has its weight's strides, so it feeds a
// channels_last convolution without a copy.
//
// The results equal ProjectTwn / ProjectLat, RescaleFactor and
// HypersphericalRegularizerGrad of ternary_ops.h layer by layer, up to
// floating-point summation order (tests/quant/packed_projection_test.cc).
//
// On float32 weights Run() takes the fused path instead (packed_projection_fused.h;
// quant/cuda/fused_projection.h; docs/GPU.md): the same results from one read of the
// weights and moments per pass, with fixed-order sums. On a CUDA device (builds with the
// kernels: CUDA LibTorch and nvcc, TERN_WITH_FUSED_PROJECTION) that is 2 + lat_iterations
// (+1) kernels; on the CPU the same arithmetic in plain C++ on ATen's threads, the same bits
// for any number of threads. Options::fused = false, or TERN_FUSED_PROJECTION=0 in the
// environment when the projection is built, keeps the ATen path (comparisons, a fallback).
// Not thread-safe; the weights must share one device and dtype.
#ifndef TERN_QUANT_PACKED_PROJECTION_H_
#define TERN_QUANT_PACKED_PROJECTION_H_

#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "quant/options.h"

namespace tern::quant {

class FusedPackedProjection;  // packed_projection_fused.h

class PackedProjection {
 public:
  struct Options {
    double delta_factor = 0.7;  // TWN's δ (LAT's starting Δ)
    // LAT: α/Δ alternations weighted by d = sqrt(moments / correction) + ε
    // (`moments` per layer as in Run(); none = d of ones); 0 = TWN.
    int lat_iterations = 0;
    double moment_correction = 1.0, lat_epsilon = 1e-8;
    bool with_rho = true;       // compute ρ (the ternary forward needs it)
    bool rescale = true;        // ρ with HLA's re-scaling (else the clip mask)
    double beta = 0.5, kappa = 5.0, clip = 2.0;
    bool normalize = true;
    bool with_regularizer = false;  // ∂R/∂W and Σ R
    // When defined (0-dim tensors on the weights' device and dtype), κ and
    // the moment correction are read from them when the kernels run rather
    // than baked in as constants, so a CUDA graph that captured Run() replays
    // with the values they hold at replay time.
    at::Tensor kappa_tensor, moment_correction_tensor;
    // The dtype Ŵ is written in (Undefined: the weights'). bf16 when the
    // forward runs under bf16 autocast: the projection's multiply rounds to
    // bf16 as it stores, exactly as autocast's cast would, and autocast then
    // has no per-layer cast to launch.
    at::ScalarType w_hat_dtype = at::ScalarType::Undefined;
    // The fused path where this projection has one (fused()); false: the
    // ATen path.
    bool fused = true;
  };
  struct Output {
    // Per layer, in the order given, each of its weight's shape and (at
    // construction) strides, aliasing one packed buffer (plain tensors, not
    // autograd views).
    std::vector<at::Tensor> w_hat;     // α·T
    std::vector<at::Tensor> rho;       // with_rho
    std::vector<at::Tensor> reg_grad;  // with_regularizer: ∂R_l/∂W_l
    at::Tensor reg_value;              // with_regularizer: Σ_l R_l (scalar)
    // Fused path only: [4, units] float32, per unit (in packing order) α, Δ,
    // nonzero codes and cos(W_u, T_u); undefined on the ATen path.
    at::Tensor unit_stats;
  };

  // What TernaryModel::AfterBackward() does to the latent gradients, for all
  // layers at once: grads ← grads ⊙ rho (rho: one per grad, or empty) +
  // lambda · reg_grad (likewise), then LAT's moments ← decay · moments +
  // (1 − decay) · moment_grads² (moment_grads: the updated gradients they
  // follow; empty: none). One fused pass (a CUDA kernel where built, else on
  // the CPU) where `fused` is set and every tensor is float32 on one device with
  // its gradient's layout (and moment_grads are the grads themselves, or grads
  // is empty); else ATen's multi-tensor kernels.
  struct GradientUpdate {
    std::vector<at::Tensor> grads, rho, reg_grad;
    double lambda = 0;
    std::vector<at::Tensor> moment_grads, moments;
    double decay = 0;
    bool fused = true;
  };
  static void UpdateGradients(const GradientUpdate& update);

  // `weights`: the latent weights of the layers to project.
  PackedProjection(const std::vector<at::Tensor>& weights, Granularity g);
  ~PackedProjection();

  // True when `weights` have the shapes, device and dtype this was built for
  // (the layout does not matter for the results: outputs keep the layout the
  // weights had at construction).
  bool Matches(const std::vector<at::Tensor>& weights) const;

  // Projects the current values of `weights` (no autograd). `moments`: LAT's
  // second moments, one per weight of the same shape, or empty.
  Output Run(const std::vector<at::Tensor>& weights, const Options& options,
             const std::vector<at::Tensor>& moments = {});

  // Moves `weights` (and `moments`, when given) into the packed buffers Run() reads: each
  // tensor's storage becomes its part of the buffer (Tensor::set_data: the same tensor
  // objects, so the modules and optimizers that hold them see the move), and Run() packs
  // nothing for it any more. A tensor given other storage later (set_data, load, .to()) is
  // packed by copying again, until it is moved in again. Tensors already in place are left
  // as they are, so calling this before every Run() costs a pointer comparison per layer.
  void MoveIn(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& moments = {});

  int64_t chunk_size() const { return chunk_; }
  // Whether Run() takes the fused path (unless Options::fused is false), and
  // whether this build has the fused CUDA kernels at all.
  bool fused() const { return fused_ != nullptr; }
  static bool fused_built();

 private:
  at::Tensor UnitSum(const at::Tensor& chunked);     // [chunks, C] -> [units]
  at::Tensor UnitSums(const at::Tensor& stacked);    // [K ≤ 3, chunks, C] -> [K, units]
  at::Tensor ToChunks(const at::Tensor& per_unit);   // [..., units] -> [..., chunks, 1]
  std::vector<at::Tensor> PerLayer(const at::Tensor& flat) const;
  // Packs `tensors` into `flat` (allocated on first use) through `slices`; tensors moved in
  // (MoveIn) are in place already.
  void Gather(const std::vector<at::Tensor>& tensors, at::Tensor& flat,
              std::vector<at::Tensor>& slices) const;

  struct LayerSlot {
    std::vector<int64_t> shape;
    std::vector<int64_t> strides;  // the layout within the flat buffer
    int64_t offset = 0;
    int64_t numel = 0;
  };
  std::vector<LayerSlot> layers_;
  at::TensorOptions tensor_options_;
  int64_t total_ = 0, chunk_ = 1, chunks_ = 0, units_ = 0, max_chunks_per_unit_ = 1;
  at::Tensor chunk_unit_;   // [chunks] long: unit of each chunk
  at::Tensor unit_gather_;  // [units * max_chunks_per_unit] long, `chunks_` = padding
  at::Tensor chunk_sums_;   // [3, chunks + 1], the last column stays 0
  at::Tensor unit_length_;  // [units] L of each unit
  at::Tensor layer_units_;  // [units] U of the unit's layer
  at::Tensor flat_;          // [total] the packed latent weights (first Run)
  at::Tensor flat_moments_;  // [total] LAT's packed second moments (first Run with them)
  std::vector<at::Tensor> flat_slices_, moment_slices_;  // per layer, aliasing the two
  std::unique_ptr<FusedPackedProjection> fused_;         // float32 weights
};

}  // namespace tern::quant

#endif  // TERN_QUANT_PACKED_PROJECTION_H_
