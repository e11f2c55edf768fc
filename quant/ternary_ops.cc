#include "quant/ternary_ops.h"

#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>

#include "common/check.h"

namespace tern::quant {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr double kTiny = 1e-12;

// [U, N] view of w.
at::Tensor Rows(const at::Tensor& w, Granularity g) {
  return w.reshape({NumUnits(w, g), -1});
}

// Σ over each row of x·mask / Σ over each row of weight·mask.
at::Tensor MaskedMean(const at::Tensor& values, const at::Tensor& weight,
                      const at::Tensor& mask) {
  const at::Tensor num = (values * weight * mask).sum(1);
  const at::Tensor den = (weight * mask).sum(1);
  return num / den.clamp_min(kTiny);
}

TernaryProjection Finish(const at::Tensor& w, const at::Tensor& rows,
                         const at::Tensor& delta, const at::Tensor& pos,
                         const at::Tensor& neg) {
  const at::Tensor mask = rows.abs() > delta.unsqueeze(1);
  TernaryProjection p;
  p.codes = (rows.sign() * mask).reshape(w.sizes()).to(w.scalar_type());
  p.delta = delta;
  p.pos_scale = pos;
  p.neg_scale = neg;
  return p;
}

class StraightThroughFunction
    : public torch::autograd::Function<StraightThroughFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w,
                            const at::Tensor& w_hat, const at::Tensor& rho) {
    ctx->save_for_backward({rho});
    // In the latent weight's memory format (channels_last on CUDA), so the
    // convolution gets the layout it runs fastest with.
    return at::empty_like(w).copy_(w_hat);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const at::Tensor rho = ctx->get_saved_variables()[0];
    return {grad[0] * rho, at::Tensor(), at::Tensor()};
  }
};

class StraightThroughIdentityFunction
    : public torch::autograd::Function<StraightThroughIdentityFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w, const at::Tensor& w_hat) {
    (void)ctx;
    (void)w;
    return w_hat;  // an input returned as is: autograd makes it a view with this node
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    (void)ctx;
    return {std::move(grad[0]), at::Tensor()};
  }
};

class TtqFunction : public torch::autograd::Function<TtqFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w,
                            const at::Tensor& codes, const at::Tensor& wp,
                            const at::Tensor& wn) {
    (void)w;
    ctx->save_for_backward({codes, wp, wn});
    return Dequantize(codes, wp, wn);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& codes = saved[0];
    const at::Tensor& wp = saved[1];
    const at::Tensor& wn = saved[2];
    const int64_t units = wp.numel();
    const at::Tensor g = grad[0].reshape({units, -1});
    const at::Tensor c = codes.reshape({units, -1});
    const at::Tensor pos = (c > 0).to(g.scalar_type());
    const at::Tensor neg = (c < 0).to(g.scalar_type());
    const at::Tensor zero = (c == 0).to(g.scalar_type());
    const at::Tensor scale = pos * wp.unsqueeze(1) + neg * wn.unsqueeze(1) + zero;
    at::Tensor grad_w = (g * scale).reshape(grad[0].sizes());
    at::Tensor grad_wp = (g * pos).sum(1);
    at::Tensor grad_wn = -(g * neg).sum(1);
    return {grad_w, at::Tensor(), grad_wp, grad_wn};
  }
};

}  // namespace

int64_t NumUnits(const at::Tensor& w, Granularity g) {
  TERN_CHECK(w.dim() >= 1) << "ternary weights need at least one dimension";
  return g == Granularity::kChannel ? w.size(0) : 1;
}

TernaryProjection ProjectTwn(const at::Tensor& w, Granularity g,
                             double delta_factor) {
  at::NoGradGuard no_grad;
  const at::Tensor rows = Rows(w.detach(), g);
  const at::Tensor a = rows.abs();
  const at::Tensor delta = a.mean(1) * delta_factor;
  const at::Tensor mask = (a > delta.unsqueeze(1)).to(a.scalar_type());
  const at::Tensor alpha = MaskedMean(a, at::ones_like(a), mask);
  return Finish(w, rows, delta, alpha, alpha);
}

TernaryProjection ProjectLat(const at::Tensor& w, const at::Tensor& importance,
                             Granularity g, int iterations,
                             double twn_delta_factor) {
  at::NoGradGuard no_grad;
  const at::Tensor rows = Rows(w.detach(), g);
  const at::Tensor a = rows.abs();
  const at::Tensor d = importance.defined()
                           ? importance.detach().reshape(a.sizes()).to(a.scalar_type())
                           : at::ones_like(a);
  at::Tensor delta = a.mean(1) * twn_delta_factor;
  at::Tensor alpha;
  for (int i = 0; i < iterations; ++i) {
    const at::Tensor mask = (a > delta.unsqueeze(1)).to(a.scalar_type());
    alpha = MaskedMean(a, d, mask);
    delta = alpha / 2;
  }
  const at::Tensor mask = (a > delta.unsqueeze(1)).to(a.scalar_type());
  alpha = MaskedMean(a, d, mask);
  return Finish(w, rows, delta, alpha, alpha);
}

