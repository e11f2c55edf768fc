// CUDA checks: every quantizer's forward/backward on the GPU equals the CPU
// result, NCCL at world size 1, a bf16 autocast step close to fp32, and a
// `.tern` trained on the GPU evaluating identically on the CPU, and pinned
// uint8 batches normalized on the GPU equal to the CPU loader's, and a
// CUDA-graph step training like the eager one (alone and inside
// RunTraining). Skipped (and reported as skipped) without a CUDA device.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "quant/autocast.h"
#include "quant/packed_projection.h"
#include "quant/ternary_model.h"
#include "worker/trainer/data.h"
#include "worker/trainer/distributed.h"
#include "worker/trainer/models.h"
#include "worker/trainer/multi_tensor_sgd.h"
#include "worker/trainer/spec.h"
#include "worker/trainer/step_graph.h"
#include "worker/trainer/trainer.h"

namespace tern {
namespace {

class GpuTest : public testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
    // CUDA fp32 convolutions and matmuls default to TF32 (10 mantissa bits)
    // on Ampere and newer: comparisons with the CPU need true fp32.
    tf32_cudnn_ = at::globalContext().allowTF32CuDNN();
    tf32_cublas_ = at::globalContext().allowTF32CuBLAS();
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  void TearDown() override {
    if (!torch::cuda::is_available()) return;
    at::globalContext().setAllowTF32CuDNN(tf32_cudnn_);
    at::globalContext().setAllowTF32CuBLAS(tf32_cublas_);
  }

