#include "quant/packed_projection.h"

#include <ATen/core/grad_mode.h>
#include <torch/version.h>

#include <algorithm>
#include <numeric>

#include "common/check.h"
#include "quant/packed_projection_fused.h"
#include "quant/ternary_ops.h"

namespace tern::quant {
namespace {

constexpr double kTiny = 1e-12;    // as in ternary_ops.cc
constexpr int64_t kMaxChunk = 4096;
constexpr int64_t kMaxStackedSums = 3;  // rows of one UnitSums() call

// The strides `w` has in the flat buffer: its own when they are row-major or
// channels_last (dense, output channel outermost), else row-major.
std::vector<int64_t> PackedStrides(const at::Tensor& w) {
  if (w.dim() == 4 && !w.is_contiguous() && w.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return w.strides().vec();
  }
  std::vector<int64_t> strides(w.dim(), 1);
  for (int64_t d = w.dim() - 2; d >= 0; --d) strides[d] = strides[d + 1] * w.size(d + 1);
  return strides;
}

// A plain tensor (not an autograd view) over `slot`'s part of `flat`.
template <typename Slot>
at::Tensor Alias(const at::Tensor& flat, const Slot& slot) {
  at::Tensor out = at::empty({0}, flat.options());
  out.set_(flat.storage(), flat.storage_offset() + slot.offset, slot.shape, slot.strides);
  return out;
}

// 1 where a > b (or a <= b), else 0, in a's dtype: one comparison kernel
// writing a's dtype directly, instead of a bool result and a cast.
at::Tensor GreaterAsMask(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty_like(a);
  at::gt_out(out, a, b);
  return out;
}
at::Tensor GreaterAsMask(const at::Tensor& a, double b) {
  at::Tensor out = at::empty_like(a);
  at::gt_out(out, a, b);
  return out;
}
at::Tensor LessEqualAsMask(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty_like(a);
  at::le_out(out, a, b);
  return out;
}

// Whether `tensor` is its slice of the packed buffer already (moved in).
bool InPlace(const at::Tensor& tensor, const at::Tensor& slice) {
  return tensor.data_ptr() == slice.data_ptr() && tensor.strides() == slice.strides();
}

}  // namespace

PackedProjection::PackedProjection(const std::vector<at::Tensor>& weights,
                                         Granularity g) {
  TERN_CHECK(!weights.empty()) << "PackedProjection needs at least one weight";
  tensor_options_ = weights.front().options().requires_grad(false);
  std::vector<int64_t> unit_lengths, layer_numel, units_per_layer;
  int64_t length_gcd = 0;
  for (const at::Tensor& w : weights) {
    LayerSlot slot;
    slot.shape = w.sizes().vec();
    slot.strides = PackedStrides(w);
    slot.offset = total_;
    slot.numel = w.numel();
    TERN_CHECK(slot.numel > 0) << "PackedProjection: empty weight";
    const int64_t units = NumUnits(w, g);
    const int64_t length = slot.numel / units;
    for (int64_t u = 0; u < units; ++u) unit_lengths.push_back(length);
    layer_numel.push_back(slot.numel);
    units_per_layer.push_back(units);
    length_gcd = std::gcd(length_gcd, length);
    total_ += slot.numel;
    layers_.push_back(std::move(slot));
  }
  // The largest chunk that divides every unit, at most kMaxChunk elements.
  for (int64_t c = std::min(length_gcd, kMaxChunk); c >= 1; --c) {
    if (length_gcd % c == 0) {
      chunk_ = c;
      break;
    }
  }
  units_ = static_cast<int64_t>(unit_lengths.size());
  chunks_ = total_ / chunk_;
  std::vector<int64_t> chunk_unit;
  std::vector<int64_t> first_chunk;
  for (int64_t u = 0; u < units_; ++u) {
    first_chunk.push_back(static_cast<int64_t>(chunk_unit.size()));
    const int64_t n = unit_lengths[u] / chunk_;
    max_chunks_per_unit_ = std::max(max_chunks_per_unit_, n);
    chunk_unit.insert(chunk_unit.end(), n, u);
  }
  std::vector<int64_t> gather(units_ * max_chunks_per_unit_, chunks_);
  std::vector<float> unit_length(units_), layer_units(units_);
  int64_t u = 0;
  for (const LayerSlot& slot : layers_) {
    const int64_t units_here = g == Granularity::kChannel ? slot.shape[0] : 1;
    for (int64_t k = 0; k < units_here; ++k, ++u) {
      const int64_t n = unit_lengths[u] / chunk_;
      for (int64_t j = 0; j < n; ++j) gather[u * max_chunks_per_unit_ + j] = first_chunk[u] + j;
      unit_length[u] = static_cast<float>(unit_lengths[u]);
      layer_units[u] = static_cast<float>(units_here);
    }
  }
  const at::Device device = tensor_options_.device();
  const auto longs = at::TensorOptions().dtype(at::kLong);
  const auto floats = at::TensorOptions().dtype(at::kFloat);
  chunk_unit_ = at::tensor(chunk_unit, longs).to(device);
  unit_gather_ = at::tensor(gather, longs).to(device);
  unit_length_ = at::tensor(unit_length, floats).to(tensor_options_);
  layer_units_ = at::tensor(layer_units, floats).to(tensor_options_);
  chunk_sums_ = at::zeros({kMaxStackedSums, chunks_ + 1}, tensor_options_);
  if (tensor_options_.dtype() == at::kFloat && FusedPackedProjection::Available(device)) {
    fused_ = std::make_unique<FusedPackedProjection>(layer_numel, units_per_layer, device);
  }
}

PackedProjection::~PackedProjection() = default;

bool PackedProjection::fused_built() {
#ifdef TERN_WITH_FUSED_PROJECTION
  return true;
#else
  return false;
#endif
}

void PackedProjection::UpdateGradients(const GradientUpdate& u) {
  at::NoGradGuard no_grad;
  if (u.fused && FusedPackedProjection::UpdateGradients(u)) return;
  if (!u.rho.empty()) at::_foreach_mul_(u.grads, u.rho);
  if (!u.reg_grad.empty()) at::_foreach_add_(u.grads, u.reg_grad, u.lambda);
  if (!u.moments.empty()) {  // v ← decay·v + (1 − decay)·g²
    at::_foreach_mul_(u.moments, u.decay);
    at::_foreach_addcmul_(u.moments, u.moment_grads, u.moment_grads, 1.0 - u.decay);
  }
}

bool PackedProjection::Matches(const std::vector<at::Tensor>& weights) const {
  if (weights.size() != layers_.size()) return false;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i].sizes().vec() != layers_[i].shape ||
        weights[i].device() != tensor_options_.device() ||
        weights[i].dtype() != tensor_options_.dtype()) {
      return false;
    }
  }
  return true;
}

