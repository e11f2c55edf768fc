// The packed projection (all layers at once) against the layer-by-layer
// functions of ternary_ops.h, and TernaryModel's packed path against its
// reference path: same forward weights, losses and latent gradients.
#include "quant/packed_projection.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quant/autocast.h"
#include "quant/ternary_model.h"
#include "quant/ternary_ops.h"

namespace tern::quant {
namespace {

::testing::AssertionResult Close(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return ::testing::AssertionFailure() << "shapes differ";
  if (torch::allclose(a, b, 1e-5, 1e-6)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "max |a - b| = " << (a - b).abs().max().item<double>();
}

std::vector<at::Tensor> Weights(const std::vector<std::vector<int64_t>>& shapes,
                                bool channels_last) {
  torch::manual_seed(3);
  std::vector<at::Tensor> out;
  for (const auto& shape : shapes) {
    at::Tensor w = torch::randn(shape);
    if (channels_last && w.dim() == 4) w = w.contiguous(at::MemoryFormat::ChannelsLast);
    out.push_back(w);
  }
  return out;
}

// `lat`: the loss-aware projection with random second moments (else TWN). Both paths: the
// fused one (on the CPU: quant/fused_projection_reference.h) and ATen's.
void ExpectMatchesLayerByLayer(const std::vector<at::Tensor>& weights, Granularity g, bool rescale,
                               bool lat = false);
void ExpectPathMatchesLayerByLayer(const std::vector<at::Tensor>& weights, Granularity g,
                                   bool rescale, bool lat, bool fused) {
  SCOPED_TRACE(fused ? "fused path" : "ATen path");
  PackedProjection packed(weights, g);
  ASSERT_TRUE(packed.fused());
  PackedProjection::Options o;
  o.fused = fused;
  o.rescale = rescale;
  o.kappa = 12.0;
  o.with_regularizer = true;
  std::vector<at::Tensor> moments;
  if (lat) {
    o.lat_iterations = 3;
    o.moment_correction = 0.25;
    for (const at::Tensor& w : weights) moments.push_back(torch::rand_like(w) * 1e-3);
  }
  const PackedProjection::Output out = packed.Run(weights, o, moments);
  ASSERT_EQ(out.w_hat.size(), weights.size());
  {  // κ and the correction from 0-dim tensors (CUDA-graph mode) win over the doubles
    PackedProjection::Options from_tensors = o;
    from_tensors.kappa_tensor = torch::full({}, o.kappa);
    from_tensors.moment_correction_tensor = torch::full({}, o.moment_correction);
    from_tensors.kappa = 1e6;
    from_tensors.moment_correction = 1e-6;
    const PackedProjection::Output again = packed.Run(weights, from_tensors, moments);
    for (size_t i = 0; i < weights.size(); ++i) {
      EXPECT_TRUE(Close(again.rho[i], out.rho[i])) << "rho from tensors " << i;
      EXPECT_TRUE(Close(again.w_hat[i], out.w_hat[i])) << "w_hat from tensors " << i;
    }
  }
  double reg = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    const TernaryProjection p =
        lat ? ProjectLat(weights[i], (moments[i] / o.moment_correction).sqrt() + o.lat_epsilon, g,
                         o.lat_iterations, o.delta_factor)
            : ProjectTwn(weights[i], g, o.delta_factor);
    EXPECT_TRUE(Close(out.w_hat[i], Dequantize(p.codes, p.pos_scale, p.neg_scale))) << "w_hat " << i;
    // Each output keeps its weight's layout (channels_last included).
    EXPECT_EQ(out.w_hat[i].strides(), weights[i].strides()) << "w_hat " << i;
    EXPECT_EQ(out.rho[i].strides(), weights[i].strides()) << "rho " << i;
    EXPECT_EQ(out.reg_grad[i].strides(), weights[i].strides()) << "regularizer gradient " << i;
    EXPECT_TRUE(Close(out.rho[i], RescaleFactor(weights[i], p, g, rescale, o.beta, o.kappa,
                                                o.clip, o.normalize)))
        << "rho " << i;
    EXPECT_TRUE(Close(out.reg_grad[i], HypersphericalRegularizerGrad(weights[i], p.codes, g)))
        << "regularizer gradient " << i;
    reg += HypersphericalRegularizer(weights[i], p.codes, g).item<double>();
  }
  EXPECT_NEAR(out.reg_value.item<double>(), reg, 1e-5);
  EXPECT_EQ(out.unit_stats.defined(), fused);
}

void ExpectMatchesLayerByLayer(const std::vector<at::Tensor>& weights, Granularity g, bool rescale,
                               bool lat) {
  for (bool fused : {true, false}) ExpectPathMatchesLayerByLayer(weights, g, rescale, lat, fused);
}

TEST(PackedProjectionTest, EqualsLayerByLayerProjectionRhoAndRegularizer) {
  const std::vector<std::vector<int64_t>> shapes = {{8, 4, 3, 3}, {16, 8, 3, 3}, {6, 4, 1, 1}, {5, 12}};
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
    for (bool channels_last : {false, true}) {
      for (bool rescale : {false, true}) {
        for (bool lat : {false, true}) {
          SCOPED_TRACE(std::string(GranularityName(g)) + (channels_last ? " channels_last" : "") +
                       (rescale ? " rescale" : " clip only") + (lat ? " LAT" : " TWN"));
          ExpectMatchesLayerByLayer(Weights(shapes, channels_last), g, rescale, lat);
        }
      }
    }
  }
}

// MoveIn: the weights and moments become parts of the packed buffers (one storage each, their
// values and layouts unchanged), Run() reads their in-place updates without packing, and a
// weight given other storage is packed by copying until it is moved in again. Against a
// PackedProjection that packs copies of the same values every time, bit for bit, on both paths.
TEST(PackedProjectionTest, MoveInPacksNothingAndFollowsTheTensors) {
  const std::vector<std::vector<int64_t>> shapes = {{8, 4, 3, 3}, {6, 4, 1, 1}, {5, 12}};
  for (bool fused : {true, false}) {
    SCOPED_TRACE(fused ? "fused" : "ATen");
    std::vector<at::Tensor> weights = Weights(shapes, /*channels_last=*/true);
    std::vector<at::Tensor> moments;
    for (const at::Tensor& w : weights) moments.push_back(torch::rand_like(w) * 1e-3);
    const auto copies = [](const std::vector<at::Tensor>& tensors) {
      std::vector<at::Tensor> out;
      for (const at::Tensor& t : tensors) out.push_back(t.clone());
      return out;
    };
    std::vector<at::Tensor> weight_copies = copies(weights), moment_copies = copies(moments);
    PackedProjection moved(weights, Granularity::kChannel);
    PackedProjection copied(weight_copies, Granularity::kChannel);
    PackedProjection::Options o;
    o.lat_iterations = 2;
    o.moment_correction = 0.5;
    o.rescale = true;
    o.with_regularizer = true;
    o.fused = fused;
    const auto expect_same_outputs = [&]() {
      const PackedProjection::Output a = moved.Run(weights, o, moments);
      const PackedProjection::Output b = copied.Run(weight_copies, o, moment_copies);
      for (size_t k = 0; k < weights.size(); ++k) {
        EXPECT_TRUE(torch::equal(a.w_hat[k], b.w_hat[k])) << "w_hat " << k;
        EXPECT_TRUE(torch::equal(a.rho[k], b.rho[k])) << "rho " << k;
        EXPECT_TRUE(torch::equal(a.reg_grad[k], b.reg_grad[k])) << "reg_grad " << k;
      }
    };
    moved.MoveIn(weights, moments);
    for (size_t k = 0; k < weights.size(); ++k) {
      EXPECT_TRUE(weights[k].storage().is_alias_of(weights[0].storage())) << "weight " << k;
      EXPECT_TRUE(moments[k].storage().is_alias_of(moments[0].storage())) << "moment " << k;
      EXPECT_FALSE(weights[k].storage().is_alias_of(moments[0].storage()));
      EXPECT_TRUE(torch::equal(weights[k], weight_copies[k]));
      EXPECT_TRUE(torch::equal(moments[k], moment_copies[k]));
      EXPECT_EQ(weights[k].strides(), weight_copies[k].strides()) << "layout of weight " << k;
    }
    expect_same_outputs();
    {
      torch::NoGradGuard no_grad;  // an optimizer's in-place steps
      for (size_t k = 0; k < weights.size(); ++k) {
        const at::Tensor step = torch::randn_like(weights[k]) * 0.3;
        weights[k].add_(step);
        weight_copies[k].add_(step);
        moments[k].mul_(0.5);
        moment_copies[k].mul_(0.5);
      }
    }
    expect_same_outputs();
    const at::Tensor replacement = torch::randn_like(weights[1]);  // a load or .to()
    weights[1].set_data(replacement);
    weight_copies[1].set_data(replacement.clone());
    EXPECT_FALSE(weights[1].storage().is_alias_of(weights[0].storage()));
    expect_same_outputs();  // packed by copying
    moved.MoveIn(weights, moments);
    EXPECT_TRUE(weights[1].storage().is_alias_of(weights[0].storage()));
    EXPECT_TRUE(torch::equal(weights[1], replacement));
    expect_same_outputs();
  }
}

TEST(PackedProjectionTest, ChunksDivideEveryUnitEvenWhenLengthsAreCoprime) {
  const auto weights = Weights({{3, 7}, {2, 5}, {4, 3}}, false);
  PackedProjection per_channel(weights, Granularity::kChannel);
  EXPECT_EQ(per_channel.chunk_size(), 1);
  ExpectMatchesLayerByLayer(weights, Granularity::kChannel, true);
  ExpectMatchesLayerByLayer(weights, Granularity::kChannel, true, /*lat=*/true);
  const auto convs = Weights({{16, 8, 3, 3}, {32, 16, 3, 3}}, false);
  EXPECT_EQ(PackedProjection(convs, Granularity::kChannel).chunk_size(), 72);
  EXPECT_EQ(PackedProjection(convs, Granularity::kTensor).chunk_size(), 1152);
}

// A unit of zeros has no cosine with its (all-zero) codes: its regularizer
// gradient and term are 0, as in the layer-by-layer path, and nothing is NaN.
TEST(PackedProjectionTest, ZeroUnitsHaveZeroRegularizerGradient) {
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
    for (bool lat : {false, true}) {
      SCOPED_TRACE(std::string(GranularityName(g)) + (lat ? " LAT" : " TWN"));
      std::vector<at::Tensor> weights = Weights({{8, 4, 3, 3}, {6, 4, 1, 1}, {5, 12}}, false);
      weights[0][2].zero_();  // one zero output channel
      weights[2].zero_();     // a zero layer
      ExpectMatchesLayerByLayer(weights, g, /*rescale=*/true, lat);
      PackedProjection::Options o;
      o.with_regularizer = true;
      const PackedProjection::Output out = PackedProjection(weights, g).Run(weights, o);
      EXPECT_EQ(out.reg_grad[2].abs().max().item<double>(), 0.0);
      for (const at::Tensor& grad : out.reg_grad) EXPECT_TRUE(grad.isfinite().all().item<bool>());
      if (g == Granularity::kChannel) {
        EXPECT_EQ(out.reg_grad[0][2].abs().max().item<double>(), 0.0);
      }
    }
  }
}

