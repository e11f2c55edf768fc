// ResNet classifiers: CIFAR-style ResNet-20/32/56 and ImageNet-style
// ResNet-18/34/50, built from torch::nn::Conv2d / BatchNorm2d / Linear so
// that quant::TernaryModel can ternarize them. Layers are registered in
// forward order: the stem convolution is the first Conv2d, `fc` the last
// Linear (keep_first_fp / keep_last_fp rely on it).
// Not thread-safe; one model per training thread.
#ifndef TERN_WORKER_TRAINER_MODELS_H_
#define TERN_WORKER_TRAINER_MODELS_H_

#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace tern::trainer {

struct ModelArchitecture {
  std::string arch = "resnet20";
  int64_t in_channels = 3;
  int64_t num_classes = 10;
  double width_multiplier = 1.0;

  std::string ToJson() const;  // stored in the `.tern` artifact
  static StatusOr<ModelArchitecture> FromJson(const std::string& json);
};

// A classifier: forward(x [N, C, H, W] float) -> logits [N, classes].
class Classifier : public torch::nn::Module {
 public:
  virtual at::Tensor forward(at::Tensor x) = 0;
};

// INVALID_ARGUMENT for an unknown arch or bad sizes.
StatusOr<std::shared_ptr<Classifier>> BuildClassifier(const ModelArchitecture& arch);

class ResidualBlock;

// The convolutional trunk of a ResNet (stem and residual stages, no
// classifier head), registered into its owner under the classifier's names
// ("conv1", "bn1", "blocks.*"): a detector's backbone and a classifier share
// parameter names, so model.init_from can load one into the other.
class ResNetTrunk {
 public:
  // Registers the trunk's modules into `owner` (arch.num_classes unused).
  // INVALID_ARGUMENT for an unknown arch or bad sizes.
  static StatusOr<ResNetTrunk> Register(torch::nn::Module& owner,
                                        const ModelArchitecture& arch);

  // Kaiming-normal (fan-out) initialisation of the trunk's convolutions;
  // owners call it after registering their own layers.
  void InitWeights();

  // The output of every stage for x [N, C, H, W]: strides 1, 2, 4
  // (CIFAR-style) or 4, 8, 16, 32 (ImageNet-style) relative to x.
  std::vector<at::Tensor> Stages(at::Tensor x) const;
  const std::vector<int64_t>& stage_channels() const { return channels_; }
  const std::vector<int64_t>& stage_strides() const { return strides_; }

 private:
  std::shared_ptr<torch::nn::Module> stem_conv_, stem_bn_;
  bool imagenet_stem_ = false;
  std::vector<std::shared_ptr<ResidualBlock>> blocks_;
  std::vector<size_t> stage_ends_;  // index one past each stage's last block
  std::vector<int64_t> channels_, strides_;
};

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_MODELS_H_
