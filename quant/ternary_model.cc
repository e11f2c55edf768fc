#include "quant/ternary_model.h"

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

namespace tern::quant {

struct TernaryModel::Layer {
  std::string name;               // module path
  at::Tensor* forward_weight;     // the member the layer's forward() reads
  at::Tensor latent;              // registered parameter "weight" (FP)
  bool quantized = false;
  at::Tensor second_moment;       // LAT: EMA of g² (buffer of state_)
  at::Tensor wp, wn;              // TTQ: learned scales (parameters of state_)
  TernaryProjection projection;   // from the last BeforeForward()
  at::Tensor report_codes;        // int8 codes at the previous Stats()
  int64_t cached_version = -1;    // eval cache key: latent._version()
  int64_t cached_moments = -1;    //   and the second-moment step
};

namespace {

// "layer1.0.conv1" -> "layer1_0_conv1": names registered on state_.
std::string StateKey(const std::string& name) {
  std::string key = name;
  std::replace(key.begin(), key.end(), '.', '_');
  return key.empty() ? "root" : key;
}

std::vector<float> ToFloatVector(const at::Tensor& t) {
  const at::Tensor c = t.detach().to(at::kCPU, at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

}  // namespace

TernaryModel::TernaryModel(std::shared_ptr<torch::nn::Module> root,
                           QuantOptions options)
    : root_(std::move(root)),
      state_(std::make_shared<torch::nn::Module>("TernaryQuantizerState")),
      options_(options) {}

TernaryModel::~TernaryModel() = default;

StatusOr<std::unique_ptr<TernaryModel>> TernaryModel::Attach(
    std::shared_ptr<torch::nn::Module> root, const QuantOptions& options,
    const std::vector<std::string>& output_layers) {
  TERN_RETURN_IF_ERROR(options.Validate());
  if (root == nullptr) return InvalidArgumentError("model: is null");
  std::unique_ptr<TernaryModel> model(new TernaryModel(root, options));
  for (const auto& item : root->named_modules()) {
    at::Tensor* weight = nullptr;
    if (auto* conv = item.value()->as<torch::nn::Conv2dImpl>()) {
      weight = &conv->weight;
    } else if (auto* linear = item.value()->as<torch::nn::LinearImpl>()) {
      weight = &linear->weight;
    }
    if (weight == nullptr) continue;
    auto layer = std::make_unique<Layer>();
    layer->name = item.key();
    layer->forward_weight = weight;
    layer->latent = *weight;
    model->layers_.push_back(std::move(layer));
  }
  if (model->layers_.empty()) {
    return InvalidArgumentError("model: has no Conv2d or Linear layer to ternarize");
  }
  for (const std::string& name : output_layers) {
    const bool found = std::any_of(model->layers_.begin(), model->layers_.end(),
                                   [&](const auto& layer) { return layer->name == name; });
    if (!found) {
      return InvalidArgumentError("model: output layer '" + name +
                                  "' is not a Conv2d or Linear layer of the model");
    }
  }
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < model->layers_.size(); ++i) {
    Layer& layer = *model->layers_[i];
    const bool first = i == 0;
    const bool last = output_layers.empty()
                          ? i + 1 == model->layers_.size()
                          : std::find(output_layers.begin(), output_layers.end(), layer.name) !=
                                output_layers.end();
    layer.quantized = options.quantized() && !(first && options.keep_first_fp) &&
                      !(last && options.keep_last_fp);
    if (!layer.quantized) continue;
    const std::string key = StateKey(layer.name);
    if (options.projection == Projection::kLat) {
      layer.second_moment = model->state_->register_buffer(
          key + "_second_moment", at::zeros_like(layer.latent));
    }
    if (options.projection == Projection::kTtq) {
      // Start both scales at the TWN α of the initial weights.
      const TernaryProjection init =
          ProjectTwn(layer.latent, options.granularity, options.twn_delta_factor);
      layer.wp = model->state_->register_parameter(key + "_ttq_pos",
                                                   init.pos_scale.clone());
      layer.wn = model->state_->register_parameter(key + "_ttq_neg",
                                                   init.neg_scale.clone());
    }
  }
  model->state_->register_buffer("moment_steps", at::zeros({}, at::kLong));
  model->SetProgress(0.0);
  return model;
}

std::vector<at::Tensor> TernaryModel::TrainableParameters() const {
  std::vector<at::Tensor> out;
  for (const auto& layer : layers_) {
    if (layer->wp.defined()) {
      out.push_back(layer->wp);
      out.push_back(layer->wn);
    }
  }
  return out;
}

void TernaryModel::SetProgress(double progress) {
  schedule_ = ComputeSchedule(options_, progress);
  FillDeviceScalars();
}

double TernaryModel::MomentCorrection() const {
  return 1.0 - std::pow(options_.second_moment_decay, static_cast<double>(moment_steps_));
}

void TernaryModel::set_device_scalars(bool on) {
  kappa_scalar_ = correction_scalar_ = at::Tensor();
  if (!on) return;
  for (const auto& layer : layers_) {
    if (!layer->quantized) continue;
    const auto options = layer->latent.options().requires_grad(false);
    kappa_scalar_ = at::zeros({}, options);
    correction_scalar_ = at::zeros({}, options);
    filled_kappa_ = filled_correction_ = 0;
    break;
  }
  FillDeviceScalars();
}

void TernaryModel::FillDeviceScalars() {
  if (!kappa_scalar_.defined()) return;
  at::NoGradGuard no_grad;
  const double correction = moment_steps_ > 0 ? MomentCorrection() : 1.0;
  if (schedule_.kappa != filled_kappa_) kappa_scalar_.fill_(schedule_.kappa);  // a kernel each
  if (correction != filled_correction_) correction_scalar_.fill_(correction);
  filled_kappa_ = schedule_.kappa;
  filled_correction_ = correction;
}

int64_t TernaryModel::StepStructure() const {
  const bool regularizer = options_.use_regularizer && schedule_.lambda != 0;
  const bool moments = options_.projection == Projection::kLat && moment_steps_ > 0;
  return (schedule_.ternary_forward ? 1 : 0) | (regularizer ? 2 : 0) | (moments ? 4 : 0) |
         (packed_enabled_ ? 8 : 0);
}

void TernaryModel::set_step_outputs(const StepOutputs& outputs) {
  packed_rho_ = outputs.rho;
  packed_reg_grad_ = outputs.reg_grad;
  packed_reg_value_ = outputs.reg_value;
}

TernaryProjection TernaryModel::Project(Layer& layer) const {
  const Granularity g = options_.granularity;
  switch (options_.projection) {
    case Projection::kTwn:
      return ProjectTwn(layer.latent, g, options_.twn_delta_factor);
    case Projection::kTtq:
      return ProjectTtq(layer.latent, g, options_.ttq_threshold, layer.wp, layer.wn);
    case Projection::kLat: {
      at::Tensor importance;
      if (moment_steps_ > 0) {
        at::NoGradGuard no_grad;
        importance = (layer.second_moment / MomentCorrection()).sqrt() + options_.lat_epsilon;
      }
      return ProjectLat(layer.latent, importance, g, options_.lat_iterations,
                        options_.twn_delta_factor);
    }
  }
  TERN_CHECK(false) << "unknown projection";
  return {};
}

void TernaryModel::BeforeForward() {
  const bool grad = at::GradMode::is_enabled();
  packed_rho_.clear();
  packed_reg_grad_.clear();
  packed_reg_value_ = at::Tensor();
  if (grad) last_forward_capturable_ = false;
  // Phase 1 projects only for the regularizer: not at λ = 0 (λ_max = 0, or
  // the start of its ramp), where nothing would read the projection.
  const bool regularizer = options_.use_regularizer && schedule_.lambda != 0;
  if (grad && packed_enabled_ && options_.projection != Projection::kTtq &&
      (schedule_.ternary_forward || regularizer) && BeforeForwardPacked()) {
    last_forward_capturable_ = true;
    return;
  }
  bool projected = false;  // no projection: the latent weights are all there is
  for (auto& layer_ptr : layers_) {
    Layer& layer = *layer_ptr;
    if (!layer.quantized) {
      *layer.forward_weight = layer.latent;
      continue;
    }
    if (!grad && layer.cached_version == layer.latent._version() &&
        layer.cached_moments == moment_steps_ && schedule_.ternary_forward) {
      continue;  // evaluation: weights unchanged since the last projection
    }
    layer.cached_version = -1;
    if (!schedule_.ternary_forward && !regularizer) {
      *layer.forward_weight = layer.latent;
      continue;
    }
    layer.projection = Project(layer);
    projected = true;
    const TernaryProjection& p = layer.projection;
    if (!schedule_.ternary_forward) {
      *layer.forward_weight = layer.latent;  // phase 1: FP forward
    } else if (!grad) {
      *layer.forward_weight = Dequantize(p.codes, p.pos_scale, p.neg_scale);
      layer.cached_version = layer.latent._version();
      layer.cached_moments = moment_steps_;
    } else if (options_.projection == Projection::kTtq) {
      *layer.forward_weight = TtqForward(layer.latent, p.codes, layer.wp, layer.wn);
    } else {
      const at::Tensor w_hat = Dequantize(p.codes, p.pos_scale, p.neg_scale);
      const at::Tensor rho = RescaleFactor(
          layer.latent, p, options_.granularity, options_.use_rescale,
          options_.beta, schedule_.kappa, options_.clip, options_.normalize);
      *layer.forward_weight = StraightThrough(layer.latent, w_hat, rho);
    }
  }
  if (grad) last_forward_capturable_ = !projected;
}

bool TernaryModel::BeforeForwardPacked() {
  std::vector<at::Tensor> latents, moments;
  const bool lat = options_.projection == Projection::kLat;
  for (const auto& layer : layers_) {
    if (!layer->quantized) continue;
    latents.push_back(layer->latent);
    if (lat && moment_steps_ > 0) moments.push_back(layer->second_moment);
  }
  if (latents.empty()) {
    for (auto& layer : layers_) *layer->forward_weight = layer->latent;
    return true;
  }
  if (packed_ == nullptr || !packed_->Matches(latents)) {
    packed_ = std::make_unique<PackedProjection>(latents, options_.granularity);
    if (!packed_->Matches(latents)) {  // layers on several devices or dtypes
      packed_.reset();
      return false;
    }
  }
  // The latent weights (and LAT's moments) live in the packed buffer from the first step on,
  // where the optimizer (and AfterBackward) update them: Run() then copies nothing in.
  packed_->MoveIn(latents, moments);
  PackedProjection::Options o;
  o.delta_factor = options_.twn_delta_factor;
  if (lat) {
    o.lat_iterations = options_.lat_iterations;
    o.lat_epsilon = options_.lat_epsilon;
    o.moment_correction = MomentCorrection();
    o.moment_correction_tensor = correction_scalar_;
  }
  o.kappa_tensor = kappa_scalar_;
  o.with_rho = schedule_.ternary_forward;
  o.rescale = options_.use_rescale;
  o.beta = options_.beta;
  o.kappa = schedule_.kappa;
  o.clip = options_.clip;
  o.normalize = options_.normalize;
  o.with_regularizer = options_.use_regularizer && schedule_.lambda != 0;
  o.w_hat_dtype = forward_dtype_;
  o.fused = fused_projection_;
  // Let go of the last step's Ŵ (views of its buffer) first: on the CPU the
  // projection then writes this step's into the same memory.
  for (auto& layer : layers_) {
    if (layer->quantized) *layer->forward_weight = layer->latent;
  }
  PackedProjection::Output out = packed_->Run(latents, o, moments);
  size_t k = 0;
  for (auto& layer_ptr : layers_) {
    Layer& layer = *layer_ptr;
    layer.cached_version = -1;
    if (!layer.quantized) {
      *layer.forward_weight = layer.latent;
      continue;
    }
    layer.projection = TernaryProjection();  // per-layer codes: not computed here
    // ρ is applied to the accumulated gradients by AfterBackward(), one
    // multi-tensor kernel for all layers instead of one per layer.
    *layer.forward_weight = schedule_.ternary_forward
                                ? StraightThroughIdentity(layer.latent, out.w_hat[k])
                                : layer.latent;
    ++k;
  }
  if (schedule_.ternary_forward) packed_rho_ = std::move(out.rho);
  if (o.with_regularizer) {
    packed_reg_grad_ = std::move(out.reg_grad);
    packed_reg_value_ = out.reg_value;
  }
  return true;
}

void TernaryModel::StateLoaded() {
  moment_steps_ = state_->named_buffers(false)["moment_steps"].item<int64_t>();
  for (auto& layer : layers_) layer->cached_version = -1;
  FillDeviceScalars();
}

void TernaryModel::UseLatentWeights() {
  for (auto& layer : layers_) {
    *layer->forward_weight = layer->latent;
    layer->cached_version = -1;
  }
}

at::Tensor TernaryModel::RegularizationLoss() const {
  const bool active = options_.use_regularizer && schedule_.lambda != 0;
  if (active && packed_reg_value_.defined()) return packed_reg_value_ * schedule_.lambda;
  at::Tensor total = at::zeros({}, layers_.front()->latent.options());
  if (!active) return total;
  for (const auto& layer : layers_) {
    if (!layer->quantized || !layer->projection.codes.defined()) continue;
    total = total + HypersphericalRegularizer(layer->latent, layer->projection.codes,
                                              options_.granularity);
  }
  return total * schedule_.lambda;
}

double RegularizerSample::RegGradShare() const {
  double reg = 0, total = 0;
  for (const Layer& l : layers) {
    reg += l.reg_grad_norm * l.reg_grad_norm;
    total += l.grad_norm * l.grad_norm;
  }
  return total > 0 ? std::sqrt(reg / total) : 0.0;
}

double RegularizerSample::MeanCosine() const {
  double sum = 0, count = 0;
  for (const Layer& l : layers) {
    sum += l.cos_wt * static_cast<double>(l.numel);
    count += static_cast<double>(l.numel);
  }
  return count > 0 ? sum / count : 0.0;
}

void TernaryModel::AfterBackward(RegularizerSample* sample) {
  at::NoGradGuard no_grad;
  // The sample's codes: the step's projection (the latent weights and the
  // LAT moments have not changed since BeforeForward()).
  std::vector<at::Tensor> cosines, reg_norms, grad_norms;  // per quantized layer
  if (sample != nullptr) {
    sample->lambda = schedule_.lambda;
    sample->layers.clear();
    for (auto& layer : layers_) {
      if (!layer->quantized) continue;
      const TernaryProjection p = Project(*layer);
      const at::Tensor w = layer->latent.detach();
      const Granularity g = options_.granularity;
      cosines.push_back(UnitCosine(w, p.codes, g).to(at::kDouble).mean());
      reg_norms.push_back(HypersphericalRegularizerGrad(w, p.codes, g).to(at::kDouble).norm() *
                          schedule_.lambda);
      sample->layers.push_back({layer->name, layer->latent.numel()});
    }
  }
  CompleteGradients();
  if (sample == nullptr || sample->layers.empty()) return;
  for (auto& layer : layers_) {
    if (!layer->quantized) continue;
    const at::Tensor& g = layer->latent.grad();
    grad_norms.push_back(g.defined() ? g.detach().to(at::kDouble).norm()
                                     : at::zeros({}, cosines.front().options()));
  }
  // [L, 3] on the host in one copy.
  const at::Tensor host =
      at::stack({at::stack(cosines), at::stack(reg_norms), at::stack(grad_norms)}, 1).cpu();
  const auto v = host.accessor<double, 2>();
  for (size_t i = 0; i < sample->layers.size(); ++i) {
    sample->layers[i].cos_wt = v[i][0];
    sample->layers[i].reg_grad_norm = v[i][1];
    sample->layers[i].grad_norm = v[i][2];
  }
}

void TernaryModel::CompleteGradients() {
  at::NoGradGuard no_grad;
  // The packed path's latent gradient ρ ⊙ ∂L/∂Ŵ + λ·∂R/∂W and LAT's moments,
  // for all layers in one fused pass (a CUDA kernel, or on the CPU; else a few
  // multi-tensor kernels): PackedProjection::UpdateGradients.
  PackedProjection::GradientUpdate update;
  update.fused = fused_projection_;
  if (!packed_rho_.empty() || !packed_reg_grad_.empty()) {
    // ρ is the same for every micro-batch (the latents only change at the
    // optimizer step) and on every rank, so it may scale the accumulated,
    // all-reduced gradient.
    std::vector<at::Tensor>& grads = update.grads;
    std::vector<at::Tensor>& rhos = update.rho;
    std::vector<at::Tensor>& reg_grads = update.reg_grad;
    size_t k = 0;
    for (auto& layer : layers_) {
      if (!layer->quantized) continue;
      const at::Tensor& grad = layer->latent.grad();
      if (grad.defined()) {
        grads.push_back(grad);
        if (!packed_rho_.empty()) rhos.push_back(packed_rho_[k]);
        if (!packed_reg_grad_.empty()) reg_grads.push_back(packed_reg_grad_[k]);
      } else if (!packed_reg_grad_.empty()) {  // no task gradient reached it
        layer->latent.mutable_grad() = packed_reg_grad_[k] * schedule_.lambda;
      }
      ++k;
    }
    update.lambda = schedule_.lambda;
    packed_rho_.clear();  // once per step, however many micro-batches
    packed_reg_grad_.clear();
  }
  if (options_.projection != Projection::kLat) {
    PackedProjection::UpdateGradients(update);
    return;
  }
  update.decay = options_.second_moment_decay;  // v ← decay·v + (1 − decay)·g²
  for (auto& layer : layers_) {
    if (!layer->quantized || !layer->latent.grad().defined()) continue;
    update.moments.push_back(layer->second_moment);
    update.moment_grads.push_back(layer->latent.grad());
  }
  PackedProjection::UpdateGradients(update);
  state_->named_buffers(false)["moment_steps"].add_(1);
  ++moment_steps_;  // mirrors the buffer without a device sync
  FillDeviceScalars();
}

std::vector<LayerStats> TernaryModel::Stats(bool reset_flips) {
  at::NoGradGuard no_grad;
  std::vector<LayerStats> out;
  for (auto& layer : layers_) {
    LayerStats s;
    s.name = layer->name;
    s.quantized = layer->quantized;
    s.numel = layer->latent.numel();
    if (layer->quantized) {
      const TernaryProjection p = Project(*layer);
      s.sparsity = (p.codes == 0).to(at::kDouble).mean().item<double>();
      s.alpha = at::cat({p.pos_scale, p.neg_scale}).to(at::kDouble).mean().item<double>();
      s.delta = p.delta.to(at::kDouble).mean().item<double>();
      s.cos_wt = UnitCosine(layer->latent, p.codes, options_.granularity)
                     .to(at::kDouble).mean().item<double>();
      const at::Tensor codes = p.codes.to(at::kChar);
      if (layer->report_codes.defined()) {
        s.flips = (codes != layer->report_codes).sum().item<int64_t>();
      }
      if (reset_flips || !layer->report_codes.defined()) layer->report_codes = codes;
    }
    out.push_back(std::move(s));
  }
  return out;
}

Artifact TernaryModel::Export(const std::string& architecture_json,
                              const std::string& metadata_json) const {
  at::NoGradGuard no_grad;
  Artifact artifact;
  artifact.architecture = architecture_json;
  artifact.metadata = metadata_json;
  artifact.packing = options_.packing;
  std::map<std::string, const Layer*> quantized;
  for (const auto& layer : layers_) {
    if (layer->quantized) quantized[layer->name + (layer->name.empty() ? "" : ".") + "weight"] = layer.get();
  }
  auto add = [&](const std::string& name, const at::Tensor& value) {
    ArtifactTensor t;
    t.name = name;
    t.shape = value.sizes().vec();
    auto it = quantized.find(name);
    if (it == quantized.end()) {
      t.kind = ArtifactTensor::Kind::kFloat32;
      t.values = ToFloatVector(value);
    } else {
      const TernaryProjection p = Project(const_cast<Layer&>(*it->second));
      t.kind = ArtifactTensor::Kind::kTernary;
      t.granularity = options_.granularity;
      const at::Tensor codes = p.codes.detach().to(at::kCPU, at::kChar).contiguous();
      t.codes.assign(codes.data_ptr<int8_t>(), codes.data_ptr<int8_t>() + codes.numel());
      t.pos_scale = ToFloatVector(p.pos_scale);
      t.neg_scale = ToFloatVector(p.neg_scale);
    }
    artifact.tensors.push_back(std::move(t));
  };
  for (const auto& item : root_->named_parameters(true)) add(item.key(), item.value());
  for (const auto& item : root_->named_buffers(true)) add(item.key(), item.value());
  return artifact;
}

at::Tensor ArtifactTensorValue(const ArtifactTensor& t) {
  const auto float_opts = at::TensorOptions().dtype(at::kFloat);
  if (t.kind == ArtifactTensor::Kind::kFloat32) {
    return at::from_blob(const_cast<float*>(t.values.data()), t.shape, float_opts).clone();
  }
  const int64_t units = static_cast<int64_t>(t.pos_scale.size());
  const at::Tensor codes = at::from_blob(const_cast<int8_t*>(t.codes.data()), t.shape,
                                         at::TensorOptions().dtype(at::kChar))
                               .to(at::kFloat);
  const at::Tensor pos = at::from_blob(const_cast<float*>(t.pos_scale.data()), {units}, float_opts);
  const at::Tensor neg = at::from_blob(const_cast<float*>(t.neg_scale.data()), {units}, float_opts);
  return Dequantize(codes, pos, neg);  // a new tensor
}

Status LoadArtifactInto(const Artifact& artifact, torch::nn::Module& root) {
  at::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> targets;
  for (const auto& item : root.named_parameters(true)) targets[item.key()] = item.value();
  for (const auto& item : root.named_buffers(true)) targets[item.key()] = item.value();
  size_t loaded = 0;
  for (const ArtifactTensor& t : artifact.tensors) {
    auto it = targets.find(t.name);
    if (it == targets.end()) {
      return InvalidArgumentError("artifact tensor '" + t.name +
                                  "' has no counterpart in the model");
    }
    at::Tensor& target = it->second;
    if (target.sizes().vec() != t.shape) {
      return InvalidArgumentError("artifact tensor '" + t.name + "' has shape " +
                                  nlohmann::json(t.shape).dump() + ", model expects " +
                                  nlohmann::json(target.sizes().vec()).dump());
    }
    target.copy_(ArtifactTensorValue(t).to(target.device(), target.scalar_type()));
    ++loaded;
  }
  if (loaded != targets.size()) {
    for (const auto& [name, tensor] : targets) {
      (void)tensor;
      bool found = false;
      for (const ArtifactTensor& t : artifact.tensors) found |= t.name == name;
      if (!found) return InvalidArgumentError("model tensor '" + name + "' is missing from the artifact");
    }
  }
  return OkStatus();
}

}  // namespace tern::quant
