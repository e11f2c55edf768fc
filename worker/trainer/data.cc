#include "worker/trainer/data.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <numeric>
#include <set>
#include <system_error>
#include <type_traits>

#include "common/file_util.h"
#include "common/logging.h"
#include "common/utf8.h"
#include "worker/trainer/idx_format.h"
#include "worker/trainer/image_decode.h"
#include "worker/trainer/random.h"

namespace tern::trainer {
namespace {

namespace fs = std::filesystem;

// Salts that keep the random streams of different purposes apart.
constexpr uint64_t kValSplitSalt = 0x76616c5f73706c74ULL;  // "val_splt"
constexpr uint64_t kAugmentSalt = 0x6175676d656e7421ULL;   // "augment!"
constexpr uint64_t kSyntheticSalt = 0x73796e7468657469ULL;  // "syntheti"
// Synthetic sets: default sizes, and a cap on their memory.
constexpr int64_t kSyntheticTrainImages = 2048;
constexpr int64_t kSyntheticTestImages = 256;
constexpr int64_t kSyntheticSide = 224;
constexpr int64_t kMaxSyntheticBytes = int64_t{16} << 30;

// In-place Fisher-Yates shuffle.
void Shuffle(std::vector<int64_t>& v, uint64_t seed) {
  SplitMix64 rng(seed);
  for (size_t i = v.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(rng.Below(i));
    std::swap(v[i - 1], v[j]);
  }
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

bool IsFile(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

bool IsDirectory(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

std::string Dims(int64_t h, int64_t w) {
  return std::to_string(h) + "x" + std::to_string(w);
}


// ---------------------------------------------------------------- datasets

// Labels must lie in [0, num_classes); `source` names where they came from.
Status CheckLabels(const ImageDataset& d, int64_t num_classes,
                   const std::string& source) {
  const int64_t* labels = d.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < d.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= num_classes) {
      return InvalidArgumentError(
          source + ": label " + std::to_string(labels[i]) + " of example " +
          std::to_string(i) + " is out of range: the training set has " +
          std::to_string(num_classes) + " classes");
    }
  }
  return OkStatus();
}

ImageDataset Select(const ImageDataset& d, const std::vector<int64_t>& rows) {
  at::Tensor index = at::empty({static_cast<int64_t>(rows.size())}, at::kLong);
  std::copy(rows.begin(), rows.end(), index.data_ptr<int64_t>());
  ImageDataset out;
  out.images = d.images.index_select(0, index).contiguous();
  out.labels = d.labels.index_select(0, index).contiguous();
  out.num_classes = d.num_classes;
  out.class_names = d.class_names;
  return out;
}

ImageDataset FirstN(const ImageDataset& d, int64_t n) {
  if (n <= 0 || n >= d.size()) return d;
  ImageDataset out = d;
  out.images = d.images.narrow(0, 0, n).clone();
  out.labels = d.labels.narrow(0, 0, n).clone();
  return out;
}

// Every image resized to size x size (square in, square out: no crop).
ImageDataset ResizeDataset(const ImageDataset& d, int64_t size) {
  const int64_t n = d.size(), c = d.channels(), h = d.height(), w = d.width();
  ImageDataset out = d;
  out.images = at::empty({n, c, size, size}, at::kByte);
  const uint8_t* src = d.images.data_ptr<uint8_t>();
  uint8_t* dst = out.images.data_ptr<uint8_t>();
  for (int64_t i = 0; i < n; ++i) {
    ResizeAndCenterCrop(src + i * c * h * w, static_cast<int>(c),
                        static_cast<int>(w), static_cast<int>(h),
                        static_cast<int>(size), dst + i * c * size * size);
  }
  return out;
}

// Looks for <dir>/<split>-<what>-<idxN>-ubyte and MNIST's
// <split>-<what>.<idxN>-ubyte, each plain or .gz.
StatusOr<std::string> FindIdxFile(const std::string& dir,
                                  const std::string& split,
                                  const std::string& what,
                                  const std::string& idx) {
  const std::string dashed = split + "-" + what + "-" + idx + "-ubyte";
  const std::string dotted = split + "-" + what + "." + idx + "-ubyte";
  for (const std::string& name :
       {dashed, dashed + ".gz", dotted, dotted + ".gz"}) {
    const std::string path = JoinPath(dir, name);
    if (IsFile(path)) return path;
  }
  return NotFoundError(JoinPath(dir, dashed) +
                       " not found (also tried .gz and " + dotted + ")");
}

// Runs fn(0..n-1) on a few threads. Returns an error of the lowest failing
// index seen; stops handing out work after the first failure.
Status ParallelFor(int64_t n, const std::function<Status(int64_t)>& fn) {
  const int64_t threads = std::min<int64_t>(
      n, std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 8));
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  int64_t error_index = n;
  Status error;
  auto work = [&] {
    while (!failed.load()) {
      const int64_t i = next.fetch_add(1);
      if (i >= n) return;
      Status s = fn(i);
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (i < error_index) {
          error_index = i;
          error = std::move(s);
        }
        failed.store(true);
      }
    }
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  return error;
}

bool IsImageFile(const fs::path& p) {
  std::string ext = p.extension().string();
  for (char& ch : ext) ch = static_cast<char>(std::tolower(ch));
  for (const char* e : {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tga",
                        ".pgm", ".ppm", ".pnm"}) {
    if (ext == e) return true;
  }
  return false;
}

// Sorted names of the entries of `dir` that pass `keep` (hidden ones never).
StatusOr<std::vector<std::string>> ListDir(
    const std::string& dir, const std::function<bool(const fs::path&)>& keep) {
  std::error_code ec;
  std::vector<std::string> names;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    const fs::path& p = it->path();
    const std::string name = p.filename().string();
    if (name.empty() || name[0] == '.') continue;
    if (keep(p)) names.push_back(name);
  }
  if (ec) {
    return UnavailableError("cannot list " + dir + ": " + ec.message());
  }
  std::sort(names.begin(), names.end());
  return names;
}

StatusOr<ImageDataset> ReadImageFolderImpl(const std::string& split_dir,
                                           int64_t image_size,
                                           const ImageDataset* like) {
  if (image_size < 0 || image_size > INT_MAX) {
    return InvalidArgumentError("image_size: must be >= 0, got " +
                                std::to_string(image_size));
  }
  if (!IsDirectory(split_dir)) {
    return NotFoundError(split_dir + ": no such directory");
  }
  TERN_ASSIGN_OR_RETURN(std::vector<std::string> classes,
                        ListDir(split_dir, [](const fs::path& p) {
                          std::error_code ec;
                          return fs::is_directory(p, ec);
                        }));
  if (classes.empty()) {
    return InvalidArgumentError(
        split_dir + ": no class folders (expected <class>/<image>)");
  }
  // Files and labels, in class order then file-name order. Other files are
  // skipped, and said so: a data set of .tif files must not train on nothing
  // but its few .png ones without a word.
  std::vector<std::string> files;
  std::vector<int64_t> labels;
  int64_t skipped = 0;
  std::set<std::string> skipped_kinds;
  for (size_t k = 0; k < classes.size(); ++k) {
    int64_t label = static_cast<int64_t>(k);
    const std::string class_dir = JoinPath(split_dir, classes[k]);
    if (like != nullptr) {
      const auto& names = like->class_names;
      auto it = std::find(names.begin(), names.end(), classes[k]);
      if (it == names.end()) {
        return InvalidArgumentError(class_dir +
                                    ": class not present in the training set");
      }
      label = it - names.begin();
    }
    TERN_ASSIGN_OR_RETURN(std::vector<std::string> names,
                          ListDir(class_dir, [&](const fs::path& p) {
                            std::error_code ec;
                            if (!fs::is_regular_file(p, ec)) return false;
                            if (IsImageFile(p)) return true;
                            ++skipped;
                            skipped_kinds.insert(p.has_extension()
                                                     ? p.extension().string()
                                                     : "(no extension)");
                            return false;
                          }));
    if (names.empty()) {
      return InvalidArgumentError(
          class_dir +
          ": class folder is empty (no .png, .jpg, .jpeg, .webp, .bmp, "
          ".gif, .tga or .pnm images)");
    }
    for (const std::string& name : names) {
      files.push_back(JoinPath(class_dir, name));
      labels.push_back(label);
    }
  }
  if (skipped > 0) {
    std::string kinds;
    for (const std::string& kind : skipped_kinds) kinds += (kinds.empty() ? "" : ", ") + kind;
    TERN_LOG(WARNING) << split_dir << ": skipped " << skipped
                      << " files that are not images of a supported format (" << kinds << ")";
  }
  const int64_t n = static_cast<int64_t>(files.size());

  // Pass 1: headers only, to fix the channel count and check sizes.
  std::vector<ImageHeader> headers(files.size());
  TERN_RETURN_IF_ERROR(ParallelFor(n, [&](int64_t i) -> Status {
    TERN_ASSIGN_OR_RETURN(headers[i], ReadImageHeader(files[i]));
    return OkStatus();
  }));
  int64_t channels = 0;
  if (like != nullptr) {
    channels = like->channels();
  } else {
    bool grey = false, colour = false;
    for (const ImageHeader& h : headers)
      (h.channels <= 2 ? grey : colour) = true;
    channels = colour ? 3 : 1;
    if (grey && colour) {
      TERN_LOG(INFO) << split_dir
                     << ": grayscale and colour images mixed; using RGB";
    }
  }
  int64_t height = image_size, width = image_size;
  if (image_size == 0) {
    height = like != nullptr ? like->height() : headers[0].height;
    width = like != nullptr ? like->width() : headers[0].width;
    const std::string reference =
        like != nullptr ? "the training images are" : files[0] + " is";
    for (int64_t i = 0; i < n; ++i) {
      if (headers[i].height != height || headers[i].width != width) {
        return InvalidArgumentError(files[i] + ": image is " +
                                    Dims(headers[i].height, headers[i].width) +
                                    " (HxW) but " + reference + " " +
                                    Dims(height, width) +
                                    "; set an image size to resize all images");
      }
    }
  }

  // Pass 2: decode into the tensor.
  ImageDataset out;
  out.images = at::empty({n, channels, height, width}, at::kByte);
  out.labels = at::empty({n}, at::kLong);
  std::copy(labels.begin(), labels.end(), out.labels.data_ptr<int64_t>());
  out.class_names = like != nullptr ? like->class_names : classes;
  out.num_classes = static_cast<int64_t>(out.class_names.size());
  uint8_t* dst = out.images.data_ptr<uint8_t>();
  const int64_t image_bytes = channels * height * width;
  TERN_RETURN_IF_ERROR(ParallelFor(n, [&](int64_t i) -> Status {
    ImageHeader h;
    TERN_ASSIGN_OR_RETURN(
        std::vector<uint8_t> pixels,
        DecodeImage(files[i], static_cast<int>(channels), &h));
    if (h.width != headers[i].width || h.height != headers[i].height) {
      return DataLossError(files[i] + ": changed while reading");
    }
    uint8_t* slot = dst + i * image_bytes;
    if (image_size > 0) {
      ResizeAndCenterCrop(pixels.data(), static_cast<int>(channels), h.width,
                          h.height, static_cast<int>(image_size), slot);
    } else {
      std::memcpy(slot, pixels.data(), static_cast<size_t>(image_bytes));
    }
    return OkStatus();
  }));
  return out;
}

// ---------------------------------------------------------------- batches

// Writes one [C, H, W] image: out(c, y, x) = f(src(c, y + dy, x' + dx)) with
// x' = flip ? W-1-x : x, pixel 0 outside the image (zero padding before
// normalization, as torchvision pads); f normalizes (pixel * scale + bias per
// channel) for Out = float and is the identity for Out = uint8_t (norm unused).
template <typename Out>
void FillSample(const uint8_t* src, int64_t c_count, int64_t h, int64_t w,
                const Normalization& norm, int64_t dx, int64_t dy, bool flip,
                Out* dst) {
  for (int64_t c = 0; c < c_count; ++c) {
    float scale = 1, bias = 0;
    if constexpr (std::is_same_v<Out, float>) {
      scale = 1.0f / (255.0f * norm.std[c]);
      bias = -norm.mean[c] / norm.std[c];
    }
    const auto convert = [scale, bias](uint8_t v) -> Out {
      if constexpr (std::is_same_v<Out, float>) {
        return v * scale + bias;
      } else {
        return v;
      }
    };
    const Out black = convert(0);
    const uint8_t* plane = src + c * h * w;
    for (int64_t y = 0; y < h; ++y) {
      Out* row = dst + (c * h + y) * w;
      const int64_t sy = y + dy;
      if (sy < 0 || sy >= h) {
        std::fill(row, row + w, black);
        continue;
      }
      const uint8_t* src_row = plane + sy * w;
      if (dx == 0 && !flip) {
        for (int64_t x = 0; x < w; ++x) row[x] = convert(src_row[x]);
        continue;
      }
      for (int64_t x = 0; x < w; ++x) {
        const int64_t sx = (flip ? w - 1 - x : x) + dx;
        row[x] = (sx < 0 || sx >= w) ? black : convert(src_row[sx]);
      }
    }
  }
}

ImageDataset CheckedContiguous(const ImageDataset& data) {
  TERN_CHECK(data.images.defined() && data.images.dim() == 4 &&
             data.images.scalar_type() == at::kByte)
      << "images must be uint8 [N, C, H, W]";
  TERN_CHECK(data.labels.defined() && data.labels.dim() == 1 &&
             data.labels.scalar_type() == at::kLong &&
             data.labels.size(0) == data.images.size(0))
      << "labels must be int64 [N]";
  ImageDataset out = data;
  out.images = data.images.contiguous();
  out.labels = data.labels.contiguous();
  return out;
}

void CheckNorm(const Normalization& norm, int64_t channels) {
  TERN_CHECK(static_cast<int64_t>(norm.mean.size()) == channels &&
             static_cast<int64_t>(norm.std.size()) == channels)
      << "normalization has " << norm.mean.size() << "/" << norm.std.size()
      << " channels, the data " << channels;
}

}  // namespace