 private:
  bool tf32_cudnn_ = true;
  bool tf32_cublas_ = true;
};

std::shared_ptr<trainer::Classifier> SmallResNet(uint64_t seed) {
  torch::manual_seed(seed);
  return trainer::BuildClassifier({"resnet20", 1, 10, 0.5}).value();
}

// Random BatchNorm scales, shifts and running statistics (the eval-mode
// forward uses the latter). The model's own initialization cannot be compared
// across devices: each block's last BN starts with γ = 0, so every block is an
// identity, and with one α per layer two output channels whose ternary rows
// are equal are equal to the last bit in exact arithmetic. A later ternary
// 1×1 shortcut that adds one and subtracts the other yields pre-activations
// that are exactly zero in exact arithmetic, whose computed sign (and ReLU
// mask) follows the summation order: measured on the CPU in float64, scaling
// the input by 1 + 1e-12 moved 17 of the 65 gradients (the strided blocks'
// shortcuts and the BN after them) by up to 3%, the same 17 that differed
// between the CPU and the H200 (2026-11-28) and between float32 and float64.
// Per-channel BN statistics break those equalities; the γ = 0 start also left
// every convolution inside the blocks without a gradient to compare.
void RandomizeBatchNorms(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  for (const auto& module : model.modules(/*include_self=*/false)) {
    if (auto* bn = module->as<torch::nn::BatchNorm2d>()) {
      bn->weight.uniform_(0.5, 1.5);
      bn->bias.normal_(0, 0.2);
      bn->running_mean.normal_(0, 0.2);
      bn->running_var.uniform_(0.5, 1.5);
    }
  }
}

struct LossAndGradients {
  double loss = 0;
  std::vector<at::Tensor> gradients;  // on the CPU, in parameters() order
};

// One float64 forward and backward of a ternary ResNet-20 ×0.5 (eval mode, the
// regularizer's gradient included) on `device`, the input scaled by
// `input_scale`; the same model, quantizer state and batch on every call.
LossAndGradients QuantizedLossAndGradients(quant::Method method, torch::Device device,
                                           double input_scale = 1.0) {
  auto model = SmallResNet(1);
  torch::manual_seed(7);
  RandomizeBatchNorms(*model);
  model->to(device, torch::kDouble);
  auto q = quant::TernaryModel::Attach(model, quant::MakePreset(method)).value();
  q->state()->to(device);
  q->SetProgress(0.6);
  torch::manual_seed(2);
  const at::Tensor x = torch::randn({8, 1, 28, 28}, torch::kDouble) * input_scale;
  const at::Tensor y = torch::randint(0, 10, {8}, torch::kLong);
  model->eval();  // BatchNorm running statistics: the same on every device
  q->BeforeForward();
  const at::Tensor loss =
      torch::cross_entropy_loss(model->forward(x.to(device)), y.to(device)) +
      q->RegularizationLoss();
  loss.backward();
  q->AfterBackward();  // the regularizer's gradient where it is applied there
  LossAndGradients out{loss.item<double>(), {}};
  for (const auto& p : model->parameters()) out.gradients.push_back(p.grad().cpu());
  return out;
}

constexpr quant::Method kTernaryMethods[] = {quant::Method::kTwn, quant::Method::kTtq,
                                             quant::Method::kLat, quant::Method::kHla};

// Runs without a GPU: the comparison below is only meaningful if rounding
// cannot move the gradients, and if it covers every parameter.
TEST(QuantizerComparisonSetUpTest, GradientsAreNonzeroAndInsensitiveToRounding) {
  const torch::Device cpu(torch::kCPU);
  for (quant::Method m : kTernaryMethods) {
    const LossAndGradients a = QuantizedLossAndGradients(m, cpu);
    const LossAndGradients b = QuantizedLossAndGradients(m, cpu, 1 + 1e-12);
    for (size_t i = 0; i < a.gradients.size(); ++i) {
      const at::Tensor& ga = a.gradients[i];
      const at::Tensor& gb = b.gradients[i];
      EXPECT_GT(ga.abs().max().item<double>(), 0)
          << quant::MethodName(m) << " parameter " << i << " has no gradient";
      EXPECT_TRUE(torch::allclose(ga, gb, 1e-8, 1e-12))
          << quant::MethodName(m) << " parameter " << i << ": the input scaled by 1 + 1e-12 moves "
          << "its gradient by " << (ga - gb).abs().max().item<double>() << " (max "
          << ga.abs().max().item<double>() << "): a tie decides a ReLU mask";
    }
  }
}

TEST_F(GpuTest, EveryQuantizerMatchesCpuForwardAndBackward) {
  for (quant::Method m : kTernaryMethods) {
    const LossAndGradients c = QuantizedLossAndGradients(m, torch::Device(torch::kCPU));
    const LossAndGradients g = QuantizedLossAndGradients(m, torch::Device(torch::kCUDA));
    EXPECT_NEAR(c.loss, g.loss, 1e-9) << quant::MethodName(m);
    ASSERT_EQ(c.gradients.size(), g.gradients.size());
    for (size_t i = 0; i < c.gradients.size(); ++i) {
      const at::Tensor& a = c.gradients[i];
      const at::Tensor& b = g.gradients[i];
      EXPECT_TRUE(torch::allclose(a, b, 1e-6, 1e-9))
          << quant::MethodName(m) << " parameter " << i << ": max |cpu - gpu| "
          << (a - b).abs().max().item<double>() << ", max |cpu| " << a.abs().max().item<double>();
    }
  }
}

TEST_F(GpuTest, NcclAtWorldSizeOneAllReducesAndBroadcasts) {
#ifndef TERN_WITH_NCCL
  GTEST_SKIP() << "this LibTorch has no NCCL";
#else
  trainer::DistributedOptions o;
  o.backend = "nccl";
  o.master_port = trainer::PickFreePort().value();
  o.connect_alone = true;
  auto comm = trainer::Communicator::Connect(o);
  ASSERT_TRUE(comm.ok()) << comm.status();
  ASSERT_TRUE((*comm)->connected()) << "connect_alone builds a process group at world size 1";
  // At world size 1 a mean and a broadcast are identities, so values alone
  // cannot tell a real collective from a skipped one: distinct values per
  // element (a wrong bucket offset would move them) must come back bit for
  // bit, and the collectives must reach NCCL, which refuses CPU tensors (a
  // call that skipped the process group would return OK).
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  std::vector<at::Tensor> tensors = {torch::arange(1000, cuda.dtype(torch::kFloat)) * 0.37f,
                                     torch::arange(12, cuda.dtype(torch::kFloat)).reshape({3, 4}),
                                     torch::full({5}, 3.0f, cuda)};
  std::vector<at::Tensor> expected;
  for (const auto& t : tensors) expected.push_back(t.cpu().clone());
  ASSERT_TRUE((*comm)->AllReduceMean(tensors).ok());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_TRUE(tensors[i].is_cuda());
    EXPECT_TRUE(torch::equal(tensors[i].cpu(), expected[i])) << "tensor " << i;
  }
  ASSERT_TRUE((*comm)->Broadcast(tensors, 0).ok());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_TRUE(torch::equal(tensors[i].cpu(), expected[i])) << "broadcast, tensor " << i;
  }
  at::Tensor sum = torch::full({7}, 2.5f, cuda);
  ASSERT_TRUE((*comm)->AllReduceSum(sum).ok());
  EXPECT_TRUE(torch::equal(sum.cpu(), torch::full({7}, 2.5f)));
  ASSERT_TRUE((*comm)->Barrier().ok());
  at::Tensor on_cpu = torch::ones({4});
  EXPECT_FALSE((*comm)->AllReduceMean({on_cpu}).ok()) << "the all-reduce never reached NCCL";
  EXPECT_FALSE((*comm)->Broadcast({on_cpu}, 0).ok()) << "the broadcast never reached NCCL";
