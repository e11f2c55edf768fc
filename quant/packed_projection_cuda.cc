#include "quant/packed_projection_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdlib>
#include <cstring>

#include "common/check.h"

namespace tern::quant {
namespace {

// Every launch's status goes through this: a failed launch is a broken invariant (the
// arguments were checked), reported with CUDA's message.
#define TERN_FUSED_CHECK(status) \
  TERN_CHECK((status).ok()) << "fused projection: " << (status).message

bool IsDeviceFloat(const at::Tensor& t, const at::Device& device) {
  return t.defined() && t.device() == device && t.scalar_type() == at::kFloat;
}

}  // namespace

FusedPackedProjection::FusedPackedProjection(const std::vector<int64_t>& layer_numel,
                                             const std::vector<int64_t>& layer_units,
                                             at::Device device)
    : host_layout_(fused::MakeLayout(layer_numel, layer_units)) {
  const c10::cuda::CUDAGuard guard(device);
  table_ = at::tensor(host_layout_.table, at::TensorOptions().dtype(at::kLong)).to(device);
  layout_ = host_layout_.View(table_.data_ptr<int64_t>());
  workspace_ = at::zeros({static_cast<int64_t>(fused::WorkspaceBytes(layout_))},
                         at::TensorOptions().dtype(at::kByte).device(device));
}

bool FusedPackedProjection::DisabledByEnvironment() {
  const char* value = std::getenv("TERN_FUSED_PROJECTION");
  return value != nullptr && std::strcmp(value, "0") == 0;
}

bool FusedPackedProjection::Supports(const PackedProjection::Options& o) const {
  const at::Device device = table_.device();
  const bool w_hat_ok = o.w_hat_dtype == at::ScalarType::Undefined || o.w_hat_dtype == at::kFloat ||
                        o.w_hat_dtype == at::kBFloat16;
  return w_hat_ok && (!o.kappa_tensor.defined() || IsDeviceFloat(o.kappa_tensor, device)) &&
         (!o.moment_correction_tensor.defined() ||
          IsDeviceFloat(o.moment_correction_tensor, device));
}

FusedPackedProjection::Flat FusedPackedProjection::Run(const at::Tensor& flat,
                                                       const at::Tensor& moments,
                                                       const PackedProjection::Options& o) {
  TERN_CHECK(IsDeviceFloat(flat, table_.device()) && flat.numel() == layout_.total)
      << "fused projection: the packed weights changed";
  TERN_CHECK(!moments.defined() ||
             (IsDeviceFloat(moments, table_.device()) && moments.numel() == layout_.total))
      << "fused projection: the packed moments do not match";
  const c10::cuda::CUDAGuard guard(flat.device());
  const bool bf16 = o.w_hat_dtype == at::kBFloat16;
  Flat out;
  out.w_hat = at::empty({layout_.total}, flat.options().dtype(bf16 ? at::kBFloat16 : at::kFloat));
  if (o.with_rho) out.rho = at::empty({layout_.total}, flat.options());
  if (o.with_regularizer) {
    out.reg_grad = at::empty({layout_.total}, flat.options());
    out.reg_value = at::empty({}, flat.options());
  }
  out.unit_stats = at::empty({4, layout_.units}, flat.options());
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
  a.workspace = workspace_.data_ptr();
  TERN_FUSED_CHECK(fused::LaunchProjection(a, at::cuda::getCurrentCUDAStream().stream()));
  return out;
}

bool FusedPackedProjection::UpdateGradients(const PackedProjection::GradientUpdate& u) {
  const std::vector<at::Tensor>& grads = u.grads.empty() ? u.moment_grads : u.grads;
  if (grads.empty()) return true;
  const at::Device device = grads.front().device();
  if (!device.is_cuda()) return false;
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
  const c10::cuda::CUDAGuard guard(device);
  TERN_FUSED_CHECK(fused::LaunchGradients(args, at::cuda::getCurrentCUDAStream().stream()));
  return true;
}

}  // namespace tern::quant
