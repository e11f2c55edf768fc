// MultiTensorSgd against torch::optim::SGD: the same parameters after several
// steps (two groups, weight decay, momentum, Nesterov on and off, a parameter
// without a gradient), and checkpoints that move between the two.
#include "worker/trainer/multi_tensor_sgd.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

namespace tern::trainer {
namespace {

std::vector<at::Tensor> MakeParams() {
  torch::manual_seed(21);
  return {torch::randn({4, 3, 3, 3}).contiguous(at::MemoryFormat::ChannelsLast).requires_grad_(),
          torch::randn({7, 5}).requires_grad_(), torch::randn({7}).requires_grad_(),
          torch::randn({3}).requires_grad_()};
}

std::vector<torch::optim::OptimizerParamGroup> Groups(const std::vector<at::Tensor>& p,
                                                      bool nesterov) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto options = [&](double wd) {
    return std::make_unique<torch::optim::SGDOptions>(
        torch::optim::SGDOptions(0.1).momentum(0.9).nesterov(nesterov).weight_decay(wd));
  };
  groups.emplace_back(std::vector<at::Tensor>{p[0], p[1]}, options(5e-4));
  groups.emplace_back(std::vector<at::Tensor>{p[2], p[3]}, options(0.0));
  return groups;
}

// Gradients that differ step by step; the last parameter never gets one.
void SetGrads(std::vector<at::Tensor>& params, int step) {
  for (size_t i = 0; i + 1 < params.size(); ++i) {
    torch::manual_seed(100 * step + static_cast<int>(i));
    params[i].mutable_grad() = torch::randn_like(params[i]);
  }
}

void ExpectSame(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::allclose(a[i], b[i], 1e-6, 1e-7)) << "parameter " << i;
  }
}

TEST(MultiTensorSgdTest, StepsLikeTorchSgd) {
  for (bool nesterov : {false, true}) {
    SCOPED_TRACE(nesterov ? "nesterov" : "heavy ball");
    auto a = MakeParams();
    auto b = MakeParams();
    torch::optim::SGD reference(Groups(a, nesterov), torch::optim::SGDOptions(0.1));
    MultiTensorSgd multi(Groups(b, nesterov), torch::optim::SGDOptions(0.1));
    for (int step = 0; step < 5; ++step) {
      SetGrads(a, step);
      SetGrads(b, step);
      reference.step();
      multi.step();
    }
    ExpectSame(a, b);
    EXPECT_TRUE(torch::equal(a[3], MakeParams()[3]));  // no gradient: untouched
  }
}

// Trains `from` 3 steps, hands parameters and optimizer state to `to` through
// save()/load(), and checks one more step of each agrees.
template <typename From, typename To>
void ExpectCheckpointCarriesMomentum() {
  auto a = MakeParams();
  auto b = MakeParams();
  From from(Groups(a, true), torch::optim::SGDOptions(0.1));
  for (int step = 0; step < 3; ++step) {
    SetGrads(a, step);
    from.step();
  }
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < a.size(); ++i) b[i].copy_(a[i]);
  }
  torch::serialize::OutputArchive out;
  from.save(out);
  std::ostringstream bytes;
  out.save_to(bytes);
  To to(Groups(b, true), torch::optim::SGDOptions(0.1));
  torch::serialize::InputArchive in;
  std::istringstream read(bytes.str());
  in.load_from(read);
  to.load(in);
  SetGrads(a, 3);
  SetGrads(b, 3);
  from.step();
  to.step();
  ExpectSame(a, b);
}

TEST(MultiTensorSgdTest, CheckpointsMoveBetweenTorchSgdAndMultiTensorSgd) {
  ExpectCheckpointCarriesMomentum<MultiTensorSgd, torch::optim::SGD>();
  ExpectCheckpointCarriesMomentum<torch::optim::SGD, MultiTensorSgd>();
}

}  // namespace
}  // namespace tern::trainer