// ---------------------------------------------------------------- options

StatusOr<DatasetKind> ParseDatasetKind(const std::string& name) {
  std::string s;
  for (char ch : name) s += static_cast<char>(std::tolower(ch));
  if (s.rfind("dataset_", 0) == 0) s = s.substr(8);
  if (s.empty() || s == "unspecified" || s == "idx") return DatasetKind::kIdx;
  if (s == "cifar10") return DatasetKind::kCifar10;
  if (s == "cifar100") return DatasetKind::kCifar100;
  if (s == "image_folder") return DatasetKind::kImageFolder;
  if (s == "synthetic") return DatasetKind::kSynthetic;
  return InvalidArgumentError(
      "dataset.kind: unknown " + Quoted(name) +
      " (expected idx, cifar10, cifar100, image_folder or synthetic)");
}

const char* DatasetKindName(DatasetKind kind) {
  switch (kind) {
    case DatasetKind::kIdx:
      return "idx";
    case DatasetKind::kCifar10:
      return "cifar10";
    case DatasetKind::kCifar100:
      return "cifar100";
    case DatasetKind::kImageFolder:
      return "image_folder";
    case DatasetKind::kSynthetic:
      return "synthetic";
  }
  return "unknown";
}

StatusOr<ValidationRows> SplitForValidation(int64_t n, double fraction, uint64_t seed) {
  ValidationRows rows;
  int64_t n_val = 0;
  if (fraction > 0) {
    if (n < 2) {
      return InvalidArgumentError("dataset.val_fraction: cannot split a training set of " +
                                  std::to_string(n) + " image(s)");
    }
    n_val = std::clamp<int64_t>(std::llround(fraction * static_cast<double>(n)), 1, n - 1);
  }
  std::vector<int64_t> perm(static_cast<size_t>(std::max<int64_t>(n, 0)));
  std::iota(perm.begin(), perm.end(), 0);
  if (n_val > 0) Shuffle(perm, Mix(seed ^ kValSplitSalt));
  rows.val.assign(perm.begin(), perm.begin() + n_val);
  rows.train.assign(perm.begin() + n_val, perm.end());
  std::sort(rows.val.begin(), rows.val.end());
  std::sort(rows.train.begin(), rows.train.end());
  return rows;
}