TEST(PackedProjectionTest, RejectsWeightsOfAnotherShape) {
  const auto weights = Weights({{4, 2, 3, 3}}, false);
  PackedProjection packed(weights, Granularity::kTensor);
  EXPECT_TRUE(packed.Matches(weights));
  EXPECT_FALSE(packed.Matches(Weights({{4, 2, 1, 1}}, false)));
  EXPECT_FALSE(packed.Matches({}));
}

struct NetImpl : torch::nn::Module {
  NetImpl()
      : conv1(register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 6, 3).padding(1)))),
        bn1(register_module("bn1", torch::nn::BatchNorm2d(6))),
        conv2(register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(6, 12, 3).padding(1)))),
        conv3(register_module("conv3", torch::nn::Conv2d(torch::nn::Conv2dOptions(12, 12, 1)))),
        fc(register_module("fc", torch::nn::Linear(12 * 4 * 4, 3))) {}
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(bn1(conv1(x)));
    x = torch::relu(conv3(torch::relu(conv2(x))));
    return fc(torch::adaptive_avg_pool2d(x, {4, 4}).flatten(1));
  }
  torch::nn::Conv2d conv1;
  torch::nn::BatchNorm2d bn1;
  torch::nn::Conv2d conv2, conv3;
  torch::nn::Linear fc;
};
TORCH_MODULE(Net);

