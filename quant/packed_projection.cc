#include "quant/packed_projection.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <numeric>

#include "common/check.h"
#include "quant/ternary_ops.h"

namespace tern::quant {
namespace {

constexpr double kTiny = 1e-12;    // as in ternary_ops.cc
constexpr int64_t kMaxChunk = 4096;

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

}  // namespace

PackedProjection::PackedProjection(const std::vector<at::Tensor>& weights,
                                         Granularity g) {
  TERN_CHECK(!weights.empty()) << "PackedProjection needs at least one weight";
  tensor_options_ = weights.front().options().requires_grad(false);
  std::vector<int64_t> unit_lengths;
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
  chunk_sums_ = at::zeros({chunks_ + 1}, tensor_options_);
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

at::Tensor PackedProjection::UnitSum(const at::Tensor& chunked) {
  if (max_chunks_per_unit_ == 1) return chunked.sum(1);  // one chunk per unit
  at::Tensor sums = chunk_sums_.narrow(0, 0, chunks_);
  at::sum_out(sums, chunked, at::IntArrayRef{1});
  return chunk_sums_.index_select(0, unit_gather_).view({units_, max_chunks_per_unit_}).sum(1);
}

at::Tensor PackedProjection::ToChunks(const at::Tensor& per_unit) {
  if (max_chunks_per_unit_ == 1) return per_unit.unsqueeze(1);
  return per_unit.index_select(0, chunk_unit_).unsqueeze(1);
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
  // 0 + x is x exactly; two kernels for all layers (LibTorch 1.13 has no
  // multi-tensor copy). Slices and tensors share strides: the fused path.
  std::vector<at::Tensor> sources;
  sources.reserve(tensors.size());
  for (const at::Tensor& t : tensors) sources.push_back(t.detach());
  flat.zero_();
  at::_foreach_add_(slices, sources);
}

PackedProjection::Output PackedProjection::Run(const std::vector<at::Tensor>& weights,
                                               const Options& o,
                                               const std::vector<at::Tensor>& moments) {
  TERN_CHECK(Matches(weights)) << "PackedProjection: weights changed shape, device or dtype";
  TERN_CHECK(moments.empty() || Matches(moments)) << "PackedProjection: moments do not match";
  at::NoGradGuard no_grad;
  Gather(weights, flat_, flat_slices_);
  const at::Tensor w = flat_.view({chunks_, chunk_});
  const at::Tensor a = w.abs();
  const at::Tensor mean_abs = UnitSum(a) / unit_length_;
  at::Tensor delta = ToChunks(mean_abs * o.delta_factor);
  at::Tensor mask = (a > delta).to(a.scalar_type());
  at::Tensor alpha;
  if (o.lat_iterations == 0) {  // TWN: α = Σ|W|⊙M / ΣM
    alpha = UnitSum(a * mask) / UnitSum(mask).clamp_min(kTiny);
  } else {  // LAT: α = Σ d|W|⊙M / Σ d⊙M, Δ = α/2, then the final mask's α
    at::Tensor d;
    if (!moments.empty()) {
      Gather(moments, flat_moments_, moment_slices_);
      const at::Tensor m = flat_moments_.view({chunks_, chunk_});
      d = (o.moment_correction_tensor.defined() ? m / o.moment_correction_tensor
                                                : m / o.moment_correction)
              .sqrt() +
          o.lat_epsilon;
    }
    const at::Tensor da = d.defined() ? d * a : a;
    auto weighted_alpha = [&] {
      return UnitSum(da * mask) / UnitSum(d.defined() ? d * mask : mask).clamp_min(kTiny);
    };
    for (int i = 0; i < o.lat_iterations; ++i) {
      alpha = weighted_alpha();
      delta = ToChunks(alpha / 2);
      mask = (a > delta).to(a.scalar_type());
    }
    alpha = weighted_alpha();
  }
  const at::Tensor codes = w.sign() * mask;
  const at::Tensor alpha_c = ToChunks(alpha);
  Output out;
  out.w_hat = PerLayer((codes * alpha_c).view({total_}));
  if (o.with_rho) {
    at::Tensor rho = (a <= alpha_c * o.clip).to(a.scalar_type());
    if (o.rescale) {
      const at::Tensor inverse_mean = mean_abs.clamp_min(kTiny).reciprocal();
      const at::Tensor tau = ToChunks(o.kappa_tensor.defined() ? inverse_mean * o.kappa_tensor
                                                                : inverse_mean * o.kappa);
      const at::Tensor s = at::sigmoid(tau * (a - delta));
      rho = rho * ((1.0 - o.beta) + (o.beta * 4.0) * s * (1.0 - s));
      if (o.normalize) {
        rho = rho / ToChunks((UnitSum(rho) / unit_length_).clamp_min(kTiny));
      }
    }
    out.rho = PerLayer(rho.view({total_}));
  }
  if (o.with_regularizer) {
    // R_l = 1 − mean over the layer's units of cos(W_u, T_u); T·T = |mask|.
    const at::Tensor norm_w = UnitSum(w * w).sqrt();
    const at::Tensor norm_t = UnitSum(mask).sqrt();
    const at::Tensor dot = UnitSum(w * codes);
    const at::Tensor norms = norm_w * norm_t;
    const at::Tensor valid = norms > kTiny;
    const at::Tensor zero = at::zeros_like(norms);
    const at::Tensor coef_t =
        at::where(valid, -1.0 / norms.clamp_min(kTiny), zero) / layer_units_;
    const at::Tensor coef_w =
        at::where(valid, dot / (norm_w.pow(3) * norm_t).clamp_min(kTiny), zero) / layer_units_;
    out.reg_grad = PerLayer((codes * ToChunks(coef_t) + w * ToChunks(coef_w)).view({total_}));
    const at::Tensor cosine = at::where(valid, dot / norms.clamp_min(kTiny), zero);
    out.reg_value = static_cast<double>(layers_.size()) - (cosine / layer_units_).sum();
  }
  return out;
}

}  // namespace tern::quant
