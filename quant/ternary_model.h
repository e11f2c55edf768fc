// TernaryModel: ternarizes the Conv2d and Linear layers of any torch::nn
// module tree in place, keeping the latent full-precision weights.
//
// How it works: each quantized layer's registered parameter "weight" stays the
// latent FP weight (the optimizer updates it, the state dict saves it). Before
// every forward, BeforeForward() points the layer's `weight` member, which its
// forward() reads, at the ternary weight Ŵ = α·T wired to the latent weight by
// the (re-scaled) straight-through gradient. So any model built from
// torch::nn::Conv2d / Linear works unchanged.
//
// Per step:
//   model.SetProgress(step / total_steps);  // phases, λ and κ schedules
//   model.BeforeForward();                   // ternary (or FP) weights
//   loss = task_loss + model.RegularizationLoss();
//   loss.backward(); (all-reduce gradients)
//   model.AfterBackward();                   // completes the gradients; LAT moments
//   optimizer.step();
//
// Quantizer state (second moments, TTQ scales) lives in state(), a
// torch::nn::Module to save with the model; TTQ's scales are in
// TrainableParameters() and must be given to the optimizer.
// Not thread-safe: drive it from the training thread.
#ifndef TERN_QUANT_TERNARY_MODEL_H_
#define TERN_QUANT_TERNARY_MODEL_H_

#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "quant/artifact.h"
#include "quant/options.h"
#include "quant/packed_projection.h"
#include "quant/ternary_ops.h"

namespace tern::quant {

// What one report says about one layer.
struct LayerStats {
  std::string name;          // module path, e.g. "layer1.0.conv1"
  bool quantized = false;    // false for layers kept FP
  int64_t numel = 0;
  double sparsity = 0;       // share of zero codes
  double alpha = 0;          // mean scale over units (and signs)
  double delta = 0;          // mean threshold over units
  double cos_wt = 0;         // mean per-unit cos(W, T)
  int64_t flips = 0;         // codes changed since the previous report
};

// The hyperspherical regularizer's effect at one step, per quantized layer
// (TernaryModel::AfterBackward(&sample); docs/METHOD.md, "Diagnostics").
struct RegularizerSample {
  struct Layer {
    std::string name;
    int64_t numel = 0;
    double cos_wt = 0;         // mean per-unit cos(W, T), the step's codes
    double reg_grad_norm = 0;  // ‖λ·∂R/∂W‖
    double grad_norm = 0;      // ‖∂L/∂W‖: the whole gradient the optimizer gets
  };
  double lambda = 0;
  std::vector<Layer> layers;

  // ‖λ·∂R/∂W‖ / ‖∂L/∂W‖ over all layers together (0 without a gradient).
  double RegGradShare() const;
  // cos(W, T) averaged over the layers, weighted by numel.
  double MeanCosine() const;
};

class TernaryModel {
 public:
  // Finds every Conv2d / Linear of `root` (in registration order; the first
  // of them is the "first" layer of keep_first_fp). keep_last_fp keeps the
  // `output_layers` (module paths, e.g. a detector's prediction convs) FP,
  // or the last layer found when the list is empty. Fails if the options are
  // invalid, an output layer is not a Conv2d / Linear of `root`, or the tree
  // has no such layer.
  static StatusOr<std::unique_ptr<TernaryModel>> Attach(
      std::shared_ptr<torch::nn::Module> root, const QuantOptions& options,
      const std::vector<std::string>& output_layers = {});

  const QuantOptions& options() const { return options_; }
  // The quantizer's own state; save and load it with the model.
  std::shared_ptr<torch::nn::Module> state() const { return state_; }
  // Call after loading state() from a checkpoint.
  void StateLoaded();
  // TTQ's learned scales (empty for other methods).
  std::vector<at::Tensor> TrainableParameters() const;

  // Sets the schedules from the fraction of training done, in [0, 1].
  void SetProgress(double progress);
  const ScheduleState& schedule() const { return schedule_; }

  // Installs the forward weights of every layer for the next forward.
  // Under at::NoGradGuard (evaluation) no autograd graph is built and the
  // projection is cached until a latent weight changes.
  void BeforeForward();

  // Points every layer at its latent FP weight (the "FP twin" evaluation).
  // The next BeforeForward() installs the scheduled weights again.
  void UseLatentWeights();

  // λ(t) · Σ_layers R(W_l) (a scalar; zero when the regularizer is off).
  // Call after BeforeForward(), which computes the codes it uses. Add it to
  // the loss: on the packed path (below) it is a constant for the loss's value
  // and its gradient is added by AfterBackward(); otherwise autograd carries
  // it.
  at::Tensor RegularizationLoss() const;

  // Completes the packed path's latent gradients (scales them by ρ, adds
  // λ·∂R/∂W; until then they hold ∂L/∂Ŵ), and updates the running second
  // moments of the gradients (LAT's D). Call once per step after backward
  // and the all-reduce, before anything reads the gradients, so every rank
  // holds the same state. A non-null `sample` also measures, per quantized
  // layer, cos(W, T) and the norms of λ·∂R/∂W and of the completed gradient
  // (a few reductions per layer and one device-to-host copy: call it every
  // N steps, not every step).
  void AfterBackward(RegularizerSample* sample = nullptr);