Status DatasetOptions::Validate() const {
  if (path.empty() && kind != DatasetKind::kIdx &&
      kind != DatasetKind::kSynthetic) {
    return InvalidArgumentError(std::string("dataset.path: required for ") +
                                DatasetKindName(kind));
  }
  if (!(val_fraction >= 0 && val_fraction < 1)) {
    return InvalidArgumentError(
        "dataset.val_fraction: must be in [0, 1), got " +
        std::to_string(val_fraction));
  }
  if (train_limit < 0) {
    return InvalidArgumentError("dataset.train_limit: must be >= 0, got " +
                                std::to_string(train_limit));
  }
  if (test_limit < 0) {
    return InvalidArgumentError("dataset.test_limit: must be >= 0, got " +
                                std::to_string(test_limit));
  }
  if (image_size < 0 || image_size > 8192) {
    return InvalidArgumentError(
        "dataset.image_size: must be in [0, 8192], got " +
        std::to_string(image_size));
  }
  if (kind == DatasetKind::kSynthetic) {
    const int64_t side = image_size > 0 ? image_size : kSyntheticSide;
    const int64_t images = (train_limit > 0 ? train_limit : kSyntheticTrainImages) +
                           (test_limit > 0 ? test_limit : kSyntheticTestImages);
    const double bytes = 3.0 * static_cast<double>(side * side) * static_cast<double>(images);
    if (bytes > static_cast<double>(kMaxSyntheticBytes)) {
      return InvalidArgumentError(
          "dataset: a synthetic set of " + std::to_string(images) + " images of 3x" +
          std::to_string(side) + "x" + std::to_string(side) + " needs " +
          std::to_string(static_cast<int64_t>(bytes / (1 << 20))) +
          " MiB (at most 16 GiB); lower max_train_examples, max_eval_examples or input_size");
    }
  }
  return OkStatus();
}

