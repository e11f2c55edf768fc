// CUDA checks: every quantizer's forward/backward on the GPU equals the CPU
// result, NCCL at world size 1, a bf16 autocast step close to fp32, and a
// `.tern` trained on the GPU evaluating identically on the CPU, and pinned
// uint8 batches normalized on the GPU equal to the CPU loader's. Skipped (and
// reported as skipped) without a CUDA device.
#include <gtest/gtest.h>
#include <iostream>
#include <torch/torch.h>
#include <torch/version.h>

#include "quant/ternary_model.h"
#include "worker/trainer/autocast.h"
#include "worker/trainer/data.h"
#include "worker/trainer/distributed.h"
#include "worker/trainer/models.h"

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

// In float64 on both devices: a ternary network's pre-activations hit exact
// ties (sums of ±α·x that cancel), so in float32 the last-bit differences of
// any two summation orders flip ReLU masks and move some BatchNorm gradients
// by a few percent. Measured on the CPU alone: float32 against float64 differs
// by up to 5.6% (relative norm) in 17 of 65 parameter gradients of this model
// under TWN (none under FP), while two float64 runs with different layouts
// agree to 5e-15. The first GPU run compared in float32 and failed on exactly
// those 17 parameters for every method.
TEST_F(GpuTest, EveryQuantizerMatchesCpuForwardAndBackward) {
  for (quant::Method m : {quant::Method::kTwn, quant::Method::kTtq, quant::Method::kLat,
                          quant::Method::kHla}) {
    auto cpu = SmallResNet(1);
    auto gpu = SmallResNet(1);
    cpu->to(torch::kDouble);
    gpu->to(torch::kCUDA, torch::kDouble);
    quant::QuantOptions o = quant::MakePreset(m);
    auto qc = quant::TernaryModel::Attach(cpu, o).value();
    auto qg = quant::TernaryModel::Attach(gpu, o).value();
    qg->state()->to(torch::kCUDA);
    qc->SetProgress(0.6);
    qg->SetProgress(0.6);
    torch::manual_seed(2);
    const at::Tensor x = torch::randn({8, 1, 28, 28}, torch::kDouble);
    const at::Tensor y = torch::randint(0, 10, {8}, torch::kLong);
    cpu->eval();
    gpu->eval();  // BatchNorm running statistics: same on both sides
    qc->BeforeForward();
    qg->BeforeForward();
    const at::Tensor lc = torch::cross_entropy_loss(cpu->forward(x), y) + qc->RegularizationLoss();
    const at::Tensor lg = torch::cross_entropy_loss(gpu->forward(x.cuda()), y.cuda()) +
                          qg->RegularizationLoss();
    EXPECT_NEAR(lc.item<double>(), lg.item<double>(), 1e-9) << quant::MethodName(m);
    lc.backward();
    lg.backward();
    qc->AfterBackward();  // the regularizer's gradient where it is applied there
    qg->AfterBackward();
    const auto pc = cpu->parameters();
    const auto pg = gpu->parameters();
    for (size_t i = 0; i < pc.size(); ++i) {
      const at::Tensor a = pc[i].grad();
      const at::Tensor b = pg[i].grad().cpu();
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
  at::Tensor t = torch::full({1000}, 3.0f, torch::kCUDA);
  ASSERT_TRUE((*comm)->AllReduceMean({t}).ok());
  EXPECT_TRUE(torch::allclose(t.cpu(), torch::full({1000}, 3.0f)));
  ASSERT_TRUE((*comm)->Broadcast({t}, 0).ok());
  ASSERT_TRUE((*comm)->Barrier().ok());
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
    trainer::CudaAutocast autocast(true);
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
  EXPECT_TRUE(torch::allclose(a, b, 1e-3, 1e-3));
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

}  // namespace
}  // namespace tern