struct Step {
  double loss = 0;
  std::vector<at::Tensor> grads, forward_weights;
};

// How RunSteps drives the quantizer the way a CUDA-graph step does
// (worker/trainer/step_graph.h): κ and LAT's correction in device tensors,
// and the step's outputs kept aside while an evaluation forward runs between
// BeforeForward() and AfterBackward(), then handed back.
struct GraphLike {
  bool device_scalars = false;
  bool evaluate_between = false;
  // The forward under (CPU) bf16 autocast, as the trainer runs it on CUDA; with
  // bf16_w_hat the quantizer is told so (set_forward_dtype) and hands the
  // forward bf16 weights.
  bool bf16_autocast = false;
  bool bf16_w_hat = false;
};

// `steps` SGD steps (so LAT's second moments fill); the last one is returned.
// The schedule advances by 0.02 per step (κ anneals in phase 2).
// `fused`: the packed path's fused projection and gradient update (else its ATen kernels).
Step RunSteps(QuantOptions o, bool packed, double progress, bool channels_last, int steps = 3,
              GraphLike graph_like = {}, bool fused = true) {
  torch::manual_seed(11);
  Net net;
  auto q = TernaryModel::Attach(net.ptr(), o).value();
  q->set_packed(packed);
  q->set_fused_projection(fused);
  q->set_device_scalars(graph_like.device_scalars);
  if (graph_like.bf16_w_hat) q->set_forward_dtype(at::kBFloat16);
  torch::manual_seed(12);
  at::Tensor x = torch::randn({4, 1, 8, 8});
  if (channels_last) {
    for (auto& p : net->parameters()) {
      if (p.dim() == 4) p.set_data(p.data().contiguous(at::MemoryFormat::ChannelsLast));
    }
    x = x.contiguous(at::MemoryFormat::ChannelsLast);
  }
  const at::Tensor y = torch::randint(0, 3, {4});
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.05));
  Step s;
  for (int step = 0; step < steps; ++step) {
    q->SetProgress(progress + 0.02 * step);
    opt.zero_grad();
    q->BeforeForward();
    s.forward_weights = {net->conv1->weight.detach().clone(), net->conv2->weight.detach().clone(),
                         net->conv3->weight.detach().clone(), net->fc->weight.detach().clone()};
    at::Tensor logits;
    {
      Bf16Autocast autocast(at::kCPU, graph_like.bf16_autocast);
      logits = net->forward(x);
    }
    const at::Tensor loss =
        torch::cross_entropy_loss(logits.to(at::kFloat), y) + q->RegularizationLoss();
    loss.backward();
    if (graph_like.evaluate_between) {
      const TernaryModel::StepOutputs outputs = q->step_outputs();
      {
        torch::NoGradGuard no_grad;
        q->BeforeForward();  // evaluation: drops the step's outputs
        net->forward(x);
      }
      q->set_step_outputs(outputs);
    }
    q->AfterBackward();
    s.loss = loss.item<double>();
    s.grads.clear();
    for (const auto& p : net->parameters()) {
      s.grads.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());
    }
    if (step + 1 < steps) opt.step();
  }
  return s;
}

