// BatchNorm running statistics over micro-batches and ranks
// (worker/trainer/running_statistics.h), and the gradient all-reduce's
// bucket packing that carries them (Communicator::AllReduceMean): 1 rank
// with 2 micro-batches holds bit for bit the statistics of 2 Gloo ranks with
// one each.
#include "worker/trainer/running_statistics.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <functional>
#include <sstream>
#include <thread>

#include "quant/ternary_model.h"
#include "worker/trainer/distributed.h"

namespace tern::trainer {
namespace {

namespace nn = torch::nn;

// conv - BN - ReLU - conv - BN, in training mode, seeded.
nn::Sequential TinyNet() {
  torch::manual_seed(11);
  nn::Sequential net(nn::Conv2d(nn::Conv2dOptions(3, 4, 3).padding(1)), nn::BatchNorm2d(4),
                     nn::Functional(torch::relu), nn::Conv2d(nn::Conv2dOptions(4, 5, 3)),
                     nn::BatchNorm2d(5));
  net->train();
  return net;
}

// A copy of `net` with the same parameters and buffers.
nn::Sequential CopyOf(const nn::Sequential& net) {
  nn::Sequential copy = TinyNet();
  std::stringstream bytes;
  torch::save(net, bytes);
  torch::load(copy, bytes);
  copy->train();
  return copy;
}

at::Tensor Batch() {
  torch::manual_seed(5);
  return torch::randn({8, 3, 6, 6}) * 2 + 0.5;
}

// Runs `body(comm)` on two Gloo ranks, one thread each.
void RunTwoRanks(const std::function<void(Communicator&)>& body, int64_t bucket_bytes) {
  auto port = PickFreePort();
  ASSERT_TRUE(port.ok()) << port.status();
  std::vector<std::thread> threads;
  std::array<Status, 2> connected;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      DistributedOptions o;
      o.rank = rank;
      o.world_size = 2;
      o.master_port = *port;
      o.timeout = std::chrono::seconds(30);
      o.bucket_bytes = bucket_bytes;
      auto comm = Communicator::Connect(o);
      connected[rank] = comm.status();
      if (comm.ok()) body(**comm);
    });
  }
  for (auto& t : threads) t.join();
  for (const Status& s : connected) EXPECT_TRUE(s.ok()) << s;
}

std::vector<at::Tensor> Buffers(const nn::Sequential& net) {
  std::vector<at::Tensor> out;
  for (const auto& b : net->buffers()) out.push_back(b.clone());
  return out;
}

void ExpectEqualBuffers(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b,
                        const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i], b[i]))
        << what << ": buffer " << i << " differs by "
        << (a[i].to(at::kDouble) - b[i].to(at::kDouble)).abs().max().item<double>();
  }
}

// TinyNet's batch statistics of `x` in training mode, computed by hand with
// the convolution weights `w1`, `w3` (layers 0 and 3): {mean1, var1, mean4,
// var4}, the variances unbiased (what BatchNorm's running_var tracks).
std::vector<at::Tensor> BatchStatistics(nn::Sequential net, const at::Tensor& x,
                                        const at::Tensor& w1, const at::Tensor& w3) {
  torch::NoGradGuard no_grad;
  auto* conv1 = net[0]->as<nn::Conv2dImpl>();
  auto* bn1 = net[1]->as<nn::BatchNorm2dImpl>();
  auto* conv2 = net[3]->as<nn::Conv2dImpl>();
  const at::Tensor y1 = at::conv2d(x, w1, conv1->bias, {1, 1}, {1, 1});
  const at::Tensor m1 = y1.mean({0, 2, 3});
  const at::Tensor v1 = y1.var({0, 2, 3}, /*unbiased=*/false);
  const at::Tensor z1 = (y1 - m1.view({1, -1, 1, 1})) / (v1.view({1, -1, 1, 1}) + 1e-5).sqrt() *
                            bn1->weight.view({1, -1, 1, 1}) +
                        bn1->bias.view({1, -1, 1, 1});
  const at::Tensor y2 = at::conv2d(torch::relu(z1), w3, conv2->bias);
  return {m1, y1.var({0, 2, 3}, /*unbiased=*/true), y2.mean({0, 2, 3}),
          y2.var({0, 2, 3}, /*unbiased=*/true)};
}