ImageDataset MakeSyntheticDataset(int64_t n, int64_t side, uint64_t seed) {
  TERN_CHECK(n >= 0 && side > 0) << n << " images of side " << side;
  ImageDataset out;
  out.images = at::empty({n, 3, side, side}, at::kByte);
  out.labels = at::empty({n}, at::kLong);
  out.num_classes = kSyntheticClasses;
  uint8_t* pixels = out.images.data_ptr<uint8_t>();
  int64_t* labels = out.labels.data_ptr<int64_t>();
  const int64_t per_image = 3 * side * side;
  // One stream per image, so any image can be regenerated alone.
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      SplitMix64 rng(Mix(Mix(seed ^ kSyntheticSalt) + static_cast<uint64_t>(i)));
      labels[i] = static_cast<int64_t>(rng.Below(kSyntheticClasses));
      uint8_t* p = pixels + i * per_image;
      for (int64_t k = 0; k < per_image; k += 8) {
        const uint64_t r = rng.Next();
        std::memcpy(p + k, &r, static_cast<size_t>(std::min<int64_t>(8, per_image - k)));
      }
    }
  });
  return out;
}

// ---------------------------------------------------------------- readers

StatusOr<ImageDataset> ReadIdx(const std::string& images_file,
                               const std::string& labels_file) {
  TERN_ASSIGN_OR_RETURN(std::string image_bytes, ReadMaybeGzip(images_file));
  TERN_ASSIGN_OR_RETURN(IdxArray images,
                        ParseIdx(image_bytes, images_file, 3, "images"));
  TERN_ASSIGN_OR_RETURN(std::string label_bytes, ReadMaybeGzip(labels_file));
  TERN_ASSIGN_OR_RETURN(IdxArray labels,
                        ParseIdx(label_bytes, labels_file, 1, "labels"));
  const int64_t n = images.dims[0];
  if (labels.dims[0] != n) {
    return InvalidArgumentError(images_file + " has " + std::to_string(n) +
                                " images but " + labels_file + " has " +
                                std::to_string(labels.dims[0]) + " labels");
  }
  ImageDataset out;
  out.images = at::empty({n, 1, images.dims[1], images.dims[2]}, at::kByte);
  std::memcpy(out.images.data_ptr<uint8_t>(), images.data,
              static_cast<size_t>(out.images.numel()));
  out.labels = at::empty({n}, at::kLong);
  int64_t* l = out.labels.data_ptr<int64_t>();
  int64_t max_label = -1;
  for (int64_t i = 0; i < n; ++i) {
    l[i] = static_cast<unsigned char>(labels.data[i]);
    max_label = std::max(max_label, l[i]);
  }
  out.num_classes = max_label + 1;
  return out;
}

