#include "quant/packed_projection_fused.h"

#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>

#include "common/check.h"
#include "quant/fused_projection_reference.h"
#ifdef TERN_WITH_FUSED_PROJECTION
#include "quant/packed_projection_cuda.h"
#endif

namespace tern::quant {
namespace {

bool IsDeviceFloat(const at::Tensor& t, const at::Device& device) {
  return t.defined() && t.device() == device && t.scalar_type() == at::kFloat;
}

// The CPU path's pieces on ATen's intra-op threads (at::set_num_threads).
void AtenParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { body(begin, end); });
}

}  // namespace

bool FusedPackedProjection::Available(const at::Device& device) {
  const char* value = std::getenv("TERN_FUSED_PROJECTION");
  if (value != nullptr && std::strcmp(value, "0") == 0) return false;
#ifdef TERN_WITH_FUSED_PROJECTION
  if (device.is_cuda()) return true;
#endif
  return device.is_cpu();
}

FusedPackedProjection::FusedPackedProjection(const std::vector<int64_t>& layer_numel,
                                             const std::vector<int64_t>& layer_units,
                                             at::Device device)
    : device_(device), host_layout_(fused::MakeLayout(layer_numel, layer_units)) {
  if (device.is_cpu()) {
    layout_ = host_layout_.View();
    return;
  }
#ifdef TERN_WITH_FUSED_PROJECTION
  table_ = at::tensor(host_layout_.table, at::TensorOptions().dtype(at::kLong)).to(device);
  layout_ = host_layout_.View(table_.data_ptr<int64_t>());
  workspace_ = at::zeros({static_cast<int64_t>(fused::WorkspaceBytes(layout_))},
                         at::TensorOptions().dtype(at::kByte).device(device));
#else
  TERN_CHECK(false) << "fused projection: no kernels for " << device << " in this build";
#endif
}

at::Tensor FusedPackedProjection::OutputBuffer(at::Tensor Flat::*field, at::IntArrayRef sizes,
                                               const at::TensorOptions& options) {
  const at::Tensor& last = previous_.*field;
  // Nothing but previous_ holds the last call's buffer (no output, view or graph of the
  // step): write into it again rather than fault a fresh one in.
  if (device_.is_cpu() && last.defined() && last.storage().use_count() == 1 &&
      last.sizes() == sizes && last.dtype() == options.dtype()) {
    return last;
  }
  return at::empty(sizes, options);
}

bool FusedPackedProjection::Supports(const PackedProjection::Options& o) const {
  const bool w_hat_ok = o.w_hat_dtype == at::ScalarType::Undefined || o.w_hat_dtype == at::kFloat ||
                        o.w_hat_dtype == at::kBFloat16;
  return w_hat_ok && (!o.kappa_tensor.defined() || IsDeviceFloat(o.kappa_tensor, device_)) &&
         (!o.moment_correction_tensor.defined() ||
          IsDeviceFloat(o.moment_correction_tensor, device_));
}