// The quantized (TWN, every layer) TinyNet with its ternary weights installed.
std::unique_ptr<quant::TernaryModel> TernaryWeights(nn::Sequential net) {
  quant::QuantOptions o = quant::MakePreset(quant::Method::kTwn);
  o.keep_first_fp = o.keep_last_fp = false;
  auto quant = quant::TernaryModel::Attach(net.ptr(), o).value();
  quant->SetProgress(1.0);
  torch::NoGradGuard no_grad;
  quant->BeforeForward();
  return quant;
}

TEST(ReestimateBatchNormTest, RunningStatisticsBecomeTheTernaryModelsBatchStatistics) {
  nn::Sequential net = TinyNet();
  net->forward(Batch() * 3);  // running statistics far from the answer
  const auto quant = TernaryWeights(net);
  const at::Tensor w1 = net[0]->as<nn::Conv2dImpl>()->weight.clone();  // α·T
  const at::Tensor w3 = net[3]->as<nn::Conv2dImpl>()->weight.clone();
  const at::Tensor latent1 = net[0]->named_parameters()["weight"];
  ASSERT_FALSE(torch::equal(w1, latent1)) << "the ternary weights are not installed";
  torch::manual_seed(8);
  const std::vector<at::Tensor> batches = {Batch(), torch::randn({8, 3, 6, 6})};
  RunningStatistics stats(*net);
  const std::vector<at::Tensor> counters = {stats.counters()[0].clone(),
                                            stats.counters()[1].clone()};
  net->eval();
  auto ran = ReestimateBatchNorm(*net, stats, nullptr, [&]() -> StatusOr<int64_t> {
    EXPECT_TRUE(net->is_training());
    for (const at::Tensor& x : batches) net->forward(x);
    return static_cast<int64_t>(batches.size());
  });
  ASSERT_TRUE(ran.ok()) << ran.status();
  EXPECT_EQ(*ran, 2);
  EXPECT_FALSE(net->is_training());  // the mode is given back
  // The plain mean of the two batches' statistics under the ternary weights.
  const auto a = BatchStatistics(net, batches[0], w1, w3);
  const auto b = BatchStatistics(net, batches[1], w1, w3);
  const auto fp = BatchStatistics(net, batches[0], latent1, net[3]->named_parameters()["weight"]);
  for (size_t i = 0; i < 4; ++i) {
    const at::Tensor expected = (a[i] + b[i]) / 2;
    EXPECT_TRUE(torch::allclose(stats.averaged()[i], expected, 1e-4, 1e-5))
        << stats.names()[i] << ": " << stats.averaged()[i] << " vs " << expected;
    EXPECT_FALSE(torch::allclose(stats.averaged()[i], (fp[i] + b[i]) / 2, 1e-3, 1e-4))
        << stats.names()[i] << " does not tell ternary from FP weights";
  }
  EXPECT_TRUE(torch::equal(stats.counters()[0], counters[0]));  // steps, not batches
  EXPECT_TRUE(torch::equal(stats.counters()[1], counters[1]));
  EXPECT_EQ(net[1]->as<nn::BatchNorm2dImpl>()->options.momentum(), 0.1);  // restored
}

TEST(ReestimateBatchNormTest, AFailedForwardRestoresTheStatistics) {
  nn::Sequential net = TinyNet();
  net->forward(Batch());
  RunningStatistics stats(*net);
  const auto before = Buffers(net);
  auto ran = ReestimateBatchNorm(*net, stats, nullptr, [&]() -> StatusOr<int64_t> {
    net->forward(Batch() * 5);
    return InternalError("the loader broke");
  });
  EXPECT_FALSE(ran.ok());
  ExpectEqualBuffers(Buffers(net), before, "after a failed re-estimation");
}

