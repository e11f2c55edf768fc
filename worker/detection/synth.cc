#include "worker/detection/synth.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <utility>

#include "common/file_util.h"
#include "worker/detection/coco.h"

// The one definition of stb's PNG writer in this library; static, so it cannot
// clash with another copy elsewhere in the program.
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

namespace tern::detection {
namespace {

namespace fs = std::filesystem;

enum Shape { kRectangle = 0, kEllipse = 1, kTriangle = 2, kCross = 3 };
constexpr int kNumShapes = 4;
constexpr int kPlacementTries = 20;
constexpr int kColourTries = 16;
constexpr int kMinContrast = 160;  // L1 distance of shape and background colour
constexpr int kBackgroundNoise = 20;
constexpr int kShapeNoise = 10;

// SplitMix64 (Steele et al.): integer-only, so identical on every platform,
// unlike the <random> distributions.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [lo, hi]; the modulo bias is below 2^-40 for these ranges.
  int Uniform(int lo, int hi) {
    return lo + static_cast<int>(Next() % static_cast<uint64_t>(hi - lo + 1));
  }

 private:
  uint64_t state_;
};

uint64_t Mix(uint64_t x) { return Rng(x).Next(); }

using Rgb = std::array<int, 3>;

struct Object {
  int class_index = 0;
  int x0 = 0, y0 = 0, w = 0, h = 0;  // nominal box (placement)
  std::vector<uint8_t> mask;         // w * h, row-major, 1 = shape pixel
  Rgb colour{};
};

// Edge function of (a, b) at p, doubled coordinates.
int64_t Edge(int64_t ax, int64_t ay, int64_t bx, int64_t by, int64_t px,
             int64_t py) {
  return (bx - ax) * (py - ay) - (by - ay) * (px - ax);
}

// The pixels of `shape` in a w x h box, tested at pixel centres in doubled
// integer coordinates (pixel (i, j) has centre (2i + 1, 2j + 1)).
std::vector<uint8_t> ShapeMask(int shape, int w, int h, Rng& rng) {
  std::vector<uint8_t> mask(static_cast<size_t>(w) * h, 0);
  const int64_t W = 2 * int64_t{w}, H = 2 * int64_t{h};
  // Triangle: apex on one side (which one and where drawn at random), base on
  // the opposite side.
  int64_t v[3][2] = {};
  if (shape == kTriangle) {
    const int side = rng.Uniform(0, 3);
    const int64_t ax = 2 * int64_t{rng.Uniform(0, w)};
    const int64_t ay = 2 * int64_t{rng.Uniform(0, h)};
    const int64_t tri[4][3][2] = {{{ax, 0}, {0, H}, {W, H}},
                                  {{ax, H}, {0, 0}, {W, 0}},
                                  {{0, ay}, {W, 0}, {W, H}},
                                  {{W, ay}, {0, 0}, {0, H}}};
    std::copy(&tri[side][0][0], &tri[side][0][0] + 6, &v[0][0]);
  }
  const int bar_h = std::max(2, h / 3), bar_w = std::max(2, w / 3);
  const int row0 = (h - bar_h) / 2, col0 = (w - bar_w) / 2;
  for (int j = 0; j < h; ++j) {
    for (int i = 0; i < w; ++i) {
      const int64_t px = 2 * int64_t{i} + 1, py = 2 * int64_t{j} + 1;
      bool inside = false;
      switch (shape) {
        case kRectangle:
          inside = true;
          break;
        case kEllipse: {
          // Centre (w, h) and semi-axes w, h in doubled coordinates.
          const int64_t dx = px - w, dy = py - h, a = w, b = h;
          inside = dx * dx * b * b + dy * dy * a * a <= a * a * b * b;
          break;
        }
        case kTriangle: {
          const int64_t e0 = Edge(v[0][0], v[0][1], v[1][0], v[1][1], px, py);
          const int64_t e1 = Edge(v[1][0], v[1][1], v[2][0], v[2][1], px, py);
          const int64_t e2 = Edge(v[2][0], v[2][1], v[0][0], v[0][1], px, py);
          inside = (e0 >= 0 && e1 >= 0 && e2 >= 0) ||
                   (e0 <= 0 && e1 <= 0 && e2 <= 0);
          break;
        }
        case kCross:
          inside = (j >= row0 && j < row0 + bar_h) ||
                   (i >= col0 && i < col0 + bar_w);
          break;
      }
      mask[static_cast<size_t>(j) * w + i] = inside;
    }
  }
  return mask;
}

// 10 * intersection <= 3 * union, i.e. box IoU <= 0.3, in integers.
bool OverlapAllowed(const Object& a, const Object& b) {
  const int64_t iw = std::min(a.x0 + a.w, b.x0 + b.w) - std::max(a.x0, b.x0);
  const int64_t ih = std::min(a.y0 + a.h, b.y0 + b.h) - std::max(a.y0, b.y0);
  if (iw <= 0 || ih <= 0) return true;
  const int64_t inter = iw * ih;
  const int64_t uni = int64_t{a.w} * a.h + int64_t{b.w} * b.h - inter;
  return 10 * inter <= 3 * uni;
}

uint8_t Clamp(int v) { return static_cast<uint8_t>(std::clamp(v, 0, 255)); }

struct Rendered {
  std::vector<uint8_t> rgb;           // size * size * 3, interleaved
  std::vector<CocoAnnotation> boxes;  // ids and image id left 0
};

Rendered Render(const SynthOptions& o, uint64_t seed) {
  Rng rng(seed);
  const int size = o.image_size;
  const int min_side = std::max(6, size / 8);
  const int max_side = std::max(min_side, size / 2);

  const Rgb background{rng.Uniform(0, 255), rng.Uniform(0, 255),
                       rng.Uniform(0, 255)};
  const int grad_x = rng.Uniform(-48, 48), grad_y = rng.Uniform(-48, 48);

  // Plan every object first: all random draws happen in a fixed order.
  std::vector<Object> objects;
  const int count = rng.Uniform(1, o.max_objects);
  for (int n = 0; n < count; ++n) {
    Object obj;
    obj.class_index = rng.Uniform(0, o.num_classes - 1);
    obj.w = rng.Uniform(min_side, max_side);
    obj.h = rng.Uniform(std::max(min_side, (obj.w + 1) / 2),
                        std::min(max_side, 2 * obj.w));
    obj.mask = ShapeMask(obj.class_index, obj.w, obj.h, rng);
    bool placed = false;
    for (int t = 0; t < kPlacementTries && !placed; ++t) {
      obj.x0 = rng.Uniform(0, size - obj.w);
      obj.y0 = rng.Uniform(0, size - obj.h);
      placed = std::all_of(
          objects.begin(), objects.end(),
          [&](const Object& other) { return OverlapAllowed(obj, other); });
    }
    bool contrast = false;
    for (int t = 0; t < kColourTries && !contrast; ++t) {
      obj.colour = {rng.Uniform(0, 255), rng.Uniform(0, 255),
                    rng.Uniform(0, 255)};
      int dist = 0;
      for (int ch = 0; ch < 3; ++ch)
        dist += std::abs(obj.colour[ch] - background[ch]);
      contrast = dist >= kMinContrast;
    }
    if (!contrast) {
      for (int ch = 0; ch < 3; ++ch)
        obj.colour[ch] = background[ch] < 128 ? 255 : 0;
    }
    if (placed) objects.push_back(std::move(obj));
  }
  // Larger shapes first, so a smaller one on top stays visible.
  std::stable_sort(
      objects.begin(), objects.end(),
      [](const Object& a, const Object& b) { return a.w * a.h > b.w * b.h; });

  Rendered out;
  out.rgb.resize(static_cast<size_t>(size) * size * 3);
  for (int j = 0; j < size; ++j) {
    for (int i = 0; i < size; ++i) {
      // Integer division truncates toward zero in C++11 and later.
      const int ramp =
          (grad_x * (2 * i - size) + grad_y * (2 * j - size)) / (2 * size);
      uint8_t* px = &out.rgb[(static_cast<size_t>(j) * size + i) * 3];
      for (int ch = 0; ch < 3; ++ch) {
        px[ch] = Clamp(background[ch] + ramp +
                       rng.Uniform(-kBackgroundNoise, kBackgroundNoise));
      }
    }
  }
  for (const Object& obj : objects) {
    int min_i = obj.w, min_j = obj.h, max_i = -1, max_j = -1;
    int64_t area = 0;
    for (int j = 0; j < obj.h; ++j) {
      for (int i = 0; i < obj.w; ++i) {
        if (!obj.mask[static_cast<size_t>(j) * obj.w + i]) continue;
        uint8_t* px =
            &out.rgb[(static_cast<size_t>(obj.y0 + j) * size + obj.x0 + i) * 3];
        for (int ch = 0; ch < 3; ++ch) {
          px[ch] =
              Clamp(obj.colour[ch] + rng.Uniform(-kShapeNoise, kShapeNoise));
        }
        min_i = std::min(min_i, i), max_i = std::max(max_i, i);
        min_j = std::min(min_j, j), max_j = std::max(max_j, j);
        ++area;
      }
    }
    TERN_CHECK(area > 0) << "empty shape " << obj.class_index << " " << obj.w
                         << "x" << obj.h;
    CocoAnnotation ann;
    ann.category_id = obj.class_index + 1;
    ann.bbox = BoxXywh{double(obj.x0 + min_i), double(obj.y0 + min_j),
                       double(max_i - min_i + 1), double(max_j - min_j + 1)};
    ann.area = static_cast<double>(area);
    out.boxes.push_back(ann);
  }
  return out;
}

void AppendBytes(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data),
                                             static_cast<size_t>(size));
}

