// COCO-protocol evaluation of box detections, and the COCO results JSON.
//
// EvaluateDetections follows pycocotools' COCOeval (iouType "bbox") step by
// step: per category and image, detections sorted by score (stable) and cut
// to max_detections; greedy matching at IoU 0.50:0.05:0.95; crowd ground
// truth is matched like pycocotools does (IoU over the detection's area, any
// number of matches, such matches ignored); precision made monotone and read
// at 101 recall points; categories without (non-crowd, in-range) ground
// truth left out of every mean. Results agree with pycocotools up to
// rounding: precision is tp / (tp + fp) with no epsilon in the denominator.
//
// Usage:
//   TERN_ASSIGN_OR_RETURN(CocoDataset gt, ReadCocoFile(path));
//   TERN_ASSIGN_OR_RETURN(CocoMetrics m, EvaluateDetections(gt, detections));
//   if (m.ap50) ...
//
// All functions are thread-safe.
#ifndef TERN_WORKER_DETECTION_EVAL_H_
#define TERN_WORKER_DETECTION_EVAL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "worker/detection/coco.h"

namespace tern::detection {

// One entry of the COCO results format.
struct Detection {
  int64_t image_id = 0;
  int64_t category_id = 0;  // a CocoCategory id, not a class index
  BoxXywh bbox;
  double score = 0;
};

struct EvalOptions {
  // COCO's maxDets: the highest-scoring detections kept per image and
  // category (as pycocotools applies it). >= 1.
  int max_detections = 100;

  Status Validate() const;
};

// Average precision in [0, 1]; nullopt where no category has ground truth in
// that object-size bucket (pycocotools prints -1).
struct CocoMetrics {
  std::optional<double> ap;    // mean over IoU 0.50:0.05:0.95
  std::optional<double> ap50;  // IoU 0.50
  std::optional<double> ap75;  // IoU 0.75
  // Buckets by the ground truth's `area` and the detection's w * h, with
  // pycocotools' closed ranges: [0, 32^2], [32^2, 96^2], [96^2, 1e10].
  std::optional<double> ap_small;
  std::optional<double> ap_medium;
  std::optional<double> ap_large;
  // AP@[.50:.95] per class index (CocoDataset::categories order).
  std::vector<std::optional<double>> class_ap;
};

// Intersection over union of two boxes; 0 when they do not overlap (touching
// edges included) or both are empty.
double BoxIou(const BoxXywh& a, const BoxXywh& b);

// Scores `detections` against `ground_truth` (as ReadCocoFile returns it).
// INVALID_ARGUMENT naming detections[i] for an unknown image or category id,
// a negative or non-finite box or a non-finite score, or for ground truth
// that refers to unknown ids.
StatusOr<CocoMetrics> EvaluateDetections(
    const CocoDataset& ground_truth, const std::vector<Detection>& detections,
    const EvalOptions& options = {});

// The COCO results format: [{"image_id", "category_id", "bbox", "score"}],
// doubles written so that they read back exactly.
std::string DetectionsToJson(const std::vector<Detection>& detections);
Status WriteDetectionsJson(const std::string& path,
                           const std::vector<Detection>& detections);

// Reads the results format back. DATA_LOSS for text that is not JSON,
// INVALID_ARGUMENT "<source>: [i].bbox: expected 4 numbers" and the like for
// schema violations; extra keys are ignored. Ids are not checked against any
// data set here (EvaluateDetections does that).
StatusOr<std::vector<Detection>> ParseDetectionsJson(std::string_view json,
                                                     const std::string& source);
StatusOr<std::vector<Detection>> ReadDetectionsJson(const std::string& path);

}  // namespace tern::detection

#endif  // TERN_WORKER_DETECTION_EVAL_H_