#endif
}

TEST_F(GpuTest, Bf16AutocastStepLossMatchesFp32) {
  auto model = SmallResNet(3);
  model->to(torch::kCUDA);
  auto q = quant::TernaryModel::Attach(model, quant::MakePreset(quant::Method::kHla)).value();
  q->state()->to(torch::kCUDA);
  q->SetProgress(0.5);
  torch::manual_seed(4);
  const at::Tensor x = torch::randn({64, 1, 28, 28}, torch::kCUDA);
  // C++ factories default to float; class labels must be int64.
  const at::Tensor y = torch::randint(0, 10, {64}, torch::dtype(torch::kLong).device(torch::kCUDA));
  model->eval();
  q->BeforeForward();
  const double fp32 = torch::cross_entropy_loss(model->forward(x), y).item<double>();
  q->BeforeForward();
  at::Tensor logits, loss;
  {
    quant::Bf16Autocast autocast(at::kCUDA, true);
    logits = model->forward(x);
    loss = torch::cross_entropy_loss(logits.to(torch::kFloat), y);
  }
  loss.backward();
  EXPECT_EQ(logits.scalar_type(), torch::kBFloat16);
  // bf16 keeps 8 significant bits (0.4% per rounding); through 20 layers the
  // roundings add up to a few percent: a 5% relative tolerance on the loss.
  const double bf16 = loss.item<double>();
  std::cout << "loss fp32 " << fp32 << ", bf16 autocast " << bf16 << "\n";
  EXPECT_NEAR(bf16, fp32, 0.05 * fp32);
}

// The trainer's bf16 path: the packed projection writes Ŵ in bf16
// (set_forward_dtype) instead of autocast casting a float Ŵ per layer. The
// bf16 weights are the cast's to the bit; the loss and latent gradients are
// too, unless the reference itself differs between two runs (then within that
// run-to-run difference).
TEST_F(GpuTest, Bf16WeightsFromTheProjectionMatchAutocastsCast) {
  const bool benchmark = at::globalContext().benchmarkCuDNN();
  const bool deterministic = at::globalContext().deterministicCuDNN();
  at::globalContext().setBenchmarkCuDNN(false);
  at::globalContext().setDeterministicCuDNN(true);
  struct Result {
    double loss = 0;
    std::vector<at::Tensor> grads, bf16_weights;
  };
  auto run = [](bool bf16_w_hat) {
    auto model = SmallResNet(5);
    model->to(torch::kCUDA);
    auto q = quant::TernaryModel::Attach(model, quant::MakePreset(quant::Method::kHla)).value();
    q->state()->to(torch::kCUDA);
    if (bf16_w_hat) q->set_forward_dtype(torch::kBFloat16);
    q->SetProgress(0.6);  // phase 2: the ternary forward
    model->train();
    torch::manual_seed(6);
    const at::Tensor x = torch::randn({32, 1, 28, 28}, torch::kCUDA);
    const at::Tensor y =
        torch::randint(0, 10, {32}, torch::dtype(torch::kLong).device(torch::kCUDA));
    q->BeforeForward();
    Result r;
    for (const auto& m : model->modules(/*include_self=*/false)) {
      if (auto* conv = m->as<torch::nn::Conv2dImpl>()) {
        if (conv->weight.scalar_type() == torch::kBFloat16) {
          r.bf16_weights.push_back(conv->weight.detach().cpu());
        }
      }
    }
    at::Tensor loss;
    {
      quant::Bf16Autocast autocast(at::kCUDA, true);
      loss = torch::cross_entropy_loss(model->forward(x).to(torch::kFloat), y);
    }
    loss.backward();
    q->AfterBackward();
    r.loss = loss.item<double>();
    for (const auto& p : model->parameters()) {
      r.grads.push_back(p.grad().defined() ? p.grad().cpu() : at::Tensor());
    }
    return r;
  };
  const Result reference = run(false);
  const Result again = run(false);
  const Result step = run(true);
  EXPECT_TRUE(reference.bf16_weights.empty());
  EXPECT_GE(step.bf16_weights.size(), 18u) << "every quantized convolution gets bf16 weights";
  ASSERT_EQ(step.grads.size(), reference.grads.size());
  bool reproducible = reference.loss == again.loss;
  for (size_t i = 0; i < reference.grads.size(); ++i) {
    if (reference.grads[i].defined()) {
      reproducible = reproducible && torch::equal(reference.grads[i], again.grads[i]);
    }
  }
  std::cout << "reference reproducible to the bit: " << (reproducible ? "yes" : "no") << "\n";
  if (reproducible) {
    EXPECT_EQ(step.loss, reference.loss);
  } else {
    EXPECT_LE(std::abs(step.loss - reference.loss),
              2 * std::abs(again.loss - reference.loss) + 1e-6);
  }
  for (size_t i = 0; i < step.grads.size(); ++i) {
    ASSERT_EQ(step.grads[i].defined(), reference.grads[i].defined()) << i;
    if (!step.grads[i].defined()) continue;
    EXPECT_EQ(step.grads[i].scalar_type(), torch::kFloat) << i;
    if (reproducible) {
      EXPECT_TRUE(torch::equal(step.grads[i], reference.grads[i])) << "grad " << i;
    } else {
      const double noise = (again.grads[i] - reference.grads[i]).abs().max().item<double>();
      const double diff = (step.grads[i] - reference.grads[i]).abs().max().item<double>();
      EXPECT_LE(diff, 2 * noise + 1e-6) << "grad " << i;
    }
  }
  at::globalContext().setBenchmarkCuDNN(benchmark);
  at::globalContext().setDeterministicCuDNN(deterministic);
}

