// Detection data for the trainer: COCO-format splits, letterboxed square
// inputs, box-aware augmentation, CenterNet training targets and a threaded
// batch loader.
//
// Geometry: a Placement maps image pixels to input pixels,
//   input = scale * (flip ? width - x : x) + (dx, dy),
// in continuous coordinates (pixel i covers [i, i+1)). Evaluation uses the
// letterbox (the longer side fills the input, centred, grey bars); training
// with augmentation flips with probability 1/2, scales the letterbox by
// U[0.6, 1.4] and places the result at a random offset (a random crop when
// it is larger than the input). Boxes move with the image and are clipped to
// the input; a box that keeps < 30% of its area or is < 1 px wide or high
// is dropped, crowd boxes never become targets.
//
// Targets (CenterNet, output stride 4): per class a heatmap with a Gaussian
// at each object's centre cell (radius from Zhou et al.'s rule with minimum
// overlap 0.7, the element-wise maximum where Gaussians overlap), and per
// object the centre cell's index, the box size and the sub-cell offset of the
// centre, both in output cells. Objects per image beyond kMaxObjects are
// dropped (the first ones in annotation order are kept).
//
// Every random draw comes from (seed, epoch, image index): batches are
// identical for any number of loader threads and any rank layout.
#ifndef TERN_WORKER_TRAINER_DETECTION_DATA_H_
#define TERN_WORKER_TRAINER_DETECTION_DATA_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/detection/coco.h"
#include "worker/trainer/data.h"
#include "worker/trainer/prefetcher.h"
#include "worker/trainer/spec.h"

namespace tern::trainer {

inline constexpr int kDetectionStride = 4;   // input pixels per output cell
inline constexpr int kMaxObjects = 128;      // targets per image

struct DetectionSplits {
  detection::CocoSplit train;
  // With dataset.val_fraction > 0: the validation split, images held out of
  // the training annotations (SplitForValidation, from the run's seed), which
  // per-epoch evaluation scores; no images otherwise.
  detection::CocoSplit held_out;
  // The val annotations: the final split, scored at the end (and per epoch
  // when nothing is held out).
  detection::CocoSplit val;
};

// Reads the train and val annotation files and checks that every image file
// exists (the images are decoded later, by the loader). Paths in `data` are
// resolved against data.path unless absolute; max_train_examples and
// max_eval_examples keep the first N images (and their annotations), then
// data.val_fraction of the training images move to `held_out`, chosen from
// `seed`. INVALID_ARGUMENT when a split has no images, the splits'
// categories differ or the training split is too small to hold images out;
// reader errors name the file.
StatusOr<DetectionSplits> LoadDetectionSplits(const DataConfig& data, uint64_t seed = 0);

struct Placement {
  double scale = 1;
  double dx = 0;
  double dy = 0;
  bool flip = false;
};

// The evaluation letterbox of a width x height image in a size x size input.
Placement Letterbox(int width, int height, int size);

// Maps an input-pixel box [x1, y1, x2, y2] back to image pixels as COCO
// [x, y, w, h], clipped to the image.
detection::BoxXywh ToImageBox(const Placement& p, int width, int height, double x1,
                              double y1, double x2, double y2);

// Per-channel statistics of pixel / 255 over (up to) the first `max_images`
// training images, decoded as RGB. Errors name the image file.
StatusOr<Normalization> DetectionMeanStd(const detection::CocoSplit& train, int max_images);

// Decodes `record`'s image as RGB and renders it through `placement` into a
// normalized float [3, size, size] buffer (`out`; areas outside the image get
// the mean colour, i.e. 0). Bilinear sampling, clamped at the image border.
Status RenderImage(const detection::ImageRecord& record, const Placement& placement,
                   const Normalization& norm, int size, float* out);

struct DetectionBatch {
  at::Tensor images;   // float [b, 3, S, S], normalized
  at::Tensor heatmap;  // float [b, classes, S/4, S/4], in [0, 1]
  at::Tensor index;    // int64 [b, K]: centre cell y * (S/4) + x
  at::Tensor size;     // float [b, K, 2]: box width, height in cells
  at::Tensor offset;   // float [b, K, 2]: centre - centre cell, in [0, 1)
  at::Tensor mask;     // float [b, K]: 1 for real objects; K = max over b (>= 1)
  int64_t epoch = 0;
  int64_t step = 0;
};

struct DetectionLoaderOptions {
  int input_size = 512;  // S, a multiple of kDetectionStride
  int num_classes = 1;
  bool augment = true;
  uint64_t seed = 0;
  Normalization norm;
  // Page-locked batch tensors, so the copy to a GPU can overlap compute.
  // Needs a CUDA build and device.
  bool pin_memory = false;
};

// Training batches of one rank: batch (epoch, step) holds the images
// sampler.Indices(epoch, step) of `split` (micro-batches are its contiguous
// parts). A batch whose image cannot be decoded is an error naming the file.
class DetectionLoader {
 public:
  DetectionLoader(const detection::CocoSplit& split, const ShardedSampler& sampler,
                  DetectionLoaderOptions options, int num_threads, int prefetch);

  void StartEpoch(int64_t epoch, int64_t first_step) { prefetcher_.StartEpoch(epoch, first_step); }
  // std::nullopt once the epoch is exhausted.
  std::optional<StatusOr<DetectionBatch>> Next() { return prefetcher_.Next(); }
  // The batch for (epoch, step), built on the calling thread.
  StatusOr<DetectionBatch> Build(int64_t epoch, int64_t step) const;

 private:
  const detection::CocoSplit& split_;
  const ShardedSampler sampler_;
  const DetectionLoaderOptions options_;
  StepPrefetcher<StatusOr<DetectionBatch>> prefetcher_;  // last: workers call Build()
};

// The training placement of image `index` in `epoch` (Letterbox when
// !options.augment).
Placement TrainPlacement(const detection::ImageRecord& record, const DetectionLoaderOptions& options,
                         int64_t epoch, int64_t index);

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_DETECTION_DATA_H_
