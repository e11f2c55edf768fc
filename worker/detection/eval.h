// COCO-protocol evaluation of box detections, and the COCO results JSON.
//
// EvaluateDetections follows pycocotools' COCOeval (iouType "bbox") step by
// step: per category and image, detections sorted by score (stable) and cut
// to max_detections; greedy matching at IoU 0.50:0.05:0.95; crowd ground
// truth is matched like pycocotools does (IoU over the detection's area, any
// number of matches, such matches ignored); precision made monotone and read
// at 101 recall points; categories without (non-crowd, in-range) ground
// truth left out of every mean; average recall (AR) as pycocotools'
// recall[-1] per IoU threshold and category, for maxDets 1, 10 and
// max_detections. Results agree with pycocotools up to rounding: precision
// is tp / (tp + fp) with no epsilon in the denominator. Ground truth is
// scored with the boxes as the annotation file wrote them (as pycocotools
// does), also where the reader clipped them for training (see
// EvalOptions::clipped_ground_truth).
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
  // The AP and AR@100 of the COCO summary use 100; other values give a
  // different, non-standard metric (AR@1 and AR@10 then use min(1 or 10,
  // max_detections), as pycocotools would with maxDets [1, 10, N]).
  int max_detections = 100;
  // Score against CocoAnnotation::bbox (clipped to the image under
  // BoxPolicy::kClip) instead of the file's boxes (file_bbox where set).
  bool clipped_ground_truth = false;

  Status Validate() const;
};

// Average precision and recall in [0, 1]; nullopt where no category has
// ground truth in that object-size bucket (pycocotools prints -1). The
// fields are the 12 numbers of pycocotools' summary, in its order.
struct CocoMetrics {
  std::optional<double> ap;    // mean over IoU 0.50:0.05:0.95
  std::optional<double> ap50;  // IoU 0.50
  std::optional<double> ap75;  // IoU 0.75
  // Buckets by the ground truth's `area` and the detection's w * h, with
  // pycocotools' closed ranges: [0, 32^2], [32^2, 96^2], [96^2, 1e10].
  std::optional<double> ap_small;
  std::optional<double> ap_medium;
  std::optional<double> ap_large;
  // Average recall over IoU 0.50:0.05:0.95 and the categories with ground
  // truth: the share of (non-crowd, in-range) ground truth matched by the
  // 1, 10 or max_detections highest-scoring detections per image and
  // category.
  std::optional<double> ar1;
  std::optional<double> ar10;
  std::optional<double> ar100;  // at max_detections (COCO: 100)
  // AR at max_detections by object size, the ranges of ap_small etc.
  std::optional<double> ar_small;
  std::optional<double> ar_medium;
  std::optional<double> ar_large;
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

// pycocotools' COCOeval.summarize() printout: 12 lines such as
// " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.512",
// -1.000 for a value that is nullopt. maxDets reads 1, 10 and
// max_detections, as pycocotools prints them with maxDets [1, 10, N] (its
// first line, though, always asks for maxDets 100; here it is N).
std::string FormatCocoSummary(const CocoMetrics& metrics, int max_detections);

// The 12 numbers as a JSON object, keys as CocoMetrics' fields ("ap", ...,
// "ar_large"), null for nullopt; compact, no trailing newline.
std::string CocoMetricsToJson(const CocoMetrics& metrics);

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
