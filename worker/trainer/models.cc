#include "worker/trainer/models.h"

#include <torch/nn/functional.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "common/check.h"
#include "common/utf8.h"

namespace tern::trainer {
namespace {

namespace nn = torch::nn;

nn::Conv2d Conv(int64_t in, int64_t out, int64_t kernel, int64_t stride) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, kernel)
                        .stride(stride)
                        .padding(kernel / 2)
                        .bias(false));
}

}  // namespace

// A residual block: BasicBlock (two 3x3) or Bottleneck (1x1, 3x3, 1x1 ×4).
class ResidualBlock : public nn::Module {
 public:
  ResidualBlock(int64_t in, int64_t planes, int64_t stride, bool bottleneck)
      : bottleneck_(bottleneck) {
    const int64_t out = bottleneck ? planes * 4 : planes;
    if (bottleneck) {
      conv1_ = register_module("conv1", Conv(in, planes, 1, 1));
      bn1_ = register_module("bn1", nn::BatchNorm2d(planes));
      conv2_ = register_module("conv2", Conv(planes, planes, 3, stride));
      bn2_ = register_module("bn2", nn::BatchNorm2d(planes));
      conv3_ = register_module("conv3", Conv(planes, out, 1, 1));
      bn3_ = register_module("bn3", nn::BatchNorm2d(out));
    } else {
      conv1_ = register_module("conv1", Conv(in, planes, 3, stride));
      bn1_ = register_module("bn1", nn::BatchNorm2d(planes));
      conv2_ = register_module("conv2", Conv(planes, planes, 3, 1));
      bn2_ = register_module("bn2", nn::BatchNorm2d(out));
    }
    if (stride != 1 || in != out) {
      shortcut_conv_ = register_module("shortcut_conv", Conv(in, out, 1, stride));
      shortcut_bn_ = register_module("shortcut_bn", nn::BatchNorm2d(out));
    }
    // Zero-init the last BN of each block (Goyal et al.): blocks start as
    // identities, which helps short budgets.
    nn::BatchNorm2d& last = bottleneck ? bn3_ : bn2_;
    nn::init::zeros_(last->weight);
  }

  at::Tensor forward(const at::Tensor& x) {
    at::Tensor y = at::relu(bn1_(conv1_(x)));
    if (bottleneck_) {
      y = at::relu(bn2_(conv2_(y)));
      y = bn3_(conv3_(y));
    } else {
      y = bn2_(conv2_(y));
    }
    const at::Tensor identity =
        shortcut_conv_ ? shortcut_bn_(shortcut_conv_(x)) : x;
    return at::relu(y + identity);
  }

 private:
  bool bottleneck_;
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, conv3_{nullptr};
  nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr}, bn3_{nullptr};
  nn::Conv2d shortcut_conv_{nullptr};
  nn::BatchNorm2d shortcut_bn_{nullptr};
};

namespace {

struct StageLayout {
  std::vector<int64_t> planes;   // per stage
  std::vector<int64_t> blocks;   // per stage
  bool bottleneck = false;
  bool imagenet_stem = false;    // 7x7/2 conv + 3x3/2 max-pool
  int64_t stem_width = 16;
};

StatusOr<StageLayout> LayoutOf(const ModelArchitecture& arch) {
  if (arch.in_channels < 1 || arch.in_channels > 64) {
    return InvalidArgumentError("model: in_channels must be in [1, 64]");
  }
  if (!(arch.width_multiplier > 0 && arch.width_multiplier <= 8)) {
    return InvalidArgumentError("model.width_multiplier: must be in (0, 8]");
  }
  StageLayout layout;
  if (arch.arch == "resnet20" || arch.arch == "resnet32" || arch.arch == "resnet56") {
    const int64_t depth = std::stoi(arch.arch.substr(6));
    const int64_t n = (depth - 2) / 6;
    layout.planes = {16, 32, 64};
    layout.blocks = {n, n, n};
  } else if (arch.arch == "resnet18" || arch.arch == "resnet34" || arch.arch == "resnet50") {
    layout.planes = {64, 128, 256, 512};
    layout.blocks = arch.arch == "resnet18" ? std::vector<int64_t>{2, 2, 2, 2}
                                            : std::vector<int64_t>{3, 4, 6, 3};
    layout.bottleneck = arch.arch == "resnet50";
    layout.imagenet_stem = true;
    layout.stem_width = 64;
  } else {
    return InvalidArgumentError("model.arch: unknown architecture " + Quoted(arch.arch));
  }
  return layout;
}

class ResNet : public Classifier {
 public:
  // `arch` has been checked by LayoutOf.
  explicit ResNet(const ModelArchitecture& arch) {
    StatusOr<ResNetTrunk> trunk = ResNetTrunk::Register(*this, arch);
    TERN_CHECK(trunk.ok()) << trunk.status().message();
    trunk_ = std::move(*trunk);
    fc_ = register_module("fc", nn::Linear(trunk_.stage_channels().back(), arch.num_classes));
    trunk_.InitWeights();
  }

