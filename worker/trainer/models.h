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

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_MODELS_H_