FusedPackedProjection::Flat FusedPackedProjection::Run(const at::Tensor& flat,
                                                       const at::Tensor& moments,
                                                       const PackedProjection::Options& o) {
  TERN_CHECK(IsDeviceFloat(flat, device_) && flat.numel() == layout_.total)
      << "fused projection: the packed weights changed";
  TERN_CHECK(!moments.defined() ||
             (IsDeviceFloat(moments, device_) && moments.numel() == layout_.total))
      << "fused projection: the packed moments do not match";
  const bool bf16 = o.w_hat_dtype == at::kBFloat16;
  Flat out;
  out.w_hat = OutputBuffer(&Flat::w_hat, {layout_.total},
                           flat.options().dtype(bf16 ? at::kBFloat16 : at::kFloat));
  if (o.with_rho) out.rho = OutputBuffer(&Flat::rho, {layout_.total}, flat.options());
  if (o.with_regularizer) {
    out.reg_grad = OutputBuffer(&Flat::reg_grad, {layout_.total}, flat.options());
    out.reg_value = at::empty({}, flat.options());
  }
  out.unit_stats = at::empty({4, layout_.units}, flat.options());
  if (device_.is_cpu()) previous_ = out;
  fused::ProjectionArgs a;
  a.layout = layout_;
  a.w = flat.data_ptr<float>();
  a.moments = moments.defined() ? moments.data_ptr<float>() : nullptr;
  a.delta_factor = static_cast<float>(o.delta_factor);
  a.lat_iterations = o.lat_iterations;
  a.moment_correction = static_cast<float>(o.moment_correction);
  a.lat_epsilon = static_cast<float>(o.lat_epsilon);
  if (o.moment_correction_tensor.defined()) {
    a.moment_correction_device = o.moment_correction_tensor.data_ptr<float>();
  }
  a.with_rho = o.with_rho;
  a.rescale = o.rescale;
  a.normalize = o.normalize;
  a.beta = static_cast<float>(o.beta);
  a.kappa = static_cast<float>(o.kappa);
  if (o.kappa_tensor.defined()) a.kappa_device = o.kappa_tensor.data_ptr<float>();
  a.clip = static_cast<float>(o.clip);
  a.with_regularizer = o.with_regularizer;
  a.w_hat = out.w_hat.data_ptr();
  a.w_hat_type = bf16 ? fused::WHatType::kBFloat16 : fused::WHatType::kFloat32;
  if (o.with_rho) a.rho = out.rho.data_ptr<float>();
  if (o.with_regularizer) {
    a.reg_grad = out.reg_grad.data_ptr<float>();
    a.reg_value = out.reg_value.data_ptr<float>();
  }
  a.unit_stats = out.unit_stats.data_ptr<float>();
  if (device_.is_cpu()) {
    // 64 Ki elements of W (and of the moments) per thread at a time: 512 KiB, which stay in
    // a core's L2 cache through the passes (measured on a 2 MiB L2: 10% faster than whole
    // passes, and than 128 Ki or more; docs/BENCHMARKS.md).
    constexpr int64_t kCacheChunkPerThread = 64 * 1024;
    fused::ReferenceProjection(a, AtenParallelFor, kCacheChunkPerThread * at::get_num_threads());
    return out;
  }
#ifdef TERN_WITH_FUSED_PROJECTION
  a.workspace = workspace_.data_ptr();
  LaunchFusedProjection(a, device_);
#endif
  return out;
}

bool FusedPackedProjection::UpdateGradients(const PackedProjection::GradientUpdate& u) {
  const std::vector<at::Tensor>& grads = u.grads.empty() ? u.moment_grads : u.grads;
  if (grads.empty()) return true;
  const at::Device device = grads.front().device();
  if (!Available(device)) return false;
  const bool with_moments = !u.moments.empty();
  for (const auto* list : {&u.rho, &u.reg_grad}) {  // they go with u.grads
    if (!list->empty() && list->size() != u.grads.size()) return false;
  }
  if (with_moments && u.moments.size() != grads.size()) return false;
  if (with_moments && !u.grads.empty()) {  // the moments must follow these very gradients
    if (u.moment_grads.size() != u.grads.size()) return false;
    for (size_t k = 0; k < grads.size(); ++k) {
      if (!u.moment_grads[k].is_same(u.grads[k])) return false;
    }
  }
  auto fits = [&](const std::vector<at::Tensor>& list, size_t k) {
    if (list.empty()) return true;
    const at::Tensor& t = list[k];
    return IsDeviceFloat(t, device) && t.strides() == grads[k].strides() &&
           t.sizes() == grads[k].sizes();
  };
  fused::GradientArgs args;
  args.lambda = static_cast<float>(u.lambda);
  args.decay = static_cast<float>(u.decay);
  for (size_t k = 0; k < grads.size(); ++k) {
    const at::Tensor& g = grads[k];
    if (!IsDeviceFloat(g, device) || !g.is_non_overlapping_and_dense()) return false;
    if (!fits(u.rho, k) || !fits(u.reg_grad, k) || !fits(u.moments, k)) return false;
    fused::GradientLayer layer;
    layer.grad = g.data_ptr<float>();
    layer.rho = u.rho.empty() ? nullptr : u.rho[k].data_ptr<float>();
    layer.reg_grad = u.reg_grad.empty() ? nullptr : u.reg_grad[k].data_ptr<float>();
    layer.moment = with_moments ? u.moments[k].data_ptr<float>() : nullptr;
    layer.numel = g.numel();
    args.layers.push_back(layer);
  }
  if (device.is_cpu()) {
    fused::ReferenceGradients(args, AtenParallelFor);
    return true;
  }
#ifdef TERN_WITH_FUSED_PROJECTION
  LaunchFusedGradients(args, device);
  return true;
#else
  return false;
#endif
}

}  // namespace tern::quant