at::Tensor PackedProjection::UnitSums(const at::Tensor& stacked) {
  const int64_t rows = stacked.size(0);
  if (max_chunks_per_unit_ == 1) return stacked.sum(2);  // one chunk per unit
  TERN_CHECK(rows <= chunk_sums_.size(0)) << "PackedProjection: too many stacked sums";
  const at::Tensor padded = chunk_sums_.narrow(0, 0, rows);
  at::Tensor sums = padded.narrow(1, 0, chunks_);
  at::sum_out(sums, stacked, at::IntArrayRef{2});
  return padded.index_select(1, unit_gather_).view({rows, units_, max_chunks_per_unit_}).sum(2);
}

at::Tensor PackedProjection::UnitSum(const at::Tensor& chunked) {
  return UnitSums(chunked.unsqueeze(0)).squeeze(0);
}

at::Tensor PackedProjection::ToChunks(const at::Tensor& per_unit) {
  const int64_t last = per_unit.dim() - 1;
  if (max_chunks_per_unit_ == 1) return per_unit.unsqueeze(last + 1);
  return per_unit.index_select(last, chunk_unit_).unsqueeze(last + 1);
}

std::vector<at::Tensor> PackedProjection::PerLayer(const at::Tensor& flat) const {
  std::vector<at::Tensor> out;
  out.reserve(layers_.size());
  for (const LayerSlot& slot : layers_) out.push_back(Alias(flat, slot));
  return out;
}

void PackedProjection::Gather(const std::vector<at::Tensor>& tensors, at::Tensor& flat,
                              std::vector<at::Tensor>& slices) const {
  if (!flat.defined()) {
    flat = at::empty({total_}, tensor_options_);
    slices = PerLayer(flat);
  }
  // Slices and tensors share strides: the fused multi-tensor path.
  std::vector<at::Tensor> targets, sources;
  for (size_t k = 0; k < tensors.size(); ++k) {
    if (InPlace(tensors[k], slices[k])) continue;
    targets.push_back(slices[k]);
    sources.push_back(tensors[k].detach());
  }
  if (targets.empty()) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 6)
  at::_foreach_copy_(targets, sources);  // one kernel for all layers