// Each of two Gloo ranks forwards its own batch: both end with the mean of
// the two batches' statistics, what one rank forwarding both gets.
TEST(ReestimateBatchNormTest, TwoGlooRanksAverageTheirStatistics) {
  nn::Sequential alone = TinyNet();
  const auto quant_alone = TernaryWeights(alone);
  torch::manual_seed(8);
  const std::vector<at::Tensor> batches = {Batch(), torch::randn({8, 3, 6, 6})};
  RunningStatistics stats_alone(*alone);
  ASSERT_TRUE(ReestimateBatchNorm(*alone, stats_alone, nullptr, [&]() -> StatusOr<int64_t> {
                for (const at::Tensor& x : batches) alone->forward(x);
                return 2;
              }).ok());
  std::array<std::vector<at::Tensor>, 2> results;
  RunTwoRanks(
      [&](Communicator& comm) {
        nn::Sequential net = CopyOf(alone);
        const auto quant = TernaryWeights(net);
        RunningStatistics stats(*net);
        auto ran = ReestimateBatchNorm(*net, stats, &comm, [&]() -> StatusOr<int64_t> {
          net->forward(batches[comm.rank()]);
          return 1;
        });
        EXPECT_TRUE(ran.ok()) << ran.status();
        for (const at::Tensor& t : stats.averaged()) results[comm.rank()].push_back(t.clone());
      },
      /*bucket_bytes=*/1 << 20);
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(results[r].size(), 4u);
    for (size_t i = 0; i < 4; ++i) {
      EXPECT_TRUE(torch::allclose(results[r][i], stats_alone.averaged()[i], 1e-5, 1e-6))
          << "rank " << r << " " << stats_alone.names()[i];
    }
  }
}

TEST(RunningStatisticsTest, FindsEveryBatchNormBufferByName) {
  nn::Sequential net = TinyNet();
  RunningStatistics stats(*net);
  EXPECT_EQ(stats.averaged().size(), 4u);  // 2 x (running_mean, running_var)
  EXPECT_EQ(stats.counters().size(), 2u);
  for (const auto& t : stats.averaged()) EXPECT_TRUE(t.is_floating_point());
  for (const auto& t : stats.counters()) EXPECT_EQ(t.scalar_type(), at::kLong);
  const std::vector<std::string> names = {"1.running_mean", "1.running_var", "4.running_mean",
                                          "4.running_var",  "1.num_batches_tracked",
                                          "4.num_batches_tracked"};
  EXPECT_EQ(stats.names(), names);
  // The handles are the module's buffers themselves (updated in place).
  EXPECT_TRUE(stats.averaged()[0].is_same(net->named_buffers()["1.running_mean"]));
}

// Micro-batches = 1 (and the CUDA-graph step): the forward updates the
// buffers as it always does.
TEST(RunningStatisticsTest, OneMicroBatchLeavesTheForwardsUpdateAlone) {
  nn::Sequential plain = TinyNet();
  nn::Sequential bracketed = CopyOf(plain);
  RunningStatistics stats(*bracketed);
  plain->forward(Batch());
  stats.BeginMicroBatches(1);
  bracketed->forward(Batch());
  stats.EndMicroBatch(0);
  ExpectEqualBuffers(Buffers(plain), Buffers(bracketed), "micro 1");
}

// M micro-batches: one momentum update toward the mean of the M batch
// statistics, and num_batches_tracked moves by one per step.
TEST(RunningStatisticsTest, MicroBatchesMoveTheStatisticsOnceTowardTheirMean) {
  for (int micro : {2, 4}) {
    nn::Sequential net = TinyNet();
    const at::Tensor x = Batch();
    std::vector<nn::Sequential> alone;
    for (int m = 0; m < micro; ++m) {
      alone.push_back(CopyOf(net));
      alone.back()->forward(x.chunk(micro)[m]);
    }
    RunningStatistics stats(*net);
    for (int step = 0; step < 2; ++step) {  // the second step reuses the scratch tensors
      if (step == 1) {
        for (int m = 0; m < micro; ++m) {
          std::stringstream bytes;
          torch::save(net, bytes);
          torch::load(alone[m], bytes);
          alone[m]->forward(x.chunk(micro)[m]);
        }
      }
      stats.BeginMicroBatches(micro);
      for (int m = 0; m < micro; ++m) {
        net->forward(x.chunk(micro)[m]);
        stats.EndMicroBatch(m);
      }
      for (size_t i = 0; i < stats.averaged().size(); ++i) {
        at::Tensor mean = torch::zeros_like(stats.averaged()[i]);
        for (int m = 0; m < micro; ++m) mean += alone[m]->named_buffers()[stats.names()[i]];
        mean /= micro;
        // Same values; the summation order of 4 differs from this loop's
        // only by rounding.
        EXPECT_TRUE(torch::allclose(stats.averaged()[i], mean, 1e-6, 1e-7))
            << "micro " << micro << " step " << step << " " << stats.names()[i];
      }
      for (const auto& counter : stats.counters()) {
        EXPECT_EQ(counter.item<int64_t>(), step + 1) << "micro " << micro;
      }
    }
    // Not vacuous: the micro-batches' statistics differ from each other.
    EXPECT_FALSE(torch::equal(Buffers(alone[0])[0], Buffers(alone[1])[0]));
  }
}