  // Training-mode BeforeForward() of the TWN and LAT projections (TWN, LAT,
  // HLA and its ablations; not TTQ) projects every layer at once with
  // PackedProjection (a fixed number of kernels per step instead of ~75 per
  // layer). On by default; off = the layer-by-layer reference path (tests
  // compare the two).
  void set_packed(bool packed) { packed_enabled_ = packed; }
  // The packed path's BeforeForward() and AfterBackward() run the fused
  // projection on float32 weights: the kernels of quant/cuda/fused_projection.h
  // on CUDA (builds with nvcc), the same arithmetic on the CPU.
  // On by default; off = PackedProjection's ATen kernels (benchmarks compare).
  void set_fused_projection(bool fused) { fused_projection_ = fused; }

  // The dtype the training forward consumes the quantized layers' weights in:
  // bf16 when it runs under bf16 autocast (and only then: the forward then
  // gets bf16 weights). The packed path writes Ŵ in it, which saves
  // autocast's cast of each quantized weight (one kernel per layer per step);
  // the gradient reaching the latent weights is the same. Default: the
  // weights' own dtype.
  void set_forward_dtype(at::ScalarType dtype) { forward_dtype_ = dtype; }

  // ---- CUDA-graph support (worker/trainer/step_graph.h) ----
  // A captured training step replays BeforeForward()'s kernels with the
  // arguments they had at capture, so everything that changes from step to
  // step must live in device memory:
  //  - set_device_scalars(true): κ and LAT's moment bias correction are read
  //    from 0-dim device tensors that SetProgress(), AfterBackward() and
  //    StateLoaded() refill (eager, between replays) when their values
  //    change. Off by default (up to two fill kernels per step).
  //  - StepStructure(): changes whenever the work of a training-mode
  //    BeforeForward() changes (phase, regularizer on/off, LAT moments
  //    present): the graph must then be captured again.
  //  - step_outputs(): the packed path's per-step results AfterBackward()
  //    consumes (ρ, λ·∂R/∂W's ∂R/∂W, Σ R); it clears them, and evaluation's
  //    BeforeForward() drops them. A replay rewrites the captured tensors in
  //    place, so the graph's owner keeps the ones the capture made and hands
  //    them back with set_step_outputs() before each AfterBackward().
  //  - last_forward_capturable(): whether the last training-mode
  //    BeforeForward() did only such work (the packed path, or latent weights
  //    installed as they are); false for TTQ and the layer-by-layer path,
  //    whose regularizer and ρ use host scalars inside autograd.
  struct StepOutputs {
    std::vector<at::Tensor> rho, reg_grad;
    at::Tensor reg_value;
  };
  void set_device_scalars(bool on);
  int64_t StepStructure() const;
  StepOutputs step_outputs() const { return {packed_rho_, packed_reg_grad_, packed_reg_value_}; }
  void set_step_outputs(const StepOutputs& outputs);
  bool last_forward_capturable() const { return last_forward_capturable_; }

  // Per-layer statistics; `reset_flips` starts a new flip-counting window.
  std::vector<LayerStats> Stats(bool reset_flips);

  // The ternary model as a packed artifact: quantized layers as codes and
  // scales, every other parameter and buffer of `root` as float32.
  Artifact Export(const std::string& architecture_json,
                  const std::string& metadata_json) const;

  ~TernaryModel();

 private:
  struct Layer;
  TernaryModel(std::shared_ptr<torch::nn::Module> root, QuantOptions options);
  TernaryProjection Project(Layer& layer) const;
  // False (nothing done) when the quantized layers do not share one device
  // and dtype: the per-layer path then runs.
  bool BeforeForwardPacked();
  void CompleteGradients();         // AfterBackward() without the sample
  double MomentCorrection() const;  // LAT: 1 − decay^steps
  void FillDeviceScalars();         // no-op unless set_device_scalars(true)

  std::shared_ptr<torch::nn::Module> root_;
  std::shared_ptr<torch::nn::Module> state_;
  QuantOptions options_;
  ScheduleState schedule_;
  std::vector<std::unique_ptr<Layer>> layers_;
  int64_t moment_steps_ = 0;
  bool packed_enabled_ = true;
  bool fused_projection_ = true;
  at::ScalarType forward_dtype_ = at::ScalarType::Undefined;
  std::unique_ptr<PackedProjection> packed_;
  std::vector<at::Tensor> packed_rho_;       // per quantized layer, this step
  std::vector<at::Tensor> packed_reg_grad_;  // per quantized layer, this step
  at::Tensor packed_reg_value_;              // Σ R, this step
  bool last_forward_capturable_ = false;
  at::Tensor kappa_scalar_, correction_scalar_;  // set_device_scalars(true)
  double filled_kappa_ = 0, filled_correction_ = 0;  // what they hold
};

// The float tensor an artifact tensor stands for (ternary codes dequantized
// with the training forward's arithmetic), as a new CPU tensor.
at::Tensor ArtifactTensorValue(const ArtifactTensor& tensor);

// Loads an artifact into a freshly built model of the same architecture:
// ternary tensors are dequantized (bit-identical to the training forward),
// float tensors copied. Fails naming the first missing, extra or mis-shaped
// tensor.
Status LoadArtifactInto(const Artifact& artifact, torch::nn::Module& root);

}  // namespace tern::quant

#endif  // TERN_QUANT_TERNARY_MODEL_H_
