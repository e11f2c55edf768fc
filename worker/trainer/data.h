// The trainer's data layer: readers, the rank-sharded sampler, augmentation
// and the background batch loader.
//
// Usage:
//   TERN_ASSIGN_OR_RETURN(DatasetSplits splits, LoadDatasets(options));
//   Normalization norm = ComputeMeanStd(splits.train);
//   ShardedSampler sampler(splits.train.size(), global_batch, rank, world,
//                          seed, /*shuffle=*/true);
//   BatchLoader loader(splits.train, sampler, norm, AugmentOptions{},
//                      /*train=*/true, seed, /*num_threads=*/2,
//                      /*prefetch=*/4);
//   loader.StartEpoch(epoch, first_step);
//   while (std::optional<Batch> b = loader.Next()) { ... }
//
// Datasets live in memory as uint8 [N, C, H, W]; batches are float
// [b, C, H, W], normalized and (for training) augmented. Everything random
// (shuffling, validation split, crops, flips) is a pure function of the seed,
// the epoch and the global sample index, so results depend neither on thread
// timing nor on the number of ranks. Readers never throw or crash on bad
// bytes: they return a Status that names the file and what is wrong.
// Thread safety: readers and free functions are thread-safe; a ShardedSampler
// may be shared between threads; a BatchLoader is driven by one thread.
#ifndef TERN_WORKER_TRAINER_DATA_H_
#define TERN_WORKER_TRAINER_DATA_H_

#include <ATen/core/Tensor.h>

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/status.h"
#include "spec/rules.h"
#include "worker/trainer/prefetcher.h"

namespace tern::trainer {

// Images in memory: uint8 [N, C, H, W] (contiguous), labels int64 [N].
struct ImageDataset {
  at::Tensor images;
  at::Tensor labels;
  int64_t num_classes = 0;
  std::vector<std::string> class_names;  // image folders only; else empty

  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
  int64_t channels() const { return images.defined() ? images.size(1) : 0; }
  int64_t height() const { return images.defined() ? images.size(2) : 0; }
  int64_t width() const { return images.defined() ? images.size(3) : 0; }
};

enum class DatasetKind { kIdx, kCifar10, kCifar100, kImageFolder, kSynthetic };

// Case-insensitive; accepts "idx", "cifar10", "cifar100", "image_folder",
// "synthetic",
// with or without the proto's "DATASET_" prefix ("DATASET_UNSPECIFIED" and ""
// mean kIdx). INVALID_ARGUMENT otherwise.
StatusOr<DatasetKind> ParseDatasetKind(const std::string& name);
const char* DatasetKindName(DatasetKind kind);  // "idx", "cifar10", ...

// Debian's dataset-fashion-mnist (job.proto's default dataset.path).
using spec::kDefaultIdxPath;

struct DatasetOptions {
  DatasetKind kind = DatasetKind::kIdx;
  std::string path = kDefaultIdxPath;  // directory; empty: kDefaultIdxPath
                                       // for kIdx, an error otherwise;
                                       // ignored for kSynthetic
  double val_fraction = 0;  // [0, 1): held out of train, chosen from seed
  uint64_t seed = 0;        // validation split
  int64_t train_limit = 0;  // >0: first N training images (before val split)
  int64_t test_limit = 0;   // >0: first N test images
  int64_t image_size = 0;   // >0: resize to this square side; 0: native size
                            // (image folders then require equal sizes)