  // x: [N, C, H, W] -> logits [N, classes]
  at::Tensor forward(at::Tensor x) override {
    x = trunk_.Stages(x).back();
    // Global average pool as a mean: the same value as adaptive_avg_pool2d
    // to 1×1, whose CUDA backward has no deterministic kernel (LibTorch
    // refuses it under optimization.deterministic).
    x = x.mean({2, 3});  // [N, C]
    return fc_(x);
  }

 private:
  ResNetTrunk trunk_;
  nn::Linear fc_{nullptr};
};

}  // namespace

std::string ModelArchitecture::ToJson() const {
  return nlohmann::json{{"arch", arch},
                        {"in_channels", in_channels},
                        {"num_classes", num_classes},
                        {"width_multiplier", width_multiplier}}
      .dump();
}

StatusOr<ModelArchitecture> ModelArchitecture::FromJson(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("arch") || !j["arch"].is_string() ||
      !j.contains("in_channels") || !j["in_channels"].is_number_integer() ||
      !j.contains("num_classes") || !j["num_classes"].is_number_integer() ||
      !j.contains("width_multiplier") || !j["width_multiplier"].is_number()) {
    return InvalidArgumentError("model architecture: expected {arch, in_channels, "
                                "num_classes, width_multiplier}, got " + std::string(text.substr(0, 200)));
  }
  ModelArchitecture a;
  a.arch = j["arch"].get<std::string>();
  a.in_channels = j["in_channels"].get<int64_t>();
  a.num_classes = j["num_classes"].get<int64_t>();
  a.width_multiplier = j["width_multiplier"].get<double>();
  return a;
}

StatusOr<std::shared_ptr<Classifier>> BuildClassifier(const ModelArchitecture& arch) {
  if (arch.num_classes < 2 || arch.num_classes > 100000) {
    return InvalidArgumentError("model: num_classes must be in [2, 100000]");
  }
  TERN_RETURN_IF_ERROR(LayoutOf(arch).status());
  return std::shared_ptr<Classifier>(std::make_shared<ResNet>(arch));
}

StatusOr<ResNetTrunk> ResNetTrunk::Register(torch::nn::Module& owner,
                                            const ModelArchitecture& arch) {
  TERN_ASSIGN_OR_RETURN(const StageLayout layout, LayoutOf(arch));
  auto width = [&](int64_t c) {
    return std::max<int64_t>(1, static_cast<int64_t>(std::lround(c * arch.width_multiplier)));
  };
  ResNetTrunk trunk;
  trunk.imagenet_stem_ = layout.imagenet_stem;
  const int64_t stem = width(layout.stem_width);
  trunk.stem_conv_ = owner.register_module(
      "conv1", Conv(arch.in_channels, stem, layout.imagenet_stem ? 7 : 3,
                    layout.imagenet_stem ? 2 : 1));
  trunk.stem_bn_ = owner.register_module("bn1", nn::BatchNorm2d(stem));
  auto blocks = owner.register_module("blocks", nn::ModuleList());
  int64_t in = stem;
  int64_t stride = layout.imagenet_stem ? 4 : 1;
  for (size_t s = 0; s < layout.planes.size(); ++s) {
    const int64_t planes = width(layout.planes[s]);
    for (int64_t b = 0; b < layout.blocks[s]; ++b) {
      const int64_t block_stride = (s > 0 && b == 0) ? 2 : 1;
      auto block = std::make_shared<ResidualBlock>(in, planes, block_stride, layout.bottleneck);
      blocks->push_back(block);
      trunk.blocks_.push_back(block);
      in = layout.bottleneck ? planes * 4 : planes;
    }
    if (s > 0) stride *= 2;
    trunk.stage_ends_.push_back(trunk.blocks_.size());
    trunk.channels_.push_back(in);
    trunk.strides_.push_back(stride);
  }
  return trunk;
}

void ResNetTrunk::InitWeights() {
  torch::NoGradGuard no_grad;
  auto init = [](torch::nn::Module& module) {
    for (auto& m : module.modules(/*include_self=*/true)) {
      if (auto* conv = m->as<nn::Conv2dImpl>()) {
        nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanOut, torch::kReLU);
      }
    }
  };
  init(*stem_conv_);
  for (auto& block : blocks_) init(*block);
}

std::vector<at::Tensor> ResNetTrunk::Stages(at::Tensor x) const {
  x = at::relu(stem_bn_->as<nn::BatchNorm2dImpl>()->forward(
      stem_conv_->as<nn::Conv2dImpl>()->forward(x)));
  if (imagenet_stem_) x = at::max_pool2d(x, {3, 3}, {2, 2}, {1, 1});
  std::vector<at::Tensor> out;
  size_t stage = 0;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    x = blocks_[i]->forward(x);
    if (i + 1 == stage_ends_[stage]) {
      out.push_back(x);
      ++stage;
    }
  }
  return out;
}

}  // namespace tern::trainer