// The fused CUDA projection (quant/cuda/fused_projection.h) inside PackedProjection against
// PackedProjection's ATen kernels on the same GPU: every projection TernaryModel runs, per
// tensor and per channel, odd sizes and channels_last, Ŵ in float32 and bf16. The two sum in
// different orders (fp32 chunk sums against double lane sums), hence 1e-5 relative, as the
// CPU tests of the ATen path allow; bf16 Ŵ within one bf16 rounding (2^-8).
TEST_F(GpuTest, FusedProjectionMatchesTheAtenPath) {
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  torch::manual_seed(21);
  std::vector<at::Tensor> weights = {
      torch::randn({3, 5, 7, 7}, cuda), torch::randn({4, 1, 1, 1}, cuda),
      torch::randn({67, 33, 3, 3}, cuda).contiguous(at::MemoryFormat::ChannelsLast),
      torch::randn({5, 12}, cuda)};
  std::vector<at::Tensor> moments;
  for (const at::Tensor& w : weights) moments.push_back(torch::rand_like(w) * 1e-3);
  struct Config {
    const char* name;
    int lat_iterations;
    bool moments, rescale, regularizer;
  };
  const Config configs[] = {{"twn", 0, false, false, false},
                            {"lat", 3, true, false, false},
                            {"lat first step", 3, false, false, false},
                            {"hla", 3, true, true, true},
                            {"hla_no_regularizer", 3, true, true, false},
                            {"hla_no_rescale", 3, true, false, true}};
  for (quant::Granularity g : {quant::Granularity::kTensor, quant::Granularity::kChannel}) {
    quant::PackedProjection packed(weights, g);
    ASSERT_TRUE(packed.fused()) << "this CUDA build has no fused projection (nvcc not found?)";
    for (const Config& c : configs) {
      for (bool bf16 : {false, true}) {
        SCOPED_TRACE(std::string(c.name) + " " + quant::GranularityName(g) + (bf16 ? " bf16" : ""));
        quant::PackedProjection::Options o;
        o.lat_iterations = c.lat_iterations;
        o.moment_correction = 0.25;
        o.rescale = c.rescale;
        o.kappa = 12.0;
        o.with_regularizer = c.regularizer;
        if (bf16) o.w_hat_dtype = at::kBFloat16;
        const std::vector<at::Tensor> m = c.moments ? moments : std::vector<at::Tensor>();
        const quant::PackedProjection::Output fused = packed.Run(weights, o, m);
        o.fused = false;
        const quant::PackedProjection::Output aten = packed.Run(weights, o, m);
        ASSERT_TRUE(fused.unit_stats.defined());
        ASSERT_FALSE(aten.unit_stats.defined());
        for (size_t k = 0; k < weights.size(); ++k) {
          EXPECT_EQ(fused.w_hat[k].strides(), weights[k].strides()) << k;
          EXPECT_EQ(fused.w_hat[k].scalar_type(), aten.w_hat[k].scalar_type()) << k;
          EXPECT_TRUE(torch::allclose(fused.w_hat[k].to(at::kFloat), aten.w_hat[k].to(at::kFloat),
                                      bf16 ? 1e-2 : 1e-5, bf16 ? 0 : 1e-6))
              << "w_hat " << k;
          EXPECT_TRUE(torch::allclose(fused.rho[k], aten.rho[k], 1e-5, 1e-6)) << "rho " << k;
          if (c.regularizer) {
            EXPECT_TRUE(torch::allclose(fused.reg_grad[k], aten.reg_grad[k], 1e-5, 1e-6))
                << "reg_grad " << k;
          }
        }
        if (c.regularizer) {
          EXPECT_NEAR(fused.reg_value.item<double>(), aten.reg_value.item<double>(), 1e-5);
        }
      }
    }
  }
}

