#include "worker/trainer/detection_data.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <set>
#include <utility>

#include "common/check.h"
#include "worker/trainer/image_decode.h"
#include "worker/trainer/random.h"

namespace tern::trainer {
namespace {

namespace fs = std::filesystem;
using detection::BoxXywh;
using detection::CocoSplit;
using detection::ImageRecord;

constexpr uint64_t kDetectionAugmentSalt = 0x6465745f61756721ULL;  // "det_aug!"
constexpr double kMinScale = 0.6, kMaxScale = 1.4;
constexpr double kMinKeptArea = 0.3;
constexpr double kGaussianMinOverlap = 0.7;

std::string Resolve(const std::string& root, const std::string& path) {
  return fs::path(path).is_absolute() ? path : (fs::path(root) / path).string();
}

// The images at `rows` (indices into split.records, increasing) and their
// annotations.
CocoSplit SelectImages(const CocoSplit& split, const std::vector<int64_t>& rows) {
  CocoSplit out;
  out.dataset.categories = split.dataset.categories;
  std::set<int64_t> kept;
  for (const int64_t i : rows) {
    out.records.push_back(split.records[static_cast<size_t>(i)]);
    out.dataset.images.push_back(split.dataset.images[static_cast<size_t>(i)]);
    kept.insert(split.dataset.images[static_cast<size_t>(i)].id);
  }
  for (const auto& a : split.dataset.annotations) {
    if (kept.count(a.image_id)) out.dataset.annotations.push_back(a);
  }
  return out;
}

// Keeps the first `limit` images (all when limit <= 0) and their annotations.
void LimitImages(CocoSplit& split, int64_t limit) {
  if (limit <= 0 || static_cast<int64_t>(split.records.size()) <= limit) return;
  std::vector<int64_t> rows(static_cast<size_t>(limit));
  std::iota(rows.begin(), rows.end(), 0);
  split = SelectImages(split, rows);
}

// Zhou et al.'s (CenterNet / CornerNet) radius: the largest corner shift
// that keeps IoU >= min_overlap, for a box of h x w cells.
double GaussianRadius(double h, double w, double min_overlap) {
  const double b1 = h + w;
  const double c1 = w * h * (1 - min_overlap) / (1 + min_overlap);
  const double r1 = (b1 + std::sqrt(b1 * b1 - 4 * c1)) / 2;
  const double b2 = 2 * (h + w);
  const double c2 = (1 - min_overlap) * w * h;
  const double r2 = (b2 + std::sqrt(b2 * b2 - 16 * c2)) / 2;
  const double a3 = 4 * min_overlap;
  const double b3 = -2 * min_overlap * (h + w);
  const double c3 = (min_overlap - 1) * w * h;
  const double r3 = (b3 + std::sqrt(b3 * b3 - 4 * a3 * c3)) / 2;
  return std::min({r1, r2, r3});
}

// Writes max(heat, Gaussian of `radius` at (cx, cy)) into one class plane.
void DrawGaussian(float* plane, int64_t cells, int64_t cx, int64_t cy, int64_t radius) {
  const double sigma = (2.0 * radius + 1) / 6.0;
  for (int64_t y = std::max<int64_t>(0, cy - radius); y <= std::min(cells - 1, cy + radius); ++y) {
    for (int64_t x = std::max<int64_t>(0, cx - radius); x <= std::min(cells - 1, cx + radius);
         ++x) {
      const double d2 = static_cast<double>((x - cx) * (x - cx) + (y - cy) * (y - cy));
      const float g = static_cast<float>(std::exp(-d2 / (2 * sigma * sigma)));
      float& v = plane[y * cells + x];
      v = std::max(v, g);
    }
  }
}

// One object in input pixels.
struct InputBox {
  double x1, y1, x2, y2;
  int class_index;
};

// The record's non-crowd boxes through `p`, clipped; dropped when mostly
// outside the input or thinner than a pixel.
std::vector<InputBox> PlaceBoxes(const ImageRecord& record, const Placement& p, int size) {
  std::vector<InputBox> out;
  for (const auto& object : record.objects) {
    if (object.iscrowd) continue;
    double x1 = object.box.x, x2 = object.box.x + object.box.w;
    if (p.flip) {
      const double f1 = record.width - x2, f2 = record.width - x1;
      x1 = f1;
      x2 = f2;
    }
    InputBox box{p.scale * x1 + p.dx, p.scale * object.box.y + p.dy, p.scale * x2 + p.dx,
                 p.scale * (object.box.y + object.box.h) + p.dy, object.class_index};
    const double area = (box.x2 - box.x1) * (box.y2 - box.y1);
    box.x1 = std::clamp(box.x1, 0.0, static_cast<double>(size));
    box.x2 = std::clamp(box.x2, 0.0, static_cast<double>(size));
    box.y1 = std::clamp(box.y1, 0.0, static_cast<double>(size));
    box.y2 = std::clamp(box.y2, 0.0, static_cast<double>(size));
    const double w = box.x2 - box.x1, h = box.y2 - box.y1;
    if (w < 1 || h < 1 || w * h < kMinKeptArea * area) continue;
    out.push_back(box);
    if (static_cast<int>(out.size()) == kMaxObjects) break;
  }
  return out;
}

}  // namespace

StatusOr<DetectionSplits> LoadDetectionSplits(const DataConfig& data, uint64_t seed) {
  DetectionSplits splits;
  detection::CocoReadOptions options;
  const char* confine = std::getenv("TERN_CONFINE_DATA");  // tern-agent, under path roots
  options.file_names_inside_image_dir = confine != nullptr && std::string(confine) == "1";
  TERN_ASSIGN_OR_RETURN(splits.train,
                        detection::LoadCocoSplit(Resolve(data.path, data.train_annotations),
                                                 Resolve(data.path, data.train_images), options));
  TERN_ASSIGN_OR_RETURN(splits.val,
                        detection::LoadCocoSplit(Resolve(data.path, data.val_annotations),
                                                 Resolve(data.path, data.val_images), options));
  LimitImages(splits.train, data.max_train_examples);
  LimitImages(splits.val, data.max_eval_examples);
  if (data.val_fraction > 0) {
    TERN_ASSIGN_OR_RETURN(const ValidationRows rows,
                          SplitForValidation(static_cast<int64_t>(splits.train.records.size()),
                                             data.val_fraction, seed));
    splits.held_out = SelectImages(splits.train, rows.val);
    splits.train = SelectImages(splits.train, rows.train);
  }
  if (splits.train.records.empty()) {
    return InvalidArgumentError("dataset.train_annotations: " +
                                Resolve(data.path, data.train_annotations) + " lists no images");
  }
  if (splits.val.records.empty()) {
    return InvalidArgumentError("dataset.val_annotations: " +
                                Resolve(data.path, data.val_annotations) + " lists no images");
  }
  const auto& a = splits.train.dataset.categories;
  const auto& b = splits.val.dataset.categories;
  const bool same = a.size() == b.size() &&
                    std::equal(a.begin(), a.end(), b.begin(), [](const auto& x, const auto& y) {
                      return x.id == y.id && x.name == y.name;
                    });
  if (!same) {
    return InvalidArgumentError("dataset.val_annotations: its categories differ from "
                                "dataset.train_annotations' (ids and names must match)");
  }
  if (a.empty()) {
    return InvalidArgumentError("dataset.train_annotations: no categories");
  }
  return splits;
}

Placement Letterbox(int width, int height, int size) {
  Placement p;
  p.scale = static_cast<double>(size) / std::max(width, height);
  p.dx = (size - p.scale * width) / 2;
  p.dy = (size - p.scale * height) / 2;
  return p;
}

BoxXywh ToImageBox(const Placement& p, int width, int height, double x1, double y1, double x2,
                   double y2) {
  auto image_x = [&](double x) {
    const double u = (x - p.dx) / p.scale;
    return std::clamp(p.flip ? width - u : u, 0.0, static_cast<double>(width));
  };
  auto image_y = [&](double y) {
    return std::clamp((y - p.dy) / p.scale, 0.0, static_cast<double>(height));
  };
  double ax = image_x(x1), bx = image_x(x2);
  if (ax > bx) std::swap(ax, bx);
  const double ay = image_y(y1), by = image_y(y2);
  return BoxXywh{ax, ay, bx - ax, by - ay};
}

Placement TrainPlacement(const ImageRecord& record, const DetectionLoaderOptions& options,
                         int64_t epoch, int64_t index) {
  Placement p = Letterbox(record.width, record.height, options.input_size);
  if (!options.augment) return p;
  SplitMix64 rng(Mix(Mix(Mix(options.seed ^ kDetectionAugmentSalt) + static_cast<uint64_t>(epoch)) +
                     static_cast<uint64_t>(index)));
  p.flip = rng.Below(2) == 1;
  p.scale *= kMinScale + (kMaxScale - kMinScale) * rng.Uniform();
  const double size = options.input_size;
  const double w = p.scale * record.width, h = p.scale * record.height;
  // Anywhere from touching one edge to touching the other: a random crop
  // when the image is larger than the input, a random placement otherwise.
  p.dx = std::min(0.0, size - w) + std::abs(size - w) * rng.Uniform();
  p.dy = std::min(0.0, size - h) + std::abs(size - h) * rng.Uniform();
  return p;
}

StatusOr<Normalization> DetectionMeanStd(const CocoSplit& train, int max_images) {
  double sum[3] = {0, 0, 0}, sum_sq[3] = {0, 0, 0};
  int64_t pixels = 0;
  const size_t n = std::min<size_t>(train.records.size(), static_cast<size_t>(max_images));
  for (size_t i = 0; i < n; ++i) {
    ImageHeader header;
    TERN_ASSIGN_OR_RETURN(const std::vector<uint8_t> planes,
                          DecodeImage(train.records[i].path, 3, &header));
    const size_t plane = planes.size() / 3;
    for (int c = 0; c < 3; ++c) {
      for (size_t k = 0; k < plane; ++k) {
        const double v = planes[c * plane + k] / 255.0;
        sum[c] += v;
        sum_sq[c] += v * v;
      }
    }
    pixels += static_cast<int64_t>(plane);
  }
  Normalization norm;
  for (int c = 0; c < 3; ++c) {
    const double mean = pixels > 0 ? sum[c] / pixels : 0.0;
    const double var = pixels > 0 ? sum_sq[c] / pixels - mean * mean : 1.0;
    norm.mean.push_back(static_cast<float>(mean));
    norm.std.push_back(static_cast<float>(var > 1e-12 ? std::sqrt(var) : 1.0));
  }
  return norm;
}

Status RenderImage(const ImageRecord& record, const Placement& p, const Normalization& norm,
                   int size, float* out) {
  ImageHeader header;
  TERN_ASSIGN_OR_RETURN(const std::vector<uint8_t> planes, DecodeImage(record.path, 3, &header));
  if (header.width != record.width || header.height != record.height) {
    return DataLossError(record.path + ": the image is " + std::to_string(header.width) + "x" +
                         std::to_string(header.height) + ", its annotation says " +
                         std::to_string(record.width) + "x" + std::to_string(record.height));
  }
  const int w = header.width, h = header.height;
  const size_t plane = static_cast<size_t>(w) * h;
  // Source coordinates of every output column / row (pixel centres).
  std::vector<double> sx(size), sy(size);
  for (int u = 0; u < size; ++u) {
    const double x = (u + 0.5 - p.dx) / p.scale;
    sx[u] = (p.flip ? w - x : x) - 0.5;
  }
  for (int v = 0; v < size; ++v) sy[v] = (v + 0.5 - p.dy) / p.scale - 0.5;
  for (int c = 0; c < 3; ++c) {
    const uint8_t* src = planes.data() + c * plane;
    const float mean = norm.mean[c], inv_std = 1.0f / norm.std[c];
    float* dst = out + static_cast<size_t>(c) * size * size;
    for (int v = 0; v < size; ++v) {
      const double y = sy[v];
      const bool y_inside = y >= -0.5 && y <= h - 0.5;
      const double yc = std::clamp(y, 0.0, static_cast<double>(h - 1));
      const int y0 = static_cast<int>(yc), y1 = std::min(y0 + 1, h - 1);
      const float fy = static_cast<float>(yc - y0);
      for (int u = 0; u < size; ++u) {
        const double x = sx[u];
        if (!y_inside || x < -0.5 || x > w - 0.5) {
          dst[v * size + u] = 0.0f;  // the mean colour
          continue;
        }
        const double xc = std::clamp(x, 0.0, static_cast<double>(w - 1));
        const int x0 = static_cast<int>(xc), x1 = std::min(x0 + 1, w - 1);
        const float fx = static_cast<float>(xc - x0);
        const float top = src[y0 * w + x0] * (1 - fx) + src[y0 * w + x1] * fx;
        const float bottom = src[y1 * w + x0] * (1 - fx) + src[y1 * w + x1] * fx;
        const float value = (top * (1 - fy) + bottom * fy) / 255.0f;
        dst[v * size + u] = (value - mean) * inv_std;
      }
    }
  }
  return OkStatus();
}

DetectionLoader::DetectionLoader(const CocoSplit& split, const ShardedSampler& sampler,
                                 DetectionLoaderOptions options, int num_threads, int prefetch)
    : split_(split),
      sampler_(sampler),
      options_(std::move(options)),
      prefetcher_([this](int64_t epoch, int64_t step) { return Build(epoch, step); },
                  sampler.steps_per_epoch(), num_threads, prefetch) {
  TERN_CHECK(sampler.dataset_size() == static_cast<int64_t>(split.records.size()))
      << "sampler over " << sampler.dataset_size() << " images, split has "
      << split.records.size();
  TERN_CHECK(options_.input_size % kDetectionStride == 0) << options_.input_size;
  TERN_CHECK(options_.norm.mean.size() == 3 && options_.norm.std.size() == 3);
}

StatusOr<DetectionBatch> DetectionLoader::Build(int64_t epoch, int64_t step) const {
  const std::vector<int64_t> indices = sampler_.Indices(epoch, step);
  const int64_t b = static_cast<int64_t>(indices.size());
  const int size = options_.input_size;
  const int64_t cells = size / kDetectionStride;
  const int64_t classes = options_.num_classes;
  std::vector<Placement> placements;
  std::vector<std::vector<InputBox>> boxes;
  int64_t k = 1;
  for (const int64_t index : indices) {
    const ImageRecord& record = split_.records[static_cast<size_t>(index)];
    placements.push_back(TrainPlacement(record, options_, epoch, index));
    boxes.push_back(PlaceBoxes(record, placements.back(), size));
    k = std::max<int64_t>(k, static_cast<int64_t>(boxes.back().size()));
  }
  DetectionBatch batch;
  batch.epoch = epoch;
  batch.step = step;
  const at::TensorOptions f32 =
      at::TensorOptions().dtype(at::kFloat).pinned_memory(options_.pin_memory);
  batch.images = at::empty({b, 3, size, size}, f32);
  batch.heatmap = at::zeros({b, classes, cells, cells}, f32);
  batch.index = at::zeros({b, k}, f32.dtype(at::kLong));
  batch.size = at::zeros({b, k, 2}, f32);
  batch.offset = at::zeros({b, k, 2}, f32);
  batch.mask = at::zeros({b, k}, f32);
  float* images = batch.images.data_ptr<float>();
  float* heat = batch.heatmap.data_ptr<float>();
  int64_t* index = batch.index.data_ptr<int64_t>();
  float* wh = batch.size.data_ptr<float>();
  float* offset = batch.offset.data_ptr<float>();
  float* mask = batch.mask.data_ptr<float>();
  for (int64_t i = 0; i < b; ++i) {
    const ImageRecord& record = split_.records[static_cast<size_t>(indices[i])];
    TERN_RETURN_IF_ERROR(RenderImage(record, placements[i], options_.norm, size,
                                     images + i * 3 * size * size));
    for (size_t j = 0; j < boxes[i].size(); ++j) {
      const InputBox& box = boxes[i][j];
      const double cx = (box.x1 + box.x2) / 2 / kDetectionStride;
      const double cy = (box.y1 + box.y2) / 2 / kDetectionStride;
      const double bw = (box.x2 - box.x1) / kDetectionStride;
      const double bh = (box.y2 - box.y1) / kDetectionStride;
      const int64_t ix = std::clamp<int64_t>(static_cast<int64_t>(cx), 0, cells - 1);
      const int64_t iy = std::clamp<int64_t>(static_cast<int64_t>(cy), 0, cells - 1);
      const int64_t radius = std::max<int64_t>(
          0, static_cast<int64_t>(GaussianRadius(std::ceil(bh), std::ceil(bw), kGaussianMinOverlap)));
      DrawGaussian(heat + (i * classes + box.class_index) * cells * cells, cells, ix, iy, radius);
      const int64_t slot = i * k + static_cast<int64_t>(j);
      index[slot] = iy * cells + ix;
      wh[2 * slot] = static_cast<float>(bw);
      wh[2 * slot + 1] = static_cast<float>(bh);
      offset[2 * slot] = static_cast<float>(cx - ix);
      offset[2 * slot + 1] = static_cast<float>(cy - iy);
      mask[slot] = 1.0f;
    }
  }
  return batch;
}

}  // namespace tern::trainer