StatusOr<ImageDataset> ReadCifar(const std::string& dir, bool cifar100,
                                 bool train) {
  std::vector<std::string> names;
  if (cifar100) {
    names.push_back(train ? "train.bin" : "test.bin");
  } else if (train) {
    for (int i = 1; i <= 5; ++i) {
      names.push_back("data_batch_" + std::to_string(i) + ".bin");
    }
  } else {
    names.push_back("test_batch.bin");
  }
  // The archives unpack into a sub-folder; accept either level.
  std::string base = dir;
  const std::string sub =
      JoinPath(dir, cifar100 ? "cifar-100-binary" : "cifar-10-batches-bin");
  if (!IsFile(JoinPath(dir, names[0])) && IsFile(JoinPath(sub, names[0]))) {
    base = sub;
  }
  const int64_t label_bytes = cifar100 ? 2 : 1;
  const int64_t record = label_bytes + 3072;
  const int64_t classes = cifar100 ? 100 : 10;
  const std::string format = cifar100 ? "CIFAR-100" : "CIFAR-10";

  // Sizes first, so the tensor is allocated once.
  std::vector<std::string> files;
  std::vector<int64_t> counts;
  int64_t total = 0;
  for (const std::string& name : names) {
    const std::string path = JoinPath(base, name);
    std::error_code ec;
    const uintmax_t size = fs::file_size(path, ec);
    if (ec) {
      if (ec == std::errc::no_such_file_or_directory) {
        return NotFoundError(path + " not found");
      }
      return UnavailableError("cannot stat " + path + ": " + ec.message());
    }
    files.push_back(path);
    counts.push_back(static_cast<int64_t>(size / record));
    total += counts.back();
  }
  ImageDataset out;
  out.images = at::empty({total, 3, 32, 32}, at::kByte);
  out.labels = at::empty({total}, at::kLong);
  out.num_classes = classes;
  uint8_t* images = out.images.data_ptr<uint8_t>();
  int64_t* labels = out.labels.data_ptr<int64_t>();
  int64_t row = 0;
  for (size_t f = 0; f < files.size(); ++f) {
    const std::string& path = files[f];
    TERN_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
    const int64_t size = static_cast<int64_t>(bytes.size());
    if (size == 0 || size % record != 0) {
      return DataLossError(path + ": truncated or not a " + format +
                           " binary file: " + std::to_string(size) +
                           " bytes is not a positive multiple of the " +
                           std::to_string(record) + "-byte record (" +
                           std::to_string(label_bytes) + " label byte" +
                           (cifar100 ? "s" : "") + " + 3072 pixel bytes)");
    }
    if (size / record != counts[f]) {
      return DataLossError(path + ": changed size while reading");
    }
    for (int64_t i = 0; i < counts[f]; ++i, ++row) {
      const char* rec = bytes.data() + i * record;
      const int64_t label = static_cast<unsigned char>(rec[label_bytes - 1]);
      if (label >= classes ||
          (cifar100 && static_cast<unsigned char>(rec[0]) >= 20)) {
        return DataLossError(
            path + ": record " + std::to_string(i) + ": label " +
            std::to_string(label) +
            (cifar100
                 ? " (coarse " +
                       std::to_string(static_cast<unsigned char>(rec[0])) + ")"
                 : "") +
            " out of range [0, " + std::to_string(classes) + ")");
      }
      labels[row] = label;
      std::memcpy(images + row * 3072, rec + label_bytes, 3072);
    }
  }
  return out;
}

StatusOr<ImageDataset> ReadImageFolder(const std::string& split_dir,
                                       int64_t image_size) {
  return ReadImageFolderImpl(split_dir, image_size, nullptr);
}

StatusOr<ImageDataset> ReadImageFolder(const std::string& split_dir,
                                       int64_t image_size,
                                       const ImageDataset& like) {
  return ReadImageFolderImpl(split_dir, image_size, &like);
}