// TernaryModel with the fused projection and gradient update, against its ATen kernels: HLA
// and LAT steps on a float32 ResNet-20 ×0.5 on the GPU (SGD between steps, so LAT's moments
// and the regularizer take part), the same loss and latent gradients (deterministic cuDNN: only
// the projection's summation order differs).
TEST_F(GpuTest, FusedTernaryModelStepMatchesTheAtenStep) {
  const bool deterministic = at::globalContext().deterministicCuDNN();
  at::globalContext().setDeterministicCuDNN(true);
  auto run = [](quant::Method method, bool fused) {
    auto model = SmallResNet(3);
    torch::manual_seed(7);
    RandomizeBatchNorms(*model);
    model->to(torch::kCUDA);
    quant::QuantOptions o = quant::MakePreset(method);
    o.granularity = quant::Granularity::kChannel;
    auto q = quant::TernaryModel::Attach(model, o).value();
    q->state()->to(torch::kCUDA);
    q->set_fused_projection(fused);
    torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.05));
    torch::manual_seed(2);
    const at::Tensor x = torch::randn({8, 1, 28, 28}).cuda();
    const at::Tensor y = torch::randint(0, 10, {8}, torch::kLong).cuda();
    model->eval();
    LossAndGradients out;
    for (int step = 0; step < 2; ++step) {  // the second with LAT's moments
      q->SetProgress(0.6 + 0.02 * step);
      opt.zero_grad();
      q->BeforeForward();
      const at::Tensor loss =
          torch::cross_entropy_loss(model->forward(x), y) + q->RegularizationLoss();
      loss.backward();
      q->AfterBackward();
      out.loss = loss.item<double>();
      if (step == 0) opt.step();
    }
    for (const auto& p : model->parameters()) out.gradients.push_back(p.grad().cpu());
    return out;
  };
  for (quant::Method m : {quant::Method::kLat, quant::Method::kHla}) {
    const LossAndGradients fused = run(m, true);
    const LossAndGradients aten = run(m, false);
    EXPECT_NEAR(fused.loss, aten.loss, 1e-5) << quant::MethodName(m);
    ASSERT_EQ(fused.gradients.size(), aten.gradients.size());
    for (size_t i = 0; i < fused.gradients.size(); ++i) {
      EXPECT_TRUE(torch::allclose(fused.gradients[i], aten.gradients[i], 1e-4, 1e-6))
          << quant::MethodName(m) << " parameter " << i << ": max |fused - aten| "
          << (fused.gradients[i] - aten.gradients[i]).abs().max().item<double>();
    }
  }
  at::globalContext().setDeterministicCuDNN(deterministic);
}