// Every parameter's gradient: defined in both or neither, and close.
void ExpectSameGradients(const Step& a, const Step& b) {
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i) {
    ASSERT_EQ(a.grads[i].defined(), b.grads[i].defined()) << "grad " << i;
    if (a.grads[i].defined()) {
      EXPECT_TRUE(Close(a.grads[i], b.grads[i])) << "grad " << i;
    }
  }
}

TEST(TernaryModelPackedTest, PackedStepEqualsLayerByLayerStep) {
  for (Method m : {Method::kTwn, Method::kLat, Method::kHla, Method::kHlaNoRescale,
                   Method::kHlaNoRegularizer}) {
    for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
      for (double progress : {0.1, 0.6}) {  // phase 1 (FP forward + R), phase 2
        for (bool channels_last : {false, true}) {
          QuantOptions o = MakePreset(m);
          o.granularity = g;
          o.keep_first_fp = o.keep_last_fp = false;
          const Step reference = RunSteps(o, false, progress, channels_last);
          for (bool fused : {true, false}) {
            SCOPED_TRACE(std::string(MethodName(m)) + " " + GranularityName(g) + " progress " +
                         std::to_string(progress) + (channels_last ? " channels_last" : "") +
                         (fused ? " fused" : " ATen"));
            const Step packed = RunSteps(o, true, progress, channels_last, 3, {}, fused);
            EXPECT_NEAR(packed.loss, reference.loss, 1e-5);
            for (size_t i = 0; i < packed.forward_weights.size(); ++i) {
              EXPECT_TRUE(Close(packed.forward_weights[i], reference.forward_weights[i]))
                  << "weight " << i;
            }
            ExpectSameGradients(packed, reference);
          }
        }
      }
    }
  }
}