StatusOr<DatasetSplits> LoadDatasets(const DatasetOptions& options) {
  TERN_RETURN_IF_ERROR(options.Validate());
  const bool synthetic = options.kind == DatasetKind::kSynthetic;
  const std::string dir = synthetic ? std::string("(generated)")
                          : options.path.empty() ? std::string(kDefaultIdxPath)
                                                 : options.path;
  if (!synthetic && !IsDirectory(dir)) {
    return NotFoundError("dataset.path: " + dir + ": no such directory");
  }
  DatasetSplits s;
  try {
    switch (options.kind) {
      case DatasetKind::kIdx: {
        TERN_ASSIGN_OR_RETURN(std::string train_images,
                              FindIdxFile(dir, "train", "images", "idx3"));
        TERN_ASSIGN_OR_RETURN(std::string train_labels,
                              FindIdxFile(dir, "train", "labels", "idx1"));
        TERN_ASSIGN_OR_RETURN(std::string test_images,
                              FindIdxFile(dir, "t10k", "images", "idx3"));
        TERN_ASSIGN_OR_RETURN(std::string test_labels,
                              FindIdxFile(dir, "t10k", "labels", "idx1"));
        TERN_ASSIGN_OR_RETURN(s.train, ReadIdx(train_images, train_labels));
        TERN_ASSIGN_OR_RETURN(s.test, ReadIdx(test_images, test_labels));
        if (s.test.height() != s.train.height() ||
            s.test.width() != s.train.width()) {
          return InvalidArgumentError(test_images + ": images are " +
                                      Dims(s.test.height(), s.test.width()) +
                                      " but the training images are " +
                                      Dims(s.train.height(), s.train.width()));
        }
        TERN_RETURN_IF_ERROR(
            CheckLabels(s.test, s.train.num_classes, test_labels));
        s.test.num_classes = s.train.num_classes;
        break;
      }
      case DatasetKind::kCifar10:
      case DatasetKind::kCifar100: {
        const bool c100 = options.kind == DatasetKind::kCifar100;
        TERN_ASSIGN_OR_RETURN(s.train, ReadCifar(dir, c100, true));
        TERN_ASSIGN_OR_RETURN(s.test, ReadCifar(dir, c100, false));
        break;
      }
      case DatasetKind::kImageFolder: {
        TERN_ASSIGN_OR_RETURN(s.train, ReadImageFolder(JoinPath(dir, "train"),
                                                       options.image_size));
        std::string test_dir = JoinPath(dir, "test");
        if (!IsDirectory(test_dir) && IsDirectory(JoinPath(dir, "val"))) {
          test_dir = JoinPath(dir, "val");
        }
        TERN_ASSIGN_OR_RETURN(
            s.test, ReadImageFolder(test_dir, options.image_size, s.train));
        break;
      }
      case DatasetKind::kSynthetic: {
        const int64_t side = options.image_size > 0 ? options.image_size : kSyntheticSide;
        s.train = MakeSyntheticDataset(
            options.train_limit > 0 ? options.train_limit : kSyntheticTrainImages, side,
            options.seed);
        // A different stream for the test images.
        s.test = MakeSyntheticDataset(
            options.test_limit > 0 ? options.test_limit : kSyntheticTestImages, side,
            Mix(options.seed + 1));
        break;
      }
    }
    if (s.train.size() == 0) {
      return InvalidArgumentError("dataset.path: " + dir +
                                  ": the training split has no images");
    }
    s.train = FirstN(s.train, options.train_limit);
    s.test = FirstN(s.test, options.test_limit);

    // Validation split: a seeded random subset of the (limited) train split;
    // both parts keep file order.
    TERN_ASSIGN_OR_RETURN(const ValidationRows rows,
                          SplitForValidation(s.train.size(), options.val_fraction, options.seed));
    s.val = Select(s.train, rows.val);
    if (!rows.val.empty()) s.train = Select(s.train, rows.train);

    if (options.image_size > 0 && options.kind != DatasetKind::kImageFolder &&
        (s.train.height() != options.image_size ||
         s.train.width() != options.image_size)) {
      s.train = ResizeDataset(s.train, options.image_size);
      s.val = ResizeDataset(s.val, options.image_size);
      s.test = ResizeDataset(s.test, options.image_size);
    }
  } catch (const std::exception& e) {  // c10::Error, std::bad_alloc
    return InternalError("loading " + dir + ": " + e.what());
  }
  TERN_LOG(INFO) << "dataset " << DatasetKindName(options.kind) << " at " << dir
                 << ": train " << s.train.size() << ", val " << s.val.size()
                 << ", test " << s.test.size() << " images of "
                 << s.train.channels() << "x" << s.train.height() << "x"
                 << s.train.width() << ", " << s.train.num_classes
                 << " classes";
  return s;
}

// ---------------------------------------------------------------- sampler

ShardedSampler::ShardedSampler(int64_t dataset_size, int64_t global_batch,
                               int rank, int world_size, uint64_t seed,
                               bool shuffle)
    : dataset_size_(dataset_size),
      global_batch_(global_batch),
      rank_(rank),
      world_size_(world_size),
      seed_(seed),
      shuffle_(shuffle) {
  TERN_CHECK(dataset_size >= 0) << dataset_size;
  TERN_CHECK(world_size > 0 && rank >= 0 && rank < world_size)
      << "rank " << rank << " of " << world_size;
  TERN_CHECK(global_batch > 0 && global_batch % world_size == 0)
      << "global batch " << global_batch << " is not a positive multiple of "
      << world_size << " ranks";
}

ShardedSampler::ShardedSampler(const ShardedSampler& other)
    : dataset_size_(other.dataset_size_),
      global_batch_(other.global_batch_),
      rank_(other.rank_),
      world_size_(other.world_size_),
      seed_(other.seed_),
      shuffle_(other.shuffle_) {
  std::lock_guard<std::mutex> lock(other.mu_);
  cached_epoch_ = other.cached_epoch_;
  cached_perm_ = other.cached_perm_;
}