TEST_F(GpuTest, ArtifactTrainedOnGpuEvaluatesIdenticallyOnCpu) {
  auto model = SmallResNet(5);
  model->to(torch::kCUDA);
  auto q = quant::TernaryModel::Attach(model, quant::MakePreset(quant::Method::kHla)).value();
  q->state()->to(torch::kCUDA);
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  torch::manual_seed(6);
  const at::Tensor x = torch::randn({32, 1, 28, 28}, torch::kCUDA);
  const at::Tensor y = torch::randint(0, 10, {32}, torch::dtype(torch::kLong).device(torch::kCUDA));
  for (int step = 0; step < 10; ++step) {
    q->SetProgress(0.5 + step * 0.05);
    q->BeforeForward();
    at::Tensor loss = torch::cross_entropy_loss(model->forward(x), y) + q->RegularizationLoss();
    opt.zero_grad();
    loss.backward();
    q->AfterBackward();
    opt.step();
  }
  const quant::Artifact artifact =
      quant::ParseArtifact(quant::SerializeArtifact(q->Export("{}", "{}"))).value();
  // The same artifact loaded on both devices: the predictions agree.
  auto on_gpu = SmallResNet(7);
  auto on_cpu = SmallResNet(8);
  ASSERT_TRUE(quant::LoadArtifactInto(artifact, *on_cpu).ok());
  on_gpu->to(torch::kCUDA);
  ASSERT_TRUE(quant::LoadArtifactInto(artifact, *on_gpu).ok());
  on_cpu->eval();
  on_gpu->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor xs = torch::randn({256, 1, 28, 28});
  const at::Tensor a = on_cpu->forward(xs);
  const at::Tensor b = on_gpu->forward(xs.cuda()).cpu();
  EXPECT_TRUE(torch::equal(a.argmax(1), b.argmax(1)));
  // The same weights; only the devices' fp32 kernels differ. The tolerance
  // is far above what they should give: the measured difference is printed
  // so that a GPU run can tighten it (issue 34).
  const double worst = (a - b).abs().max().item<double>();
  std::cout << "CPU vs GPU logits of one artifact: max |difference| " << worst << " (of max |logit| "
            << a.abs().max().item<double>() << ")\n";
  EXPECT_TRUE(torch::allclose(a, b, 1e-3, 1e-3)) << "max |difference| " << worst;
}

TEST_F(GpuTest, PinnedByteBatchesNormalizedOnGpuEqualCpuBatches) {
  const trainer::ImageDataset data = trainer::MakeSyntheticDataset(64, 32, 9);
  const trainer::Normalization norm = trainer::ComputeMeanStd(data);
  trainer::ShardedSampler sampler(64, 16, 0, 1, 9, true);
  trainer::BatchFormat gpu_format;
  gpu_format.raw_bytes = gpu_format.pin_memory = true;
  trainer::BatchLoader cpu_loader(data, sampler, norm, {}, /*train=*/true, 9, 1, 2);
  trainer::BatchLoader gpu_loader(data, sampler, norm, {}, /*train=*/true, 9, 2, 2, gpu_format);
  const trainer::NormalizationTensors t =
      trainer::MakeNormalizationTensors(norm, 3, torch::Device(torch::kCUDA));
  cpu_loader.StartEpoch(1);
  gpu_loader.StartEpoch(1);
  int batches = 0;
  while (std::optional<trainer::Batch> a = cpu_loader.Next()) {
    std::optional<trainer::Batch> b = gpu_loader.Next();
    ASSERT_TRUE(b.has_value());
    EXPECT_TRUE(b->images.is_pinned());
    EXPECT_EQ(b->images.scalar_type(), torch::kByte);
    const at::Tensor on_gpu = trainer::NormalizeBatch(b->images.to(torch::kCUDA, true), t);
    EXPECT_TRUE(on_gpu.is_cuda());
    EXPECT_LT((on_gpu.cpu() - a->images).abs().max().item<float>(), 1e-5);
    ++batches;
  }
  EXPECT_EQ(batches, 4);
}

struct GraphedRun {
  std::vector<double> losses;
  std::vector<at::Tensor> state;  // parameters and buffers, on the CPU
  int64_t captures = 0, replays = 0;
};