  // INVALID_ARGUMENT naming the field, e.g.
  // "dataset.val_fraction: must be in [0, 1), got 1.5".
  Status Validate() const;
};

// The validation split of a training set of `n` examples (classification
// and detection alike): round(fraction * n) of them, at least 1 and at most
// n - 1, a random subset chosen from `seed` alone (so every method of a seed
// holds out the same examples); `train` is the rest. Both lists are sorted.
// fraction 0: no validation rows. INVALID_ARGUMENT naming
// dataset.val_fraction when fraction > 0 and n < 2.
struct ValidationRows {
  std::vector<int64_t> train;
  std::vector<int64_t> val;
};
StatusOr<ValidationRows> SplitForValidation(int64_t n, double fraction, uint64_t seed);

// `val` has 0 rows (same C, H, W) when val_fraction == 0. All splits share
// num_classes (and class_names).
struct DatasetSplits {
  ImageDataset train, val, test;
};

// Reads the train and test splits of `options.kind` at `options.path`:
//   kIdx:         train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
//                 t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]
//                 (MNIST's "train-images.idx3-ubyte" spelling also works)
//   kCifar10/100: see ReadCifar
//   kImageFolder: path/train/<class>/*, and path/test/<class>/* (or
//                 path/val/<class>/* when there is no test folder)
//   kSynthetic:   no files; see MakeSyntheticDataset (train_limit or 2048
//                 training, test_limit or 256 test images, image_size or
//                 224 pixels square)
// then applies the limits, carves the validation split and resizes when
// image_size differs from the native size. Blocking.
StatusOr<DatasetSplits> LoadDatasets(const DatasetOptions& options);

// IDX (MNIST, Fashion-MNIST): unsigned-byte images [N, rows, cols] and labels
// [N]; each file gzip-compressed or plain (detected from its bytes).
// num_classes = max label + 1. NOT_FOUND for a missing file; DATA_LOSS for a
// truncated or corrupt file; INVALID_ARGUMENT for a bad magic number, wrong
// dimensions or mismatched counts.
StatusOr<ImageDataset> ReadIdx(const std::string& images_file,
                               const std::string& labels_file);

// CIFAR binary version in `dir` (or its cifar-10-batches-bin /
// cifar-100-binary sub-folder). CIFAR-10: data_batch_1..5.bin (train),
// test_batch.bin; records of 1 label byte + 3072 pixel bytes. CIFAR-100:
// train.bin, test.bin; coarse + fine label bytes + 3072; fine labels are used
// (100 classes). Images are [N, 3, 32, 32].
StatusOr<ImageDataset> ReadCifar(const std::string& dir, bool cifar100,
                                 bool train);

// Image folder: split_dir/<class>/<image> with PNG, JPEG, BMP, GIF, TGA or
// PNM images (other files are ignored). Class index = position of the folder
// name in sorted order. Images with alpha drop it; all images become the
// channel count of the first one, or 3 when grayscale and colour are mixed.
// image_size > 0: shorter side resized to image_size, then centre-cropped to
// a square; 0: all images must have the same size. Decodes on several
// threads.
StatusOr<ImageDataset> ReadImageFolder(const std::string& split_dir,
                                       int64_t image_size);
// Same, but classes, channels and (when image_size == 0) size follow `like`,
// the training split: for test and validation folders.
StatusOr<ImageDataset> ReadImageFolder(const std::string& split_dir,
                                       int64_t image_size,
                                       const ImageDataset& like);

// Random images for throughput benchmarks: uint8 [n, 3, side, side] with
// uniform pixels and uniform labels over kSyntheticClasses classes, a pure
// function of (n, side, seed). The same seed gives the same images on every
// rank and machine.
inline constexpr int64_t kSyntheticClasses = 1000;
ImageDataset MakeSyntheticDataset(int64_t n, int64_t side, uint64_t seed);

// Which dataset indices each step uses. A global batch is B = global_batch
// images: step s of epoch e uses perm_e[s*B, (s+1)*B) and rank r takes the
// contiguous slice [r*L, (r+1)*L) of it, L = B / world_size. So one rank that
// runs a global batch as W micro-batches sees exactly what W ranks see.
// The incomplete last global batch is dropped. perm_e is a Fisher-Yates
// shuffle seeded from (seed, e) (identity when !shuffle). TERN_CHECKs that
// global_batch > 0, global_batch % world_size == 0 and 0 <= rank < world.
// Copyable; thread-safe (the last epoch's permutation is cached).
class ShardedSampler {
 public:
  ShardedSampler(int64_t dataset_size, int64_t global_batch, int rank,
                 int world_size, uint64_t seed, bool shuffle);
  ShardedSampler(const ShardedSampler& other);
  ShardedSampler& operator=(const ShardedSampler& other);

  int64_t dataset_size() const { return dataset_size_; }
  int64_t global_batch() const { return global_batch_; }
  int64_t local_batch() const { return global_batch_ / world_size_; }
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int64_t steps_per_epoch() const { return dataset_size_ / global_batch_; }

  // The epoch's permutation of [0, dataset_size).
  std::shared_ptr<const std::vector<int64_t>> Permutation(int64_t epoch) const;
  // This rank's local_batch() indices for (epoch, step);
  // 0 <= step < steps_per_epoch().
  std::vector<int64_t> Indices(int64_t epoch, int64_t step) const;
  // Part `micro` of `num_micro` contiguous parts of Indices(epoch, step)
  // (part m = [m*L/M, (m+1)*L/M)), for gradient accumulation.
  std::vector<int64_t> MicroBatchIndices(int64_t epoch, int64_t step, int micro,
                                         int num_micro) const;