ShardedSampler& ShardedSampler::operator=(const ShardedSampler& other) {
  if (this == &other) return *this;
  std::scoped_lock lock(mu_, other.mu_);
  dataset_size_ = other.dataset_size_;
  global_batch_ = other.global_batch_;
  rank_ = other.rank_;
  world_size_ = other.world_size_;
  seed_ = other.seed_;
  shuffle_ = other.shuffle_;
  cached_epoch_ = other.cached_epoch_;
  cached_perm_ = other.cached_perm_;
  return *this;
}

std::shared_ptr<const std::vector<int64_t>> ShardedSampler::Permutation(
    int64_t epoch) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (cached_perm_ != nullptr && cached_epoch_ == epoch) return cached_perm_;
  auto perm = std::make_shared<std::vector<int64_t>>(
      static_cast<size_t>(dataset_size_));
  std::iota(perm->begin(), perm->end(), 0);
  if (shuffle_) {
    Shuffle(*perm, Mix(seed_ * 1000003ULL + static_cast<uint64_t>(epoch)));
  }
  cached_epoch_ = epoch;
  cached_perm_ = std::move(perm);
  return cached_perm_;
}

std::vector<int64_t> ShardedSampler::Indices(int64_t epoch,
                                             int64_t step) const {
  TERN_CHECK(step >= 0 && step < steps_per_epoch())
      << "step " << step << " of " << steps_per_epoch();
  const auto perm = Permutation(epoch);
  const int64_t begin = step * global_batch_ + rank_ * local_batch();
  return std::vector<int64_t>(perm->begin() + begin,
                              perm->begin() + begin + local_batch());
}

std::vector<int64_t> ShardedSampler::MicroBatchIndices(int64_t epoch,
                                                       int64_t step, int micro,
                                                       int num_micro) const {
  TERN_CHECK(num_micro > 0 && micro >= 0 && micro < num_micro)
      << "micro-batch " << micro << " of " << num_micro;
  const std::vector<int64_t> all = Indices(epoch, step);
  const int64_t n = static_cast<int64_t>(all.size());
  return std::vector<int64_t>(all.begin() + n * micro / num_micro,
                              all.begin() + n * (micro + 1) / num_micro);
}

// ---------------------------------------------------------------- normalize

Normalization ComputeMeanStd(const ImageDataset& train) {
  Normalization norm;
  const int64_t c_count = train.channels();
  if (train.size() == 0) {
    norm.mean.assign(static_cast<size_t>(c_count), 0.0f);
    norm.std.assign(static_cast<size_t>(c_count), 1.0f);
    return norm;
  }
  const at::Tensor images = train.images.contiguous();
  const uint8_t* p = images.data_ptr<uint8_t>();
  const int64_t plane = train.height() * train.width();
  // Exact, order-independent: a 256-bin histogram per channel.
  std::vector<std::vector<int64_t>> hist(static_cast<size_t>(c_count),
                                         std::vector<int64_t>(256, 0));
  for (int64_t i = 0; i < train.size(); ++i) {
    for (int64_t c = 0; c < c_count; ++c) {
      const uint8_t* q = p + (i * c_count + c) * plane;
      int64_t* h = hist[c].data();
      for (int64_t k = 0; k < plane; ++k) ++h[q[k]];
    }
  }
  for (int64_t c = 0; c < c_count; ++c) {
    double count = 0, sum = 0, sum_sq = 0;
    for (int v = 0; v < 256; ++v) {
      const double x = v / 255.0, k = static_cast<double>(hist[c][v]);
      count += k;
      sum += k * x;
      sum_sq += k * x * x;
    }
    const double mean = sum / count;
    const double var = std::max(0.0, sum_sq / count - mean * mean);
    const double std = std::sqrt(var);
    norm.mean.push_back(static_cast<float>(mean));
    norm.std.push_back(std > 1e-6 ? static_cast<float>(std) : 1.0f);
  }
  return norm;
}

// ---------------------------------------------------------------- loader

BatchLoader::BatchLoader(const ImageDataset& data,
                         const ShardedSampler& sampler, Normalization norm,
                         AugmentOptions augment, bool train, uint64_t seed,
                         int num_threads, int prefetch, BatchFormat format)
    : data_(CheckedContiguous(data)),
      sampler_(sampler),
      norm_(std::move(norm)),
      augment_(augment),
      train_(train),
      seed_(seed),
      format_(format),
      prefetcher_([this](int64_t epoch, int64_t step) { return Build(epoch, step); },
                  sampler.steps_per_epoch(), num_threads, prefetch) {
  TERN_CHECK(sampler.dataset_size() == data.size())
      << "sampler over " << sampler.dataset_size() << " images, data has "
      << data.size();
  TERN_CHECK(augment.pad >= 0) << augment.pad;
  CheckNorm(norm_, data_.channels());
}

BatchLoader::~BatchLoader() = default;

