// Ternary projection, the hyperspherical regularizer and the straight-through
// gradients of docs/METHOD.md, as free functions on tensors.
//
// A "unit" is what one (Δ, α) pair covers: the whole tensor, or one output
// channel (dim 0) with Granularity::kChannel. Every per-unit tensor below has
// shape [U]. Functions are pure (no state), never modify their inputs, and are
// safe to call from several threads on different tensors.
#ifndef TERN_QUANT_TERNARY_OPS_H_
#define TERN_QUANT_TERNARY_OPS_H_

#include <ATen/ATen.h>

#include "quant/options.h"

namespace tern::quant {

// Result of projecting W onto {-1, 0, +1} codes with per-unit scales.
struct TernaryProjection {
  at::Tensor codes;      // shape of W, W's dtype, values in {-1, 0, +1}
  at::Tensor delta;      // [U] threshold Δ
  at::Tensor pos_scale;  // [U] scale of +1 codes (α; TTQ's Wp)
  at::Tensor neg_scale;  // [U] scale of -1 codes (α; TTQ's Wn)
};

// Number of units of `w` under `g`.
int64_t NumUnits(const at::Tensor& w, Granularity g);

// TWN: Δ = δ·mean|W|, α = Σ|W|⊙M / ΣM.
TernaryProjection ProjectTwn(const at::Tensor& w, Granularity g,
                             double delta_factor);

// LAT: with d = `importance` (same shape as w; undefined = all ones),
// alternate `iterations` times α = Σ d|W|⊙M / Σ d⊙M, Δ = α/2, starting from
// the TWN mask; the final α is the d-weighted optimum for the final mask.
TernaryProjection ProjectLat(const at::Tensor& w, const at::Tensor& importance,
                             Granularity g, int iterations,
                             double twn_delta_factor);

// TTQ codes: Δ = t·max|W|; the scales are the learned `wp`, `wn` ([U]).
TernaryProjection ProjectTtq(const at::Tensor& w, Granularity g,
                             double threshold, const at::Tensor& wp,
                             const at::Tensor& wn);

// Ŵ = pos·1[T>0] − neg·1[T<0], unit by unit. The training-time forward and
// the `.tern` reader both use this, so their outputs are bit-identical.
at::Tensor Dequantize(const at::Tensor& codes, const at::Tensor& pos_scale,
                      const at::Tensor& neg_scale);

// Per-unit cos(W, T) ([U]); 0 for a unit whose W or T is all zeros.
at::Tensor UnitCosine(const at::Tensor& w, const at::Tensor& codes,
                      Granularity g);

// R(W) = 1 − mean over units of cos(W, T), differentiable in `w`; `codes` is
// treated as a constant (stop-gradient).
at::Tensor HypersphericalRegularizer(const at::Tensor& w,
                                     const at::Tensor& codes, Granularity g);

// The closed form of ∂R/∂W (HLA.md section 2), for tests and diagnostics.
at::Tensor HypersphericalRegularizerGrad(const at::Tensor& w,
                                         const at::Tensor& codes,
                                         Granularity g);

// Per-element gradient factor of the backward pass:
//   ρ(w) = 1[|w| ≤ clip·α] · ((1−β) + β·4σ'(τ(|w|−Δ))),  τ = κ / mean|W|,
// divided by its mean over each unit when `normalize`. With `rescale` false
// ρ is the clip mask alone (the usual clipped STE).
at::Tensor RescaleFactor(const at::Tensor& w, const TernaryProjection& p,
                         Granularity g, bool rescale, double beta,
                         double kappa, double clip, bool normalize);

// Forward: returns `w_hat` (values). Backward: ∂L/∂w = ∂L/∂ŵ ⊙ ρ.
at::Tensor StraightThrough(const at::Tensor& w, const at::Tensor& w_hat,
                           const at::Tensor& rho);

// Forward: returns `w_hat` itself (no copy; it should have w's shape and
// layout and must not be modified while the graph lives). Backward:
// ∂L/∂w = ∂L/∂ŵ unchanged, for a caller that applies ρ to the accumulated
// gradients of all layers at once (TernaryModel's packed path).
at::Tensor StraightThroughIdentity(const at::Tensor& w, const at::Tensor& w_hat);

// TTQ forward Ŵ = Wp·1[T>0] − Wn·1[T<0] with Zhu et al.'s gradients:
// ∂L/∂Wp = Σ_{T>0} g, ∂L/∂Wn = −Σ_{T<0} g (per unit), and the latent gradient
// g scaled by Wp, 1, Wn on the positive, zero and negative codes.
at::Tensor TtqForward(const at::Tensor& w, const at::Tensor& codes,
                      const at::Tensor& wp, const at::Tensor& wn);

// Σ d·(W − Ŵ)², the loss-aware projection error (tests, benchmarks).
at::Tensor WeightedProjectionError(const at::Tensor& w,
                                   const at::Tensor& w_hat,
                                   const at::Tensor& importance);

// Where in training we are, and what the schedules say there.
struct ScheduleState {
  bool ternary_forward = true;  // phase 2 (or a method with no phase 1)
  double lambda = 0.0;          // regularizer weight (0 when disabled)
  double kappa = 0.0;           // τ·mean|W|, annealed over phase 2
};

// `progress` is the fraction of training done, in [0, 1].
ScheduleState ComputeSchedule(const QuantOptions& options, double progress);

}  // namespace tern::quant

#endif  // TERN_QUANT_TERNARY_OPS_H_
