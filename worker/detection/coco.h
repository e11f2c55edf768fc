// COCO-format object detection annotations: reading, validating, writing.
//
// ReadCocoFile parses an instances_*.json file (images, categories,
// annotations with [x, y, w, h] pixel boxes) and checks every field; an error
// names the file and the JSON path ("a.json: annotations[12].bbox: expected 4
// numbers"). Categories are sorted by id and a category's position is its
// contiguous class index. LoadCocoSplit adds per-image records with resolved
// image paths, which is what a training data loader needs.
//
// All functions are thread-safe; the structs are plain values.
#ifndef TERN_WORKER_DETECTION_COCO_H_
#define TERN_WORKER_DETECTION_COCO_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace tern::detection {

// An axis-aligned box in pixels, COCO's [x, y, width, height] with (x, y) the
// top-left corner; pixel (i, j) covers [i, i+1) x [j, j+1).
struct BoxXywh {
  double x = 0;
  double y = 0;
  double w = 0;
  double h = 0;
};

struct CocoImage {
  int64_t id = 0;
  std::string file_name;  // relative to the split's image directory
  int width = 0;          // pixels, > 0
  int height = 0;         // pixels, > 0
};

struct CocoCategory {
  int64_t id = 0;
  std::string name;
};

struct CocoAnnotation {
  int64_t id = 0;
  int64_t image_id = 0;
  int64_t category_id = 0;
  BoxXywh bbox;     // within the image (see BoxPolicy)
  // The box as the file wrote it, where BoxPolicy::kClip changed it (nullopt
  // otherwise): training targets use `bbox`, COCO evaluation this, as
  // pycocotools scores the file's boxes.
  std::optional<BoxXywh> file_bbox;
  double area = 0;  // the file's "area" (COCO: segment area), else w * h
  bool iscrowd = false;
};

struct CocoDataset {
  std::vector<CocoImage> images;            // file order; ids unique
  std::vector<CocoCategory> categories;     // sorted by id; index = class
  std::vector<CocoAnnotation> annotations;  // file order; ids unique

  // The class index of `category_id` (its position in `categories`), or -1.
  int ClassIndex(int64_t category_id) const;
};

// What the reader does with a box that extends beyond its image.
enum class BoxPolicy {
  kClip,    // clip it to the image (a box with nothing inside is an error)
  kReject,  // INVALID_ARGUMENT for any coordinate outside [0, w] x [0, h]
  kKeep,    // keep it as written (pycocotools does; tern-coco-eval)
};

struct CocoReadOptions {
  BoxPolicy out_of_image = BoxPolicy::kClip;  // real COCO has a few such boxes
  // LoadCocoSplit: every file_name must name a file beneath the image
  // directory (relative, no ".." component); INVALID_ARGUMENT otherwise.
  // Set for jobs with path roots (ternd --read-roots), whose trainers may
  // read only what their spec names (tern-agent sets TERN_CONFINE_DATA=1).
  bool file_names_inside_image_dir = false;
};

// Parses COCO JSON text; `source` (usually the path) prefixes every error.
// DATA_LOSS for text that is not JSON (e.g. a truncated file),
// INVALID_ARGUMENT "<source>: <json path>: <problem>" for a schema violation:
// a missing or mistyped field, a duplicate or unknown id, a negative or
// non-finite box or area.
StatusOr<CocoDataset> ParseCocoJson(std::string_view json,
                                    const std::string& source,
                                    const CocoReadOptions& options = {});

// ReadFileToString + ParseCocoJson; NOT_FOUND for a missing file.
StatusOr<CocoDataset> ReadCocoFile(const std::string& path,
                                   const CocoReadOptions& options = {});

// The dataset as COCO JSON (keys sorted, compact, one trailing newline, plus
// "info": {"description": description} and empty "licenses"); an
// annotation's box is its file_bbox where set;
// ParseCocoJson(ToCocoJson(d)) == d for a valid d.
std::string ToCocoJson(const CocoDataset& dataset,
                       const std::string& description = "");

// One object of an ImageRecord.
struct ObjectBox {
  BoxXywh box;
  int class_index = 0;  // into CocoDataset::categories
  bool iscrowd = false;
};

// One image and its objects (annotation file order).
struct ImageRecord {
  int64_t image_id = 0;
  std::string path;  // image directory + file_name (file_name if absolute)
  int width = 0;
  int height = 0;
  std::vector<ObjectBox> objects;
};

struct CocoSplit {
  CocoDataset dataset;               // the ground truth, for evaluation
  std::vector<ImageRecord> records;  // one per image, in dataset.images order
};

// Reads `annotations_path` and builds one record per image, every image path
// resolved against `image_dir`. NOT_FOUND (naming images[i].file_name) when an
// image file does not exist; the images are not decoded.
StatusOr<CocoSplit> LoadCocoSplit(const std::string& annotations_path,
                                  const std::string& image_dir,
                                  const CocoReadOptions& options = {});

}  // namespace tern::detection

#endif  // TERN_WORKER_DETECTION_COCO_H_
