// CenterNet (Zhou et al., "Objects as Points") on a ResNet backbone: an
// anchor-free detector predicting, at output stride 4, a per-class centre
// heatmap, the box size and the sub-cell centre offset.
//
// Network: ResNetTrunk (the classifier's names, so model.init_from can load
// a classification checkpoint's backbone) -> a top-down FPN-style neck over
// the stages of stride >= 4 (1x1 laterals, nearest upsampling, sum, one 3x3
// conv; 64 x width channels) -> three heads, each a 3x3 conv + ReLU and a
// 1x1 prediction conv. The prediction convs ("heatmap_out", "size_out",
// "offset_out") are registered last: they are the output layers that
// quantization.keep_last_fp keeps FP. The heatmap bias starts at -2.19
// (prior 0.1), as in the paper.
//
// Losses (CenterNetLossSums): penalty-reduced focal loss on the heatmap
// (alpha 2, beta 4), L1 on size and offset at the object centres. They are
// returned as sums; the trainer divides by the global number of objects.
// Not thread-safe; one model per training thread.
#ifndef TERN_WORKER_TRAINER_DETECTION_MODEL_H_
#define TERN_WORKER_TRAINER_DETECTION_MODEL_H_

#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/trainer/models.h"

namespace tern::trainer {

struct DetectorArchitecture {
  std::string backbone = "resnet18";  // any BuildClassifier arch
  std::string head = "centernet";
  int64_t in_channels = 3;
  double width_multiplier = 1.0;
  int64_t input_size = 512;           // square input side, multiple of 32
  std::vector<int64_t> category_ids;  // class index -> COCO category id
  std::vector<std::string> category_names;

  int64_t num_classes() const { return static_cast<int64_t>(category_ids.size()); }
  std::string ToJson() const;  // stored in the `.tern` ({"task": "detection", ...})
  static StatusOr<DetectorArchitecture> FromJson(const std::string& json);
};

struct CenterNetOutput {
  at::Tensor heatmap;  // logits [N, classes, S/4, S/4]
  at::Tensor size;     // [N, 2, S/4, S/4]: width, height in cells
  at::Tensor offset;   // [N, 2, S/4, S/4]: centre offset in cells
};

class CenterNet : public torch::nn::Module {
 public:
  // Use BuildCenterNet (it validates `arch`).
  explicit CenterNet(const DetectorArchitecture& arch);
  CenterNetOutput forward(const at::Tensor& x);  // x: [N, C, S, S]
  static std::vector<std::string> OutputLayers();

 private:
  ResNetTrunk trunk_;
  size_t first_stage_ = 0;  // the first stage of stride >= 4
  std::vector<torch::nn::Conv2d> laterals_;         // per stage from first_stage_
  std::vector<torch::nn::BatchNorm2d> lateral_bns_;
  torch::nn::Conv2d smooth_{nullptr};
  torch::nn::BatchNorm2d smooth_bn_{nullptr};
  torch::nn::Conv2d heatmap_hidden_{nullptr}, size_hidden_{nullptr}, offset_hidden_{nullptr};
  torch::nn::Conv2d heatmap_out_{nullptr}, size_out_{nullptr}, offset_out_{nullptr};
};

// INVALID_ARGUMENT naming the field for a bad architecture.
StatusOr<std::shared_ptr<CenterNet>> BuildCenterNet(const DetectorArchitecture& arch);

struct CenterNetLossSums {
  at::Tensor focal;   // scalar: focal loss summed over all heatmap cells
  at::Tensor size;    // scalar: L1 of (w, h) summed over real objects
  at::Tensor offset;  // scalar: L1 of the offset summed over real objects
};

// `index`, `size`, `offset`, `mask` as DetectionBatch holds them.
CenterNetLossSums CenterNetLoss(const CenterNetOutput& out, const at::Tensor& heatmap,
                                const at::Tensor& index, const at::Tensor& size,
                                const at::Tensor& offset, const at::Tensor& mask);

// One decoded detection in input pixels.
struct InputDetection {
  float x1, y1, x2, y2;
  float score;
  int64_t class_index;
};

// CenterNet decoding: sigmoid heatmap, 3x3 max-pool peak suppression, the
// `max_detections` highest peaks over all classes per image, boxes from the
// size and offset at each peak (times kDetectionStride). Per image, sorted by
// score.
std::vector<std::vector<InputDetection>> DecodeCenterNet(const CenterNetOutput& out,
                                                         int max_detections);

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_DETECTION_MODEL_H_