Status WritePng(const std::string& path, const std::vector<uint8_t>& rgb,
                int size) {
  std::string png;
  if (stbi_write_png_to_func(AppendBytes, &png, size, size, 3, rgb.data(),
                             size * 3) == 0) {
    return InternalError("cannot encode PNG " + path);
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(png.data(), static_cast<std::streamsize>(png.size()));
  out.close();
  if (!out) return UnavailableError("cannot write " + path);
  return OkStatus();
}

Status CheckRange(const char* field, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) {
    return InvalidArgumentError(std::string(field) + ": must be in [" +
                                std::to_string(lo) + ", " + std::to_string(hi) +
                                "], got " + std::to_string(value));
  }
  return OkStatus();
}

}  // namespace

const std::vector<std::string>& SynthClassNames() {
  static const std::vector<std::string> names = {"rectangle", "ellipse",
                                                 "triangle", "cross"};
  return names;
}

Status SynthOptions::Validate() const {
  if (output_dir.empty())
    return InvalidArgumentError("output_dir: must not be empty");
  TERN_RETURN_IF_ERROR(CheckRange("image_size", image_size, 32, 4096));
  TERN_RETURN_IF_ERROR(CheckRange("train_images", train_images, 1, 1000000));
  TERN_RETURN_IF_ERROR(CheckRange("val_images", val_images, 0, 1000000));
  TERN_RETURN_IF_ERROR(CheckRange("max_objects", max_objects, 1, 64));
  TERN_RETURN_IF_ERROR(CheckRange("num_classes", num_classes, 1, kNumShapes));
  return OkStatus();
}