// The trainer's two halves together: 1 rank with 2 micro-batches equals 2
// Gloo ranks with one micro-batch each whose statistics go through the
// gradient all-reduce, bit for bit, over several steps.
TEST(RunningStatisticsTest, TwoMicroBatchesEqualTwoGlooRanksExactly) {
  const at::Tensor x = Batch();
  const nn::Sequential initial = TinyNet();
  constexpr int kSteps = 3;

  nn::Sequential one = CopyOf(initial);
  RunningStatistics one_stats(*one);
  for (int step = 0; step < kSteps; ++step) {
    one_stats.BeginMicroBatches(2);
    for (int m = 0; m < 2; ++m) {
      one->forward(x.chunk(2)[m] + step);
      one_stats.EndMicroBatch(m);
    }
  }

  std::array<std::vector<at::Tensor>, 2> ranks;
  RunTwoRanks(
      [&](Communicator& comm) {
        nn::Sequential net = CopyOf(initial);
        RunningStatistics stats(*net);
        for (int step = 0; step < kSteps; ++step) {
          stats.BeginMicroBatches(1);
          net->forward(x.chunk(2)[comm.rank()] + step);
          stats.EndMicroBatch(0);
          // As in TrainStep: gradients, then the statistics, in one call.
          std::vector<at::Tensor> reduced = {torch::randn({7}), torch::randn({3, 3})};
          for (const auto& b : stats.averaged()) reduced.push_back(b);
          ASSERT_TRUE(comm.AllReduceMean(reduced).ok());
        }
        ranks[comm.rank()] = Buffers(net);
      },
      /*bucket_bytes=*/25 << 20);
  ExpectEqualBuffers(Buffers(one), ranks[0], "1 rank x 2 micro vs rank 0");
  ExpectEqualBuffers(ranks[0], ranks[1], "rank 0 vs rank 1");
  EXPECT_EQ(one_stats.counters()[0].item<int64_t>(), kSteps);
  // Not vacuous: the statistics moved away from their initial values.
  EXPECT_FALSE(torch::equal(Buffers(one)[1], Buffers(initial)[1]));
}

// Several tensors per bucket (here 3 floats of 4 + 5 + 2, then a new bucket
// at the 64-byte limit, another at the dtype change), non-contiguous ones
// among them: every element comes back at its own place. Distinct values
// per element catch a wrong offset, and the identity at rank 0 = rank 1
// would not.
TEST(CommunicatorBucketTest, AllReduceMeanPacksSeveralTensorsPerBucketAndUnpacksEachInPlace) {
  RunTwoRanks(
      [](Communicator& comm) {
        const double r = comm.rank() + 1;  // rank 0: x1, rank 1: x2 -> mean x1.5
        const auto values = [&](std::vector<int64_t> shape, double start, at::ScalarType type) {
          int64_t n = 1;
          for (int64_t d : shape) n *= d;
          return (torch::arange(n, at::TensorOptions().dtype(type)) + start).mul(r).reshape(shape);
        };
        std::vector<at::Tensor> tensors = {
            values({4}, 1, at::kFloat),
            values({5}, 100, at::kFloat),
            values({2}, 200, at::kFloat),            // 44 bytes so far: one bucket
            values({3, 3}, 300, at::kFloat).t(),     // 36 more > 64: a new bucket; transposed
            values({2}, 400, at::kDouble),           // another dtype: another bucket
            values({3}, 500, at::kDouble),
            at::Tensor(),
            values({1}, 600, at::kFloat),
        };
        ASSERT_FALSE(tensors[3].is_contiguous());
        std::vector<at::Tensor> expected;
        for (const auto& t : tensors) expected.push_back(t.defined() ? t / r * 1.5 : t);
        const std::vector<at::Tensor> handles = tensors;
        ASSERT_TRUE(comm.AllReduceMean(tensors).ok());
        for (size_t i = 0; i < tensors.size(); ++i) {
          if (!tensors[i].defined()) continue;
          EXPECT_TRUE(tensors[i].is_same(handles[i])) << i << ": not in place";
          EXPECT_TRUE(torch::equal(tensors[i], expected[i]))
              << "tensor " << i << " on rank " << comm.rank() << ": " << tensors[i] << " vs "
              << expected[i];
        }
      },
      /*bucket_bytes=*/64);
}

}  // namespace
}  // namespace tern::trainer