#else
  // LibTorch 1.13 has no multi-tensor copy. Off the CPU, where kernels are launched, and with
  // every layer to pack: 0 + x is x exactly, two kernels. Otherwise a copy per layer.
  if (targets.size() == slices.size() && !flat.is_cpu()) {
    flat.zero_();
    at::_foreach_add_(targets, sources);
    return;
  }
  for (size_t k = 0; k < targets.size(); ++k) targets[k].copy_(sources[k]);
#endif
}

void PackedProjection::MoveIn(const std::vector<at::Tensor>& weights,
                              const std::vector<at::Tensor>& moments) {
  TERN_CHECK(Matches(weights)) << "PackedProjection: weights changed shape, device or dtype";
  TERN_CHECK(moments.empty() || Matches(moments)) << "PackedProjection: moments do not match";
  at::NoGradGuard no_grad;
  const auto move_in = [&](const std::vector<at::Tensor>& tensors, at::Tensor& flat,
                           std::vector<at::Tensor>& slices) {
    Gather(tensors, flat, slices);  // the values of those not in place yet
    for (size_t k = 0; k < tensors.size(); ++k) {
      if (!InPlace(tensors[k], slices[k])) tensors[k].set_data(slices[k]);
    }
  };
  move_in(weights, flat_, flat_slices_);
  if (!moments.empty()) move_in(moments, flat_moments_, moment_slices_);
}