// The CUDA-graph mode of TernaryModel, checked on the CPU: reading κ and the
// moment correction from device tensors, and handing the step's outputs back
// after an evaluation forward, give the step the plain packed path gives.
TEST(TernaryModelPackedTest, GraphModeStepEqualsThePlainPackedStep) {
  for (Method m : {Method::kTwn, Method::kLat, Method::kHla, Method::kHlaNoRegularizer}) {
    for (double progress : {0.1, 0.6}) {
      SCOPED_TRACE(std::string(MethodName(m)) + " progress " + std::to_string(progress));
      QuantOptions o = MakePreset(m);
      o.granularity = Granularity::kChannel;
      o.keep_first_fp = o.keep_last_fp = false;
      const Step graph_like = RunSteps(o, true, progress, false, 4, {true, true});
      const Step plain = RunSteps(o, true, progress, false, 4);
      EXPECT_NEAR(graph_like.loss, plain.loss, 1e-5);
      ExpectSameGradients(graph_like, plain);
    }
  }
}

// Under bf16 autocast, Ŵ written in bf16 by the projection gives the step
// autocast's own cast of a float Ŵ gives, to the bit: same rounding of α·T,
// same bf16 gradient cast back to float for the latent weights.
TEST(TernaryModelPackedTest, Bf16WeightsFromTheProjectionEqualAutocastsCast) {
  for (Method m : {Method::kTwn, Method::kHla}) {
    for (double progress : {0.1, 0.6}) {
      for (bool channels_last : {false, true}) {
        SCOPED_TRACE(std::string(MethodName(m)) + " progress " + std::to_string(progress) +
                     (channels_last ? " channels_last" : ""));
        QuantOptions o = MakePreset(m);
        o.granularity = Granularity::kChannel;
        o.keep_first_fp = o.keep_last_fp = false;
        GraphLike autocast_only;
        autocast_only.bf16_autocast = true;
        GraphLike bf16_w_hat = autocast_only;
        bf16_w_hat.bf16_w_hat = true;
        const Step reference = RunSteps(o, true, progress, channels_last, 3, autocast_only);
        const Step step = RunSteps(o, true, progress, channels_last, 3, bf16_w_hat);
        EXPECT_EQ(step.loss, reference.loss);
        const bool ternary_forward = m == Method::kTwn || progress > 0.5;  // HLA: phase 2
        for (size_t i = 0; i < step.forward_weights.size(); ++i) {
          const at::Tensor& w = step.forward_weights[i];
          EXPECT_EQ(w.scalar_type(), ternary_forward ? at::kBFloat16 : at::kFloat) << i;
          EXPECT_EQ(w.strides(), reference.forward_weights[i].strides()) << i;
          EXPECT_TRUE(torch::equal(w, reference.forward_weights[i].to(w.scalar_type())))
              << "weight " << i;
        }
        ASSERT_EQ(step.grads.size(), reference.grads.size());
        for (size_t i = 0; i < step.grads.size(); ++i) {
          ASSERT_EQ(step.grads[i].defined(), reference.grads[i].defined()) << i;
          if (!step.grads[i].defined()) continue;
          EXPECT_EQ(step.grads[i].scalar_type(), at::kFloat) << i;
          EXPECT_TRUE(torch::equal(step.grads[i], reference.grads[i])) << "grad " << i;
        }
      }
    }
  }
}

