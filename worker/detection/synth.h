// A deterministic synthetic COCO-format detection data set: coloured shapes
// (rectangle, ellipse, triangle, cross) on noisy, coloured backgrounds.
//
// WriteSynthCoco writes the layout DATASET_COCO expects by default:
//   <output_dir>/annotations/instances_train.json, instances_val.json
//   <output_dir>/train/<12-digit image id>.png, <output_dir>/val/...
// Each image holds 1..max_objects shapes of random class, colour (never the
// class's cue), size (1/8 to 1/2 of the image side) and aspect ratio (1:2 to
// 2:1). Shapes may overlap (box IoU <= 0.3, larger shapes drawn first); a
// box is the tight box of the shape's pixels, its area the pixel count.
// Every random draw is integer arithmetic on a fixed generator seeded from
// (seed, split, image index): the same options give byte-identical files on
// any platform, and an image does not change when the counts change.
//
// Thread-safe for distinct output directories.
#ifndef TERN_WORKER_DETECTION_SYNTH_H_
#define TERN_WORKER_DETECTION_SYNTH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace tern::detection {

// Class names in class-index order; category id = class index + 1.
const std::vector<std::string>& SynthClassNames();

struct SynthOptions {
  std::string output_dir;  // required; created if missing
  int image_size = 64;     // square images, pixels, [32, 4096]
  int train_images = 512;  // [1, 1000000]
  int val_images = 128;    // [0, 1000000]
  int max_objects = 4;     // objects per image uniform in [1, max], [1, 64]
  int num_classes = 4;     // the first N of SynthClassNames(), [1, 4]
  uint64_t seed = 1;

  Status Validate() const;  // INVALID_ARGUMENT naming the field
};

struct SynthSummary {
  int train_images = 0;
  int val_images = 0;
  int64_t train_objects = 0;
  int64_t val_objects = 0;
};

// Validates `options`, then writes every image (plain writes) and, last,
// each split's annotation JSON (atomically): a data set with its JSON files
// present is complete. Overwrites files of an earlier run and leaves other
// files alone. Blocks; errors from the file system are returned as they are.
StatusOr<SynthSummary> WriteSynthCoco(const SynthOptions& options);

}  // namespace tern::detection

#endif  // TERN_WORKER_DETECTION_SYNTH_H_