PackedProjection::Output PackedProjection::Run(const std::vector<at::Tensor>& weights,
                                               const Options& o,
                                               const std::vector<at::Tensor>& moments) {
  TERN_CHECK(Matches(weights)) << "PackedProjection: weights changed shape, device or dtype";
  TERN_CHECK(moments.empty() || Matches(moments)) << "PackedProjection: moments do not match";
  at::NoGradGuard no_grad;
  Gather(weights, flat_, flat_slices_);
  if (o.fused && fused_ != nullptr && fused_->Supports(o)) {
    const bool weighted = o.lat_iterations > 0 && !moments.empty();
    if (weighted) Gather(moments, flat_moments_, moment_slices_);
    FusedPackedProjection::Flat flat =
        fused_->Run(flat_, weighted ? flat_moments_ : at::Tensor(), o);
    Output out;
    out.w_hat = PerLayer(flat.w_hat);
    if (o.with_rho) out.rho = PerLayer(flat.rho);
    if (o.with_regularizer) {
      out.reg_grad = PerLayer(flat.reg_grad);
      out.reg_value = flat.reg_value;
    }
    out.unit_stats = flat.unit_stats;
    return out;
  }
  const at::Tensor w = flat_.view({chunks_, chunk_});
  const at::Tensor a = w.abs();
  const at::Tensor mean_abs = UnitSum(a) / unit_length_;
  at::Tensor delta = ToChunks(mean_abs * o.delta_factor);
  // LAT's weights d = sqrt(v̂) + ε, stacked under d|W| as [d|W| ; d]: each
  // alternation below multiplies both rows by the mask in one kernel. None
  // (d = 1) for TWN and LAT without moments.
  at::Tensor weighted;
  if (o.lat_iterations > 0 && !moments.empty()) {
    Gather(moments, flat_moments_, moment_slices_);
    const at::Tensor m = flat_moments_.view({chunks_, chunk_});
    weighted = at::empty({2, chunks_, chunk_}, a.options());
    at::Tensor weighted_abs = weighted.select(0, 0);
    at::Tensor d = weighted.select(0, 1);
    at::sqrt_out(d, o.moment_correction_tensor.defined() ? m / o.moment_correction_tensor
                                                          : m / o.moment_correction);
    d.add_(o.lat_epsilon);
    at::mul_out(weighted_abs, d, a);
  }
  // M = [|W| > Δ], then α = Σ d|W|⊙M / Σ d⊙M per unit; both sums in one
  // UnitSums() pass over [d|W|⊙M ; d⊙M] (over [|W|⊙M ; M] when d = 1).
  at::Tensor mask;
  at::Tensor alpha;
  auto threshold_and_alpha = [&] {
    at::Tensor stacked = at::empty({2, chunks_, chunk_}, a.options());
    if (weighted.defined()) {
      mask = GreaterAsMask(a, delta);
      at::mul_out(stacked, weighted, mask.unsqueeze(0));
    } else {
      at::Tensor masked_abs = stacked.select(0, 0);
      at::Tensor denominator = stacked.select(0, 1);
      at::gt_out(denominator, a, delta);
      mask = denominator;
      at::mul_out(masked_abs, a, mask);
    }
    const at::Tensor sums = UnitSums(stacked);
    alpha = sums.select(0, 0) / sums.select(0, 1).clamp_min(kTiny);
  };
  // TWN: one threshold. LAT: alternate α and Δ = α/2, then the final mask's α.
  threshold_and_alpha();
  for (int i = 0; i < o.lat_iterations; ++i) {
    delta = ToChunks(alpha / 2);
    threshold_and_alpha();
  }
  const at::Tensor codes = w.sign() * mask;
  const at::Tensor alpha_c = ToChunks(alpha);
  Output out;
  if (o.w_hat_dtype == at::ScalarType::Undefined || o.w_hat_dtype == w.scalar_type()) {
    out.w_hat = PerLayer((codes * alpha_c).view({total_}));
  } else {
    at::Tensor w_hat = at::empty({chunks_, chunk_}, w.options().dtype(o.w_hat_dtype));
    at::mul_out(w_hat, codes, alpha_c);
    out.w_hat = PerLayer(w_hat.view({total_}));
  }
  if (o.with_rho) {
    at::Tensor rho = LessEqualAsMask(a, alpha_c * o.clip);
    if (o.rescale) {
      const at::Tensor inverse_mean = mean_abs.clamp_min(kTiny).reciprocal();
      const at::Tensor tau = ToChunks(o.kappa_tensor.defined() ? inverse_mean * o.kappa_tensor
                                                                : inverse_mean * o.kappa);
      const at::Tensor s = at::sigmoid(tau * (a - delta));
      // ρ·((1−β) + 4β·s(1−s)) in three kernels: s − s², ρ(1−β), + 4β·ρ·(s − s²).
      const at::Tensor bump = at::addcmul(s, s, s, /*value=*/-1.0);
      rho = at::addcmul(rho * (1.0 - o.beta), rho, bump, /*value=*/o.beta * 4.0);
      if (o.normalize) {
        rho = rho / ToChunks((UnitSum(rho) / unit_length_).clamp_min(kTiny));
      }
    }
    out.rho = PerLayer(rho.view({total_}));
  }
  if (o.with_regularizer) {
    // R_l = 1 − mean over the layer's units of cos(W_u, T_u); T·T = |mask|.
    // ‖W_u‖², T·T and W·T in one UnitSums() pass over [W⊙W ; M ; |W|⊙M]
    // (W·T = Σ W·sign(W)·M = Σ |W|·M exactly).
    const at::Tensor stacked = at::empty({3, chunks_, chunk_}, w.options());
    at::Tensor squares = stacked.select(0, 0);
    at::Tensor masked_abs = stacked.select(0, 2);
    at::mul_out(squares, w, w);
    stacked.select(0, 1).copy_(mask);
    at::mul_out(masked_abs, a, mask);
    const at::Tensor sums = UnitSums(stacked);
    const at::Tensor squared_norm_w = sums.select(0, 0);
    const at::Tensor dot = sums.select(0, 2);
    // 1/(‖W_u‖‖T_u‖) where the cosine is defined, else 0 (a unit of zeros,
    // or one without a nonzero code): every term below is then 0.
    const at::Tensor norms = (squared_norm_w * sums.select(0, 1)).sqrt();
    const at::Tensor inverse = GreaterAsMask(norms, kTiny) / norms.clamp_min(kTiny);
    const at::Tensor cosine_per_unit = dot * inverse / layer_units_;  // cos(W_u,T_u)/U
    // ∂R_l/∂W_u = (cos/‖W_u‖²·W_u − T_u/(‖W_u‖‖T_u‖)) / U: both per-unit
    // coefficients reach the elements through one index_select.
    const at::Tensor coefficients = at::empty({2, units_}, w.options());
    at::Tensor coef_w = coefficients.select(0, 0);
    at::Tensor coef_t = coefficients.select(0, 1);
    at::div_out(coef_w, cosine_per_unit, squared_norm_w.clamp_min(kTiny));
    at::div_out(coef_t, inverse, layer_units_);
    const at::Tensor chunked = ToChunks(coefficients);
    out.reg_grad =
        PerLayer((w * chunked.select(0, 0) - codes * chunked.select(0, 1)).view({total_}));
    out.reg_value = static_cast<double>(layers_.size()) - cosine_per_unit.sum();
  }
  return out;
}

}  // namespace tern::quant