void BatchLoader::StartEpoch(int64_t epoch, int64_t first_step) {
  prefetcher_.StartEpoch(epoch, first_step);
}

std::optional<Batch> BatchLoader::Next() { return prefetcher_.Next(); }

Batch BatchLoader::Build(int64_t epoch, int64_t step) const {
  const std::vector<int64_t> indices = sampler_.Indices(epoch, step);
  const int64_t b = static_cast<int64_t>(indices.size());
  const int64_t c = data_.channels(), h = data_.height(), w = data_.width();
  Batch batch;
  batch.epoch = epoch;
  batch.step = step;
  const at::TensorOptions options =
      at::TensorOptions().pinned_memory(format_.pin_memory);
  batch.images = at::empty({b, c, h, w},
                           options.dtype(format_.raw_bytes ? at::kByte : at::kFloat));
  batch.labels = at::empty({b}, options.dtype(at::kLong));
  const uint8_t* src = data_.images.data_ptr<uint8_t>();
  const int64_t* labels = data_.labels.data_ptr<int64_t>();
  int64_t* dst_labels = batch.labels.data_ptr<int64_t>();
  const int64_t pad = augment_.random_crop ? augment_.pad : 0;
  const uint64_t epoch_key =
      Mix(Mix(seed_ ^ kAugmentSalt) + static_cast<uint64_t>(epoch));
  for (int64_t i = 0; i < b; ++i) {
    const int64_t index = indices[i];
    int64_t dx = 0, dy = 0;
    bool flip = false;
    if (train_) {
      // Depends on (seed, epoch, index) only: not on rank, step or thread.
      const uint64_t r = Mix(epoch_key + static_cast<uint64_t>(index));
      const uint64_t span = static_cast<uint64_t>(2 * pad + 1);
      dx = static_cast<int64_t>((r & 0xffffffu) % span) - pad;
      dy = static_cast<int64_t>(((r >> 24) & 0xffffffu) % span) - pad;
      flip = augment_.horizontal_flip && ((r >> 63) & 1u) != 0;
    }
    if (format_.raw_bytes) {
      FillSample(src + index * c * h * w, c, h, w, norm_, dx, dy, flip,
                 batch.images.data_ptr<uint8_t>() + i * c * h * w);
    } else {
      FillSample(src + index * c * h * w, c, h, w, norm_, dx, dy, flip,
                 batch.images.data_ptr<float>() + i * c * h * w);
    }
    dst_labels[i] = labels[index];
  }
  return batch;
}

// ---------------------------------------------------------------- eval

std::vector<std::pair<int64_t, int64_t>> EvalRanges(int64_t dataset_size,
                                                    int64_t batch, int rank,
                                                    int world_size) {
  TERN_CHECK(dataset_size >= 0 && batch > 0) << dataset_size << " " << batch;
  TERN_CHECK(world_size > 0 && rank >= 0 && rank < world_size)
      << "rank " << rank << " of " << world_size;
  const int64_t begin = dataset_size * rank / world_size;
  const int64_t end = dataset_size * (rank + 1) / world_size;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (int64_t b = begin; b < end; b += batch) {
    ranges.emplace_back(b, std::min(b + batch, end));
  }
  return ranges;
}

NormalizationTensors MakeNormalizationTensors(const Normalization& norm,
                                              int64_t channels,
                                              const c10::Device& device) {
  CheckNorm(norm, channels);
  at::Tensor scale = at::empty({1, channels, 1, 1}, at::kFloat);
  at::Tensor bias = at::empty({1, channels, 1, 1}, at::kFloat);
  for (int64_t c = 0; c < channels; ++c) {
    // FillSample's arithmetic.
    scale.data_ptr<float>()[c] = 1.0f / (255.0f * norm.std[c]);
    bias.data_ptr<float>()[c] = -norm.mean[c] / norm.std[c];
  }
  return {scale.to(device), bias.to(device)};
}

at::Tensor NormalizeBatch(const at::Tensor& images,
                          const NormalizationTensors& norm) {
  TERN_CHECK(images.scalar_type() == at::kByte && images.dim() == 4 &&
             images.size(1) == norm.scale.size(1))
      << "NormalizeBatch: expected uint8 [b, " << norm.scale.size(1)
      << ", H, W], got " << images.sizes() << " " << images.scalar_type();
  return at::addcmul(norm.bias, images.to(at::kFloat), norm.scale);
}

at::Tensor MakeEvalBatch(const ImageDataset& data, int64_t begin, int64_t end,
                         const Normalization& norm) {
  TERN_CHECK(0 <= begin && begin <= end && end <= data.size())
      << "[" << begin << ", " << end << ") of " << data.size();
  const int64_t c = data.channels(), h = data.height(), w = data.width();
  CheckNorm(norm, c);
  const at::Tensor images =
      data.images.narrow(0, begin, end - begin).contiguous();
  at::Tensor out = at::empty({end - begin, c, h, w}, at::kFloat);
  const uint8_t* src = images.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  for (int64_t i = 0; i < end - begin; ++i) {
    FillSample(src + i * c * h * w, c, h, w, norm, 0, 0, false,
               dst + i * c * h * w);
  }
  return out;
}

}  // namespace tern::trainer