StatusOr<SynthSummary> WriteSynthCoco(const SynthOptions& options) {
  TERN_RETURN_IF_ERROR(options.Validate());
  const fs::path root(options.output_dir);
  TERN_RETURN_IF_ERROR(MakeDirectories((root / "annotations").string()));

  SynthSummary summary;
  int64_t next_image_id = 1;
  int64_t next_annotation_id = 1;
  const char* const splits[2] = {"train", "val"};
  for (int s = 0; s < 2; ++s) {
    const int count = s == 0 ? options.train_images : options.val_images;
    const fs::path dir = root / splits[s];
    TERN_RETURN_IF_ERROR(MakeDirectories(dir.string()));
    CocoDataset ds;
    for (int k = 0; k < options.num_classes; ++k) {
      ds.categories.push_back(CocoCategory{k + 1, SynthClassNames()[k]});
    }
    for (int i = 0; i < count; ++i) {
      const uint64_t image_seed = Mix(
          options.seed ^ Mix((uint64_t(s) << 32) | static_cast<uint64_t>(i)));
      Rendered r = Render(options, image_seed);
      char name[32];
      std::snprintf(name, sizeof(name), "%012lld.png",
                    static_cast<long long>(next_image_id));
      TERN_RETURN_IF_ERROR(
          WritePng((dir / name).string(), r.rgb, options.image_size));
      ds.images.push_back(CocoImage{next_image_id, name, options.image_size,
                                    options.image_size});
      for (CocoAnnotation& a : r.boxes) {
        a.id = next_annotation_id++;
        a.image_id = next_image_id;
        ds.annotations.push_back(a);
      }
      ++next_image_id;
    }
    const std::string json = ToCocoJson(
        ds, "tern synthetic shapes, seed " + std::to_string(options.seed));
    TERN_RETURN_IF_ERROR(
        WriteFileAtomically((root / "annotations" /
                             (std::string("instances_") + splits[s] + ".json"))
                                .string(),
                            json));
    (s == 0 ? summary.train_images : summary.val_images) = count;
    (s == 0 ? summary.train_objects : summary.val_objects) =
        static_cast<int64_t>(ds.annotations.size());
  }
  return summary;
}

}  // namespace tern::detection