 private:
  int64_t dataset_size_;
  int64_t global_batch_;
  int rank_;
  int world_size_;
  uint64_t seed_;
  bool shuffle_;
  mutable std::mutex mu_;
  mutable int64_t cached_epoch_ = -1;
  mutable std::shared_ptr<const std::vector<int64_t>> cached_perm_;
};

// Training augmentation, applied per sample before normalization:
// zero-pad by `pad` and crop back at a random offset, then flip left-right
// with probability 1/2. Flip suits objects and clothes, not digits: the
// caller decides.
struct AugmentOptions {
  bool random_crop = true;
  int64_t pad = 4;  // pixels on each side; >= 0
  bool horizontal_flip = true;
};

// Per-channel mean and standard deviation of pixel/255.
struct Normalization {
  std::vector<float> mean, std;
};
// Exact statistics over every pixel of `train` (std 1 for a constant
// channel); mean 0, std 1 for an empty dataset.
Normalization ComputeMeanStd(const ImageDataset& train);

// How BatchLoader hands batches over.
struct BatchFormat {
  // false: float pixels, normalized on the loader threads (CPU training).
  // true: uint8 pixels, augmented but not normalized, for NormalizeBatch on
  // the device after the copy: 4x fewer bytes to move to a GPU.
  bool raw_bytes = false;
  // Page-locked (pinned) batch memory so that the copy to a GPU can overlap
  // compute. Needs a CUDA build and device: LibTorch throws otherwise.
  bool pin_memory = false;
};

// Normalization as float [1, C, 1, 1] tensors on a device: normalized =
// pixel * scale + bias, the loader's own arithmetic.
struct NormalizationTensors {
  at::Tensor scale, bias;
};
NormalizationTensors MakeNormalizationTensors(const Normalization& norm,
                                              int64_t channels,
                                              const c10::Device& device);
// uint8 [b, C, H, W] (raw_bytes batches, on any device) -> float [b, C, H, W]
// on the same device, equal to the loader's normalized batch up to float
// rounding (1e-6).
at::Tensor NormalizeBatch(const at::Tensor& images,
                          const NormalizationTensors& norm);

struct Batch {
  at::Tensor images;  // float [b, C, H, W]; uint8 with BatchFormat::raw_bytes
  at::Tensor labels;  // int64 [b]
  int64_t epoch = 0;
  int64_t step = 0;
};

// Builds the batches of one epoch in order, on `num_threads` worker threads
// (0: on the caller's thread inside Next()), at most `prefetch` batches ahead
// of the consumer. Batch (epoch, step) holds data[sampler.Indices(epoch,
// step)], normalized with `norm` (or raw, per `format`); with `train`, each
// sample is augmented with
// randomness drawn from (seed, epoch, its dataset index). Output is
// bit-identical for any thread count. Driven by a single thread.
class BatchLoader {
 public:
  BatchLoader(const ImageDataset& data, const ShardedSampler& sampler,
              Normalization norm, AugmentOptions augment, bool train,
              uint64_t seed, int num_threads, int prefetch,
              BatchFormat format = {});
  ~BatchLoader();  // stops and joins the workers, also mid-epoch
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // Discards whatever the previous epoch left and starts producing steps
  // [first_step, steps_per_epoch()) of `epoch`. Non-blocking.
  void StartEpoch(int64_t epoch, int64_t first_step = 0);
  // Blocks until the next batch is ready; std::nullopt once the epoch is
  // exhausted (or before the first StartEpoch).
  std::optional<Batch> Next();

  // The batch for (epoch, step), built on the calling thread.
  Batch Build(int64_t epoch, int64_t step) const;

 private:
  const ImageDataset data_;
  const ShardedSampler sampler_;
  const Normalization norm_;
  const AugmentOptions augment_;
  const bool train_;
  const uint64_t seed_;
  const BatchFormat format_;
  StepPrefetcher<Batch> prefetcher_;  // last: its workers call Build()
};

// Evaluation batches: this rank's contiguous share [N*r/W, N*(r+1)/W) of the
// dataset, in order, cut into [begin, end) ranges of at most `batch` images.
// Nothing is dropped; the W shares cover the dataset exactly once.
std::vector<std::pair<int64_t, int64_t>> EvalRanges(int64_t dataset_size,
                                                    int64_t batch, int rank,
                                                    int world_size);
// float [end - begin, C, H, W]: images [begin, end), normalized, unaugmented.
at::Tensor MakeEvalBatch(const ImageDataset& data, int64_t begin, int64_t end,
                         const Normalization& norm);

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_DATA_H_