// HLA on a small ResNet for 12 steps, phase 2 from the 4th, with an
// evaluation forward (as at an epoch's end) in the middle. Graphed: through
// StepGraph (3 eager warm-up steps, a capture, a re-capture when the phase
// changes, replays), driving TernaryModel as trainer.cc does.
GraphedRun TrainSmallHla(bool graphed) {
  auto model = SmallResNet(4);
  model->to(torch::kCUDA);
  quant::QuantOptions o = quant::MakePreset(quant::Method::kHla);
  auto q = quant::TernaryModel::Attach(model, o).value();
  q->state()->to(torch::kCUDA);
  q->set_device_scalars(true);  // both sides: isolates the graph itself
  std::vector<at::Tensor> params = model->parameters();
  trainer::MultiTensorSgd opt(
      params, torch::optim::SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(5e-4));
  const int steps = 12;
  torch::manual_seed(5);
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  const at::Tensor xs = torch::randn({steps, 16, 1, 28, 28}, cuda);
  const at::Tensor ys = torch::randint(0, 10, {steps, 16}, cuda.dtype(torch::kLong));
  at::Tensor x = xs[0].clone(), y = ys[0].clone();  // the static inputs
  std::unique_ptr<trainer::StepGraph> graph;
  if (graphed) graph = trainer::StepGraph::Create(torch::Device(torch::kCUDA, 0), params).value();
  quant::TernaryModel::StepOutputs captured;
  GraphedRun run;
  for (int step = 0; step < steps; ++step) {
    q->SetProgress(static_cast<double>(step) / steps);
    x.copy_(xs[step]);
    y.copy_(ys[step]);
    auto body = [&] {
      q->BeforeForward();
      at::Tensor loss = torch::cross_entropy_loss(model->forward(x), y);
      loss.backward();
      return loss.detach();
    };
    at::Tensor loss;
    if (graphed) {
      auto result = graph->Run(q->StepStructure(), body);
      EXPECT_TRUE(result.ok()) << result.status();
      if (!result.ok()) return run;
      if (result->kind == trainer::StepGraph::RunKind::kReplayed) {
        q->set_step_outputs(captured);
      } else {
        EXPECT_TRUE(q->last_forward_capturable());
        captured = q->step_outputs();
      }
      loss = result->value.clone();
    } else {
      opt.zero_grad();
      loss = body();
    }
    q->AfterBackward();
    opt.step();
    run.losses.push_back(loss.item<double>());
    if (step == 7) {  // an evaluation between steps drops the step's outputs
      torch::NoGradGuard no_grad;
      model->eval();
      q->BeforeForward();
      model->forward(x);
      model->train();
    }
  }
  for (const auto& p : model->parameters()) run.state.push_back(p.detach().cpu());
  for (const auto& b : model->buffers()) run.state.push_back(b.detach().cpu());
  if (graph != nullptr) {
    run.captures = graph->captures();
    run.replays = graph->replays();
  }
  return run;
}

TEST_F(GpuTest, CudaGraphStepTrainsLikeTheEagerStep) {
  const bool deterministic = at::globalContext().deterministicCuDNN();
  at::globalContext().setDeterministicCuDNN(true);  // same kernels on both sides
  const GraphedRun eager = TrainSmallHla(false);
  const GraphedRun graphed = TrainSmallHla(true);
  at::globalContext().setDeterministicCuDNN(deterministic);
  // Warm-up 0-2 (λ and LAT's moments switch on at step 1, inside it),
  // capture at 3 (phase 1); phase 2 from step 4: eager 4, capture 5, replays
  // to the end: 2 captures, 1 + 1 + 6 replays.
  EXPECT_EQ(graphed.captures, 2);
  EXPECT_EQ(graphed.replays, 8);
  ASSERT_EQ(graphed.losses.size(), eager.losses.size());
  for (size_t i = 0; i < eager.losses.size(); ++i) {
    EXPECT_NEAR(graphed.losses[i], eager.losses[i], 1e-4 * std::abs(eager.losses[i]) + 1e-6)
        << "step " << i;
  }
  ASSERT_EQ(graphed.state.size(), eager.state.size());
  double worst = 0;
  for (size_t i = 0; i < eager.state.size(); ++i) {
    if (eager.state[i].is_floating_point()) {
      worst = std::max(worst, (graphed.state[i] - eager.state[i]).abs().max().item<double>());
    }
  }
  std::cout << "graphed vs eager state after 12 steps: max |difference| " << worst << "\n";
  for (size_t i = 0; i < eager.state.size(); ++i) {
    if (!eager.state[i].is_floating_point()) {
      EXPECT_TRUE(torch::equal(graphed.state[i], eager.state[i])) << "buffer " << i;
      continue;
    }
    EXPECT_TRUE(torch::allclose(graphed.state[i], eager.state[i], 1e-4, 1e-5))
        << "tensor " << i << ": max |difference| "
        << (graphed.state[i] - eager.state[i]).abs().max().item<double>();
  }
}