TernaryProjection ProjectTtq(const at::Tensor& w, Granularity g,
                             double threshold, const at::Tensor& wp,
                             const at::Tensor& wn) {
  at::NoGradGuard no_grad;
  const at::Tensor rows = Rows(w.detach(), g);
  const at::Tensor delta = std::get<0>(rows.abs().max(1)) * threshold;
  return Finish(w, rows, delta, wp.detach(), wn.detach());
}

at::Tensor Dequantize(const at::Tensor& codes, const at::Tensor& pos_scale,
                      const at::Tensor& neg_scale) {
  const int64_t units = pos_scale.numel();
  const at::Tensor c = codes.reshape({units, -1});
  const at::Tensor pos = (c > 0).to(pos_scale.scalar_type());
  const at::Tensor neg = (c < 0).to(pos_scale.scalar_type());
  return (pos * pos_scale.unsqueeze(1) - neg * neg_scale.unsqueeze(1))
      .reshape(codes.sizes());
}

at::Tensor UnitCosine(const at::Tensor& w, const at::Tensor& codes,
                      Granularity g) {
  const at::Tensor rw = Rows(w, g);
  const at::Tensor rt = Rows(codes.detach(), g).to(w.scalar_type());
  const at::Tensor dot = (rw * rt).sum(1);
  const at::Tensor norms = rw.norm(2, {1}) * rt.norm(2, {1});
  const at::Tensor valid = norms > kTiny;
  return at::where(valid, dot / norms.clamp_min(kTiny), at::zeros_like(dot));
}

at::Tensor HypersphericalRegularizer(const at::Tensor& w,
                                     const at::Tensor& codes, Granularity g) {
  return 1.0 - UnitCosine(w, codes, g).mean();
}

at::Tensor HypersphericalRegularizerGrad(const at::Tensor& w,
                                         const at::Tensor& codes,
                                         Granularity g) {
  at::NoGradGuard no_grad;
  const at::Tensor rw = Rows(w, g);
  const at::Tensor rt = Rows(codes, g).to(w.scalar_type());
  const at::Tensor nw = rw.norm(2, {1}, /*keepdim=*/true);
  const at::Tensor nt = rt.norm(2, {1}, /*keepdim=*/true);
  const at::Tensor dot = (rw * rt).sum(1, /*keepdim=*/true);
  at::Tensor grad = -rt / (nw * nt) + dot / (nw.pow(3) * nt) * rw;
  grad = at::where((nw * nt) > kTiny, grad, at::zeros_like(grad));
  return (grad / static_cast<double>(rw.size(0))).reshape(w.sizes());
}

at::Tensor RescaleFactor(const at::Tensor& w, const TernaryProjection& p,
                         Granularity g, bool rescale, double beta,
                         double kappa, double clip, bool normalize) {
  at::NoGradGuard no_grad;
  const at::Tensor a = Rows(w.detach(), g).abs();
  const at::Tensor alpha = at::max(p.pos_scale, p.neg_scale).unsqueeze(1);
  const at::Tensor inside = (a <= alpha * clip).to(a.scalar_type());
  if (!rescale) return inside.reshape(w.sizes());
  const at::Tensor tau = kappa / a.mean(1, /*keepdim=*/true).clamp_min(kTiny);
  const at::Tensor s = at::sigmoid(tau * (a - p.delta.unsqueeze(1)));
  at::Tensor rho = inside * ((1.0 - beta) + beta * 4.0 * s * (1.0 - s));
  if (normalize) {
    rho = rho / rho.mean(1, /*keepdim=*/true).clamp_min(kTiny);
  }
  return rho.reshape(w.sizes());
}

at::Tensor StraightThrough(const at::Tensor& w, const at::Tensor& w_hat,
                           const at::Tensor& rho) {
  return StraightThroughFunction::apply(w, w_hat.detach(), rho.detach());
}

at::Tensor StraightThroughIdentity(const at::Tensor& w, const at::Tensor& w_hat) {
  return StraightThroughIdentityFunction::apply(w, w_hat.detach());
}

at::Tensor TtqForward(const at::Tensor& w, const at::Tensor& codes,
                      const at::Tensor& wp, const at::Tensor& wn) {
  return TtqFunction::apply(w, codes.detach(), wp, wn);
}

at::Tensor WeightedProjectionError(const at::Tensor& w,
                                   const at::Tensor& w_hat,
                                   const at::Tensor& importance) {
  const at::Tensor diff = w - w_hat;
  return (importance * diff * diff).sum();
}

ScheduleState ComputeSchedule(const QuantOptions& options, double progress) {
  ScheduleState s;
  const double p = std::clamp(progress, 0.0, 1.0);
  if (!options.quantized()) {
    s.ternary_forward = false;
    return s;
  }
  s.ternary_forward = p >= options.reg_fraction;
  if (options.use_regularizer) {
    const double ramp = options.reg_warmup_fraction > 0
                            ? std::min(1.0, p / options.reg_warmup_fraction)
                            : 1.0;
    s.lambda = options.lambda_max * ramp;
  }
  const double phase2 = 1.0 - options.reg_fraction;
  const double q =
      phase2 > 0 ? std::clamp((p - options.reg_fraction) / phase2, 0.0, 1.0)
                 : 1.0;
  s.kappa = options.kappa_start *
            std::pow(options.kappa_end / options.kappa_start, q);
  return s;
}

}  // namespace tern::quant