TEST(TernaryModelPackedTest, StepStructureAndCapturability) {
  Net net;
  QuantOptions o = MakePreset(Method::kLat);
  o.keep_first_fp = o.keep_last_fp = false;
  auto q = TernaryModel::Attach(net.ptr(), o).value();
  q->SetProgress(0.5);
  const int64_t before = q->StepStructure();
  q->BeforeForward();
  EXPECT_TRUE(q->last_forward_capturable());
  torch::cross_entropy_loss(net->forward(torch::randn({2, 1, 8, 8})), torch::tensor({0, 1}))
      .backward();
  q->AfterBackward();  // the first second moments: LAT's projection changes its work
  EXPECT_NE(q->StepStructure(), before);
  q->set_packed(false);  // the layer-by-layer path keeps ρ inside autograd
  q->BeforeForward();
  EXPECT_FALSE(q->last_forward_capturable());

  Net ttq_net;
  auto ttq = TernaryModel::Attach(ttq_net.ptr(), MakePreset(Method::kTtq)).value();
  ttq->BeforeForward();
  EXPECT_FALSE(ttq->last_forward_capturable());
  Net fp_net;
  auto fp = TernaryModel::Attach(fp_net.ptr(), MakePreset(Method::kFp)).value();
  fp->BeforeForward();
  EXPECT_TRUE(fp->last_forward_capturable());
}

// The quantized layers' latent weights (and LAT's moments) live in the packed buffer after the
// first packed BeforeForward(): one storage, which the optimizer's steps then update.
TEST(TernaryModelPackedTest, LatentWeightsLiveInThePackedBuffer) {
  Net net;
  QuantOptions o = MakePreset(Method::kHla);  // conv1 and fc stay FP
  auto q = TernaryModel::Attach(net.ptr(), o).value();
  q->SetProgress(0.6);
  // The registered parameters are the latent weights (BeforeForward() points the modules'
  // `weight` members at Ŵ).
  auto params = net->named_parameters();
  const at::Tensor conv1 = params["conv1.weight"], conv2 = params["conv2.weight"],
                   conv3 = params["conv3.weight"];
  const at::Tensor conv2_before = conv2.detach().clone();
  EXPECT_FALSE(conv2.storage().is_alias_of(conv3.storage()));
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
  q->BeforeForward();
  EXPECT_TRUE(conv2.storage().is_alias_of(conv3.storage()));
  EXPECT_FALSE(conv1.storage().is_alias_of(conv2.storage()));
  EXPECT_TRUE(torch::equal(conv2, conv2_before));
  torch::cross_entropy_loss(net->forward(torch::randn({2, 1, 8, 8})), torch::tensor({0, 1}))
      .backward();
  q->AfterBackward();
  opt.step();
  EXPECT_FALSE(torch::equal(conv2, conv2_before)) << "the optimizer's step";
  q->BeforeForward();
  EXPECT_TRUE(conv2.storage().is_alias_of(conv3.storage()));
}

// Layers of several dtypes cannot share one packed buffer: BeforeForward()
// falls back to the per-layer path instead of failing.
TEST(TernaryModelPackedTest, MixedDtypesFallBackToTheLayerByLayerPath) {
  Net packed_net, reference_net;
  torch::manual_seed(5);
  packed_net = Net();
  torch::manual_seed(5);
  reference_net = Net();
  packed_net->conv2->to(torch::kDouble);
  reference_net->conv2->to(torch::kDouble);
  QuantOptions o = MakePreset(Method::kHla);
  o.keep_first_fp = o.keep_last_fp = false;
  auto packed = TernaryModel::Attach(packed_net.ptr(), o).value();
  auto reference = TernaryModel::Attach(reference_net.ptr(), o).value();
  reference->set_packed(false);
  packed->SetProgress(0.6);
  reference->SetProgress(0.6);
  packed->BeforeForward();
  reference->BeforeForward();
  EXPECT_EQ(packed_net->conv2->weight.scalar_type(), torch::kDouble);
  EXPECT_TRUE(torch::equal(packed_net->conv2->weight, reference_net->conv2->weight));
  EXPECT_TRUE(torch::equal(packed_net->conv3->weight, reference_net->conv3->weight));
}

}  // namespace
}  // namespace tern::quant