// The whole trainer with optimization.cuda_graph against the eager trainer:
// the first 4096 Fashion-MNIST images, same seed, deterministic kernels,
// fp32; the re-loaded artifacts' test metrics agree closely (not exactly: the
// graphed step reads κ from device memory and differentiates the task loss
// alone, adding the regularizer's gradient afterwards). The graphed trainer
// runs twice: alone, and with an NCCL process group at world size 1 and a
// rendezvous key, as the service runs a job (the gradient all-reduce between
// replays; first on a GPU after 2026-11-28).
TEST_F(GpuTest, TrainerWithCudaGraphMatchesTheEagerTrainer) {
  const char* env = std::getenv("TERN_E2E_FASHION_MNIST");
  const std::string data = env != nullptr ? env : "/usr/share/datasets/fashion-mnist";
  if (!std::filesystem::exists(data + "/train-images-idx3-ubyte.gz") &&
      !std::filesystem::exists(data + "/train-images-idx3-ubyte")) {
    GTEST_SKIP() << "no Fashion-MNIST at " << data << " (TERN_E2E_FASHION_MNIST): skipped";
  }
  // `nccl`: with an NCCL process group at world size 1 (its gradient
  // all-reduce runs eagerly between replays) and a rendezvous key (the
  // service's PrefixStore), as a job of the service runs.
  auto train = [&](bool cuda_graph, bool nccl) -> nlohmann::json {
    const std::string dir = testing::TempDir() + "/cuda_graph_" + (cuda_graph ? "on" : "off") +
                            (nccl ? "_nccl" : "");
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    auto spec = trainer::ParseTrainerSpec(nlohmann::json{
        {"name", "graph"},
        {"model", {{"arch", "resnet20"}, {"width_multiplier", 0.5}}},
        {"dataset", {{"kind", "DATASET_IDX"}, {"path", data},
                     {"max_train_examples", 4096}, {"max_eval_examples", 1000}}},
        {"optimization", {{"epochs", 2}, {"batch_size", 128}, {"deterministic", true},
                          {"bf16", false}, {"cuda_graph", cuda_graph}}},
        {"resources", {{"device_kind", "DEVICE_CUDA"}}},
        {"checkpoint", {{"every_steps", 1000}}}}.dump());
    EXPECT_TRUE(spec.ok()) << spec.status();
    if (!spec.ok()) return {};
    trainer::RunOptions options;
    options.workdir = dir;
    if (nccl) {
      options.always_connect = true;
      options.master_port = trainer::PickFreePort().value();
      options.rendezvous_key = "00112233445566778899aabbccddeeff";
    }
    std::FILE* events_file = std::fopen((dir + "/events.jsonl").c_str(), "w");
    trainer::EventWriter events("graph", 0, 1, events_file);
    auto result = trainer::RunTraining(*spec, options, events);
    std::fclose(events_file);
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return {};
    // The graphed run really replayed: its progress events count replays.
    int64_t replays = -1;
    std::string process_group;
    std::ifstream lines(dir + "/events.jsonl");
    for (std::string line; std::getline(lines, line);) {
      const nlohmann::json e = nlohmann::json::parse(line, nullptr, false);
      if (e.is_object() && e.value("event", "") == "progress") {
        replays = e.value("cuda_graph_replays", int64_t{-1});
      }
      if (e.is_object() && e.value("event", "") == "started") {
        process_group = e.value("process_group", "");
      }
    }
    EXPECT_EQ(process_group, nccl ? "nccl" : "none");
    if (cuda_graph) {
      EXPECT_GT(replays, 50) << "of 64 steps";
    } else {
      EXPECT_EQ(replays, -1) << "an eager run reports no CUDA graph";
    }
    std::cout << (cuda_graph ? "graphed" : "eager") << (nccl ? " with NCCL" : "") << ": "
              << result->artifact.dump() << ", "
              << result->images_per_second << " img/s\n";
    return result->artifact;
  };
  const nlohmann::json eager = train(false, false);
  std::vector<bool> with_nccl = {false};
#ifdef TERN_WITH_NCCL
  with_nccl.push_back(true);
#endif
  for (bool nccl : with_nccl) {
    const nlohmann::json graphed = train(true, nccl);
    ASSERT_TRUE(eager.contains("loss") && graphed.contains("loss")) << "nccl " << nccl;
    EXPECT_NEAR(graphed["loss"].get<double>(), eager["loss"].get<double>(),
                0.02 * eager["loss"].get<double>())
        << "nccl " << nccl;
    EXPECT_NEAR(graphed["top1"].get<double>(), eager["top1"].get<double>(), 0.03)
        << "nccl " << nccl;
  }
}

}  // namespace
}  // namespace tern

