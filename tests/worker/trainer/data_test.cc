#include "worker/trainer/data.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <webp/encode.h>
#include <stdlib.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "common/file_util.h"
#include "tests/common/scoped_temp_dir.h"

#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

namespace tern::trainer {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class TempDir : public ::tern::testing_util::ScopedTempDir {
 public:
  TempDir() : ScopedTempDir("tern_data_test") {}
};

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  TERN_CHECK(out.good()) << path;
}

void WriteGzip(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  TERN_CHECK(f != nullptr) << path;
  TERN_CHECK(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) ==
             static_cast<int>(bytes.size()));
  TERN_CHECK(gzclose(f) == Z_OK);
}

std::string BigEndian(uint32_t v) {
  return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                     static_cast<char>(v >> 8), static_cast<char>(v)};
}

// An unsigned-byte IDX file: header for `dims`, then `data`.
std::string Idx(const std::vector<uint32_t>& dims, const std::string& data) {
  std::string out = BigEndian(0x800u | static_cast<uint32_t>(dims.size()));
  for (uint32_t d : dims) out += BigEndian(d);
  return out + data;
}

// n images of h x w with pixel (i, k) = (7*i + k) mod 256; label i mod classes.
struct IdxSet {
  std::string images, labels;
};
IdxSet MakeIdxSet(uint32_t n, uint32_t h, uint32_t w, int classes) {
  std::string pixels, labels;
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t k = 0; k < h * w; ++k) {
      pixels += static_cast<char>((7 * i + k) % 256);
    }
    labels += static_cast<char>(i % classes);
  }
  return {Idx({n, h, w}, pixels), Idx({n}, labels)};
}

void WriteIdxDir(const TempDir& dir, uint32_t n_train, uint32_t n_test,
                 bool gzip) {
  const IdxSet train = MakeIdxSet(n_train, 28, 28, 10);
  const IdxSet test = MakeIdxSet(n_test, 28, 28, 10);
  auto write = [&](const std::string& name, const std::string& bytes) {
    if (gzip) {
      WriteGzip(dir.Path(name + ".gz"), bytes);
    } else {
      WriteBytes(dir.Path(name), bytes);
    }
  };
  write("train-images-idx3-ubyte", train.images);
  write("train-labels-idx1-ubyte", train.labels);
  write("t10k-images-idx3-ubyte", test.images);
  write("t10k-labels-idx1-ubyte", test.labels);
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

#define EXPECT_ERROR(status_expr, code_value, text)                 \
  do {                                                              \
    const ::tern::Status s_ = (status_expr);                        \
    EXPECT_EQ(s_.code(), code_value) << s_.ToString();              \
    EXPECT_TRUE(Contains(s_.message(), text))                       \
        << "\"" << s_.message() << "\" lacks \"" << (text) << "\""; \
  } while (false)

// ---------------------------------------------------------------- IDX

void CheckIdxRoundTrip(bool gzip) {
  TempDir dir;
  const IdxSet set = MakeIdxSet(5, 3, 4, 10);
  const std::string images = dir.Path(gzip ? "images.gz" : "images");
  const std::string labels = dir.Path(gzip ? "labels.gz" : "labels");
  if (gzip) {
    WriteGzip(images, set.images);
    WriteGzip(labels, set.labels);
  } else {
    WriteBytes(images, set.images);
    WriteBytes(labels, set.labels);
  }
  StatusOr<ImageDataset> data = ReadIdx(images, labels);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->images.sizes(), (at::IntArrayRef{5, 1, 3, 4}));
  EXPECT_EQ(data->images.scalar_type(), at::kByte);
  EXPECT_EQ(data->labels.scalar_type(), at::kLong);
  EXPECT_EQ(data->num_classes, 5);  // labels 0..4
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(data->labels[i].item<int64_t>(), i);
    for (int k = 0; k < 12; ++k) {
      EXPECT_EQ(data->images[i].flatten()[k].item<uint8_t>(),
                (7 * i + k) % 256);
    }
  }
}

TEST(IdxReaderTest, RoundTripsPlainFiles) { CheckIdxRoundTrip(false); }

TEST(IdxReaderTest, RoundTripsGzipFiles) { CheckIdxRoundTrip(true); }

TEST(IdxReaderTest, MissingFileIsNotFound) {
  TempDir dir;
  WriteBytes(dir.Path("labels"), MakeIdxSet(2, 2, 2, 2).labels);
  EXPECT_ERROR(ReadIdx(dir.Path("nope"), dir.Path("labels")).status(),
               StatusCode::kNotFound, dir.Path("nope"));
}

TEST(IdxReaderTest, RejectsTruncatedFile) {
  TempDir dir;
  const IdxSet set = MakeIdxSet(5, 3, 4, 10);
  WriteBytes(dir.Path("images"), set.images.substr(0, set.images.size() - 7));
  WriteBytes(dir.Path("labels"), set.labels);
  const Status s = ReadIdx(dir.Path("images"), dir.Path("labels")).status();
  EXPECT_ERROR(s, StatusCode::kDataLoss, dir.Path("images"));
  EXPECT_ERROR(s, StatusCode::kDataLoss, "truncated");
  // A file shorter than its header.
  WriteBytes(dir.Path("short"), set.images.substr(0, 9));
  EXPECT_ERROR(ReadIdx(dir.Path("short"), dir.Path("labels")).status(),
               StatusCode::kDataLoss, "truncated IDX header");
  WriteBytes(dir.Path("tiny"), std::string("\0\0", 2));
  EXPECT_ERROR(ReadIdx(dir.Path("tiny"), dir.Path("labels")).status(),
               StatusCode::kDataLoss, "magic");
}

TEST(IdxReaderTest, RejectsTruncatedLabels) {
  TempDir dir;
  const IdxSet set = MakeIdxSet(5, 3, 4, 10);
  WriteBytes(dir.Path("images"), set.images);
  WriteBytes(dir.Path("labels"), set.labels.substr(0, set.labels.size() - 2));
  const Status s = ReadIdx(dir.Path("images"), dir.Path("labels")).status();
  EXPECT_ERROR(s, StatusCode::kDataLoss, dir.Path("labels"));
  EXPECT_ERROR(s, StatusCode::kDataLoss, "header says 5 labels");
}

TEST(IdxReaderTest, RejectsTruncatedGzip) {
  TempDir dir;
  const IdxSet set = MakeIdxSet(50, 8, 8, 10);
  WriteGzip(dir.Path("full.gz"), set.images);
  StatusOr<std::string> gz = ReadFileToString(dir.Path("full.gz"));
  ASSERT_TRUE(gz.ok());
  WriteBytes(dir.Path("cut.gz"), gz->substr(0, gz->size() / 2));
  WriteBytes(dir.Path("labels"), set.labels);
  EXPECT_ERROR(ReadIdx(dir.Path("cut.gz"), dir.Path("labels")).status(),
               StatusCode::kDataLoss, dir.Path("cut.gz") + ": truncated gzip");
}

TEST(IdxReaderTest, RejectsCorruptGzip) {
  TempDir dir;
  const IdxSet set = MakeIdxSet(5, 3, 4, 10);
  WriteGzip(dir.Path("images.gz"), set.images);
  StatusOr<std::string> gz = ReadFileToString(dir.Path("images.gz"));
  ASSERT_TRUE(gz.ok());
  std::string bad = *gz;
  for (size_t i = 12; i < bad.size() - 8; ++i) bad[i] = static_cast<char>(0xff);
  WriteBytes(dir.Path("bad.gz"), bad);
  WriteBytes(dir.Path("labels"), set.labels);
  EXPECT_ERROR(ReadIdx(dir.Path("bad.gz"), dir.Path("labels")).status(),
               StatusCode::kDataLoss, dir.Path("bad.gz") + ": corrupt gzip");
}

TEST(IdxReaderTest, RejectsBadMagic) {
  TempDir dir;
  const IdxSet set = MakeIdxSet(5, 3, 4, 10);
  std::string bad = set.images;
  bad[0] = 'P';
  bad[1] = 'K';
  WriteBytes(dir.Path("images"), bad);
  WriteBytes(dir.Path("labels"), set.labels);
  const Status s = ReadIdx(dir.Path("images"), dir.Path("labels")).status();
  EXPECT_ERROR(s, StatusCode::kInvalidArgument,
               dir.Path("images") + ": bad magic number 0x504B0803");
  // Wrong element type (0x0D = float).
  bad = set.images;
  bad[2] = 0x0D;
  WriteBytes(dir.Path("floats"), bad);
  EXPECT_ERROR(ReadIdx(dir.Path("floats"), dir.Path("labels")).status(),
               StatusCode::kInvalidArgument, "element type 0x0D");
}

TEST(IdxReaderTest, RejectsWrongDimensions) {
  TempDir dir;
  const IdxSet set = MakeIdxSet(5, 3, 4, 10);
  WriteBytes(dir.Path("images"), set.images);
  WriteBytes(dir.Path("labels"), set.labels);
  // Swapped arguments: a labels file where images belong.
  const Status s = ReadIdx(dir.Path("labels"), dir.Path("images")).status();
  EXPECT_ERROR(s, StatusCode::kInvalidArgument,
               dir.Path("labels") + ": wrong dimensions");
  // Zero-sized images.
  WriteBytes(dir.Path("empty"), Idx({5, 0, 4}, ""));
  EXPECT_ERROR(ReadIdx(dir.Path("empty"), dir.Path("labels")).status(),
               StatusCode::kInvalidArgument, "wrong dimensions");
}

TEST(IdxReaderTest, RejectsCountMismatchWithinFile) {
  TempDir dir;
  const IdxSet set = MakeIdxSet(5, 3, 4, 10);
  WriteBytes(dir.Path("images"), set.images + "extra");
  WriteBytes(dir.Path("labels"), set.labels);
  EXPECT_ERROR(ReadIdx(dir.Path("images"), dir.Path("labels")).status(),
               StatusCode::kDataLoss, "5 unexpected bytes");
  // A header count so large that the size overflows.
  WriteBytes(dir.Path("huge"),
             Idx({0xffffffffu, 0xffffffffu, 0xffffffffu}, ""));
  EXPECT_ERROR(ReadIdx(dir.Path("huge"), dir.Path("labels")).status(),
               StatusCode::kDataLoss, "truncated");
}

TEST(IdxReaderTest, RejectsImageLabelCountMismatch) {
  TempDir dir;
  WriteBytes(dir.Path("images"), MakeIdxSet(5, 3, 4, 10).images);
  WriteBytes(dir.Path("labels"), MakeIdxSet(4, 3, 4, 10).labels);
  const Status s = ReadIdx(dir.Path("images"), dir.Path("labels")).status();
  EXPECT_ERROR(s, StatusCode::kInvalidArgument,
               dir.Path("images") + " has 5 images but " + dir.Path("labels") +
                   " has 4 labels");
}

// ---------------------------------------------------------------- options

TEST(DatasetOptionsTest, ParsesKinds) {
  EXPECT_EQ(*ParseDatasetKind("idx"), DatasetKind::kIdx);
  EXPECT_EQ(*ParseDatasetKind("DATASET_IDX"), DatasetKind::kIdx);
  EXPECT_EQ(*ParseDatasetKind("DATASET_UNSPECIFIED"), DatasetKind::kIdx);
  EXPECT_EQ(*ParseDatasetKind(""), DatasetKind::kIdx);
  EXPECT_EQ(*ParseDatasetKind("cifar10"), DatasetKind::kCifar10);
  EXPECT_EQ(*ParseDatasetKind("DATASET_CIFAR10"), DatasetKind::kCifar10);
  EXPECT_EQ(*ParseDatasetKind("DATASET_CIFAR100"), DatasetKind::kCifar100);
  EXPECT_EQ(*ParseDatasetKind("image_folder"), DatasetKind::kImageFolder);
  EXPECT_EQ(*ParseDatasetKind("DATASET_IMAGE_FOLDER"),
            DatasetKind::kImageFolder);
  EXPECT_EQ(*ParseDatasetKind("DATASET_SYNTHETIC"), DatasetKind::kSynthetic);
  EXPECT_ERROR(ParseDatasetKind("DATASET_COCO").status(),
               StatusCode::kInvalidArgument, "dataset.kind");
}

TEST(DatasetOptionsTest, ValidateNamesTheField) {
  DatasetOptions o;
  EXPECT_TRUE(o.Validate().ok());
  o.val_fraction = 1.0;
  EXPECT_ERROR(o.Validate(), StatusCode::kInvalidArgument,
               "dataset.val_fraction: must be in [0, 1)");
  o.val_fraction = 0;
  o.train_limit = -1;
  EXPECT_ERROR(o.Validate(), StatusCode::kInvalidArgument,
               "dataset.train_limit");
  o.train_limit = 0;
  o.image_size = -3;
  EXPECT_ERROR(o.Validate(), StatusCode::kInvalidArgument,
               "dataset.image_size");
  o.image_size = 0;
  o.path.clear();
  EXPECT_TRUE(o.Validate().ok());  // IDX defaults to Fashion-MNIST
  o.kind = DatasetKind::kCifar10;
  EXPECT_ERROR(o.Validate(), StatusCode::kInvalidArgument,
               "dataset.path: required for cifar10");
  o.kind = DatasetKind::kSynthetic;
  EXPECT_TRUE(o.Validate().ok());  // no files
  o.image_size = 2048;
  o.train_limit = 2000;  // 2256 images of 3x2048x2048: 27 GiB
  EXPECT_ERROR(o.Validate(), StatusCode::kInvalidArgument,
               "a synthetic set of 2256 images of 3x2048x2048");
}

// ---------------------------------------------------------------- synthetic

TEST(SyntheticDatasetTest, IsAPureFunctionOfItsArguments) {
  const ImageDataset a = MakeSyntheticDataset(6, 16, 7);
  EXPECT_EQ(a.images.sizes(), (at::IntArrayRef{6, 3, 16, 16}));
  EXPECT_EQ(a.images.scalar_type(), at::kByte);
  EXPECT_EQ(a.num_classes, kSyntheticClasses);
  EXPECT_TRUE(at::equal(a.images, MakeSyntheticDataset(6, 16, 7).images));
  EXPECT_TRUE(at::equal(a.labels, MakeSyntheticDataset(6, 16, 7).labels));
  // Image i does not depend on how many images are made.
  EXPECT_TRUE(at::equal(a.images.narrow(0, 0, 3), MakeSyntheticDataset(3, 16, 7).images));
  EXPECT_FALSE(at::equal(a.images, MakeSyntheticDataset(6, 16, 8).images));
  EXPECT_FALSE(at::equal(a.images[0], a.images[1]));
}

TEST(SyntheticDatasetTest, PixelsAndLabelsAreUniform) {
  const ImageDataset d = MakeSyntheticDataset(2000, 8, 3);
  const double mean = d.images.to(at::kDouble).mean().item<double>();
  EXPECT_NEAR(mean, 127.5, 0.5);  // 384000 pixels: std of the mean ~0.12
  EXPECT_GE(d.labels.min().item<int64_t>(), 0);
  EXPECT_LT(d.labels.max().item<int64_t>(), kSyntheticClasses);
  // 2000 draws over 1000 classes: about 865 distinct values.
  const int64_t* labels = d.labels.data_ptr<int64_t>();
  EXPECT_GT(std::set<int64_t>(labels, labels + d.size()).size(), 800u);
}

TEST(LoadDatasetsTest, SyntheticNeedsNoFilesAndHonoursLimitsAndSize) {
  DatasetOptions o;
  o.kind = DatasetKind::kSynthetic;
  o.path = "/nonexistent";  // ignored
  o.train_limit = 40;
  o.test_limit = 12;
  o.image_size = 32;
  o.val_fraction = 0.25;
  o.seed = 5;
  StatusOr<DatasetSplits> s = LoadDatasets(o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->train.size(), 30);
  EXPECT_EQ(s->val.size(), 10);
  EXPECT_EQ(s->test.size(), 12);
  EXPECT_EQ(s->train.images.sizes(), (at::IntArrayRef{30, 3, 32, 32}));
  EXPECT_EQ(s->test.num_classes, kSyntheticClasses);
  // The test images are not copies of training images.
  EXPECT_FALSE(at::equal(s->test.images[0], MakeSyntheticDataset(1, 32, 5).images[0]));
}

// ---------------------------------------------------------------- LoadDatasets

TEST(LoadDatasetsTest, LoadsIdxDirectoryWithLimitsAndValidationSplit) {
  TempDir dir;
  WriteIdxDir(dir, 40, 12, /*gzip=*/true);
  DatasetOptions o;
  o.path = dir.path();
  o.train_limit = 30;
  o.test_limit = 10;
  o.val_fraction = 0.2;
  o.seed = 3;
  StatusOr<DatasetSplits> s = LoadDatasets(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train.size(), 24);
  EXPECT_EQ(s->val.size(), 6);
  EXPECT_EQ(s->test.size(), 10);
  EXPECT_EQ(s->train.num_classes, 10);
  EXPECT_EQ(s->val.num_classes, 10);
  EXPECT_EQ(s->test.num_classes, 10);
  EXPECT_EQ(s->val.images.sizes(), (at::IntArrayRef{6, 1, 28, 28}));
  // Train and val partition the first 30 images; labels follow the image
  // (image i has label i % 10 and first pixel 7i mod 256).
  std::set<int64_t> seen;
  for (const ImageDataset* d : {&s->train, &s->val}) {
    for (int64_t i = 0; i < d->size(); ++i) {
      const int64_t first = d->images[i][0][0][0].item<uint8_t>();
      const int64_t index = first / 7;
      EXPECT_EQ(d->labels[i].item<int64_t>(), index % 10);
      EXPECT_TRUE(seen.insert(index).second);
    }
  }
  EXPECT_EQ(seen.size(), 30u);
  EXPECT_EQ(*seen.rbegin(), 29);

  // Same seed, same split; another seed, another split.
  StatusOr<DatasetSplits> again = LoadDatasets(o);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(at::equal(again->val.images, s->val.images));
  o.seed = 4;
  StatusOr<DatasetSplits> other = LoadDatasets(o);
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(at::equal(other->val.images, s->val.images));

  // No validation fraction: empty val with the same image shape.
  o.val_fraction = 0;
  StatusOr<DatasetSplits> none = LoadDatasets(o);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->train.size(), 30);
  EXPECT_EQ(none->val.images.sizes(), (at::IntArrayRef{0, 1, 28, 28}));
  EXPECT_EQ(none->val.labels.size(0), 0);
}

TEST(LoadDatasetsTest, LoadsPlainIdxAndResizes) {
  TempDir dir;
  WriteIdxDir(dir, 8, 4, /*gzip=*/false);
  DatasetOptions o;
  o.path = dir.path();
  o.image_size = 32;
  StatusOr<DatasetSplits> s = LoadDatasets(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train.images.sizes(), (at::IntArrayRef{8, 1, 32, 32}));
  EXPECT_EQ(s->test.images.sizes(), (at::IntArrayRef{4, 1, 32, 32}));
}

TEST(LoadDatasetsTest, MissingFileNamesThePath) {
  TempDir dir;
  WriteIdxDir(dir, 8, 4, /*gzip=*/false);
  fs::remove(dir.Path("t10k-labels-idx1-ubyte"));
  DatasetOptions o;
  o.path = dir.path();
  EXPECT_ERROR(LoadDatasets(o).status(), StatusCode::kNotFound,
               dir.Path("t10k-labels-idx1-ubyte"));
  o.path = dir.Path("missing");
  EXPECT_ERROR(LoadDatasets(o).status(), StatusCode::kNotFound,
               dir.Path("missing"));
}

TEST(LoadDatasetsTest, RejectsTestLabelOutOfRange) {
  TempDir dir;
  WriteIdxDir(dir, 8, 4, /*gzip=*/false);
  // Training labels only reach 7: 8 classes; the test set has label 12.
  WriteBytes(dir.Path("t10k-labels-idx1-ubyte"),
             Idx({4}, std::string{0, 1, 12, 3}));
  DatasetOptions o;
  o.path = dir.path();
  const Status s = LoadDatasets(o).status();
  EXPECT_ERROR(s, StatusCode::kInvalidArgument,
               dir.Path("t10k-labels-idx1-ubyte") + ": label 12");
  EXPECT_ERROR(s, StatusCode::kInvalidArgument, "out of range");
}

// ---------------------------------------------------------------- CIFAR

// n records; record i: labels (coarse, fine) or (label), pixels (i + k) % 251.
std::string CifarRecords(int n, bool cifar100, int first = 0) {
  std::string out;
  for (int i = first; i < first + n; ++i) {
    if (cifar100) out += static_cast<char>(i % 20);
    out += static_cast<char>(cifar100 ? i % 100 : i % 10);
    for (int k = 0; k < 3072; ++k) out += static_cast<char>((i + k) % 251);
  }
  return out;
}

void WriteCifar10(const std::string& dir) {
  for (int b = 1; b <= 5; ++b) {
    WriteBytes(dir + "/data_batch_" + std::to_string(b) + ".bin",
               CifarRecords(3, false, 3 * (b - 1)));
  }
  WriteBytes(dir + "/test_batch.bin", CifarRecords(4, false));
}

TEST(CifarReaderTest, ReadsCifar10) {
  TempDir dir;
  WriteCifar10(dir.path());
  StatusOr<ImageDataset> train = ReadCifar(dir.path(), false, true);
  ASSERT_TRUE(train.ok()) << train.status();
  EXPECT_EQ(train->images.sizes(), (at::IntArrayRef{15, 3, 32, 32}));
  EXPECT_EQ(train->num_classes, 10);
  for (int i = 0; i < 15; ++i) {
    EXPECT_EQ(train->labels[i].item<int64_t>(), i % 10);
    // Planar R, G, B as stored: channel 1 starts at byte 1024.
    EXPECT_EQ(train->images[i][1][0][0].item<uint8_t>(), (i + 1024) % 251);
    EXPECT_EQ(train->images[i][2][31][31].item<uint8_t>(), (i + 3071) % 251);
  }
  StatusOr<ImageDataset> test = ReadCifar(dir.path(), false, false);
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_EQ(test->size(), 4);

  DatasetOptions o;
  o.kind = DatasetKind::kCifar10;
  o.path = dir.path();
  StatusOr<DatasetSplits> s = LoadDatasets(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train.size(), 15);
  EXPECT_EQ(s->test.size(), 4);
}

TEST(CifarReaderTest, ReadsCifar100FineLabelsFromArchiveFolder) {
  TempDir dir;
  const std::string sub = dir.Path("cifar-100-binary");
  WriteBytes(sub + "/train.bin", CifarRecords(120, true));
  WriteBytes(sub + "/test.bin", CifarRecords(5, true));
  StatusOr<ImageDataset> train = ReadCifar(dir.path(), true, true);
  ASSERT_TRUE(train.ok()) << train.status();
  EXPECT_EQ(train->size(), 120);
  EXPECT_EQ(train->num_classes, 100);
  EXPECT_EQ(train->labels[57].item<int64_t>(), 57);  // fine, not coarse (17)
  EXPECT_EQ(train->labels[110].item<int64_t>(), 10);
  EXPECT_EQ(train->images[3][0][0][1].item<uint8_t>(), 4);
}

TEST(CifarReaderTest, RejectsTruncatedFile) {
  TempDir dir;
  WriteCifar10(dir.path());
  const std::string bad = dir.Path("data_batch_3.bin");
  WriteBytes(bad, CifarRecords(3, false).substr(0, 3073 * 2 + 100));
  const Status s = ReadCifar(dir.path(), false, true).status();
  EXPECT_ERROR(s, StatusCode::kDataLoss, bad + ": truncated");
  EXPECT_ERROR(s, StatusCode::kDataLoss, "3073-byte record");
  WriteBytes(dir.Path("test.bin"), CifarRecords(2, false));  // 3073 != 3074
  EXPECT_ERROR(ReadCifar(dir.path(), true, false).status(),
               StatusCode::kDataLoss, "3074-byte record");
}

TEST(CifarReaderTest, RejectsLabelOutOfRange) {
  TempDir dir;
  WriteCifar10(dir.path());
  std::string records = CifarRecords(4, false);
  records[3073 * 2] = 10;
  WriteBytes(dir.Path("test_batch.bin"), records);
  EXPECT_ERROR(
      ReadCifar(dir.path(), false, false).status(), StatusCode::kDataLoss,
      dir.Path("test_batch.bin") + ": record 2: label 10 out of range");
}

TEST(CifarReaderTest, MissingBatchIsNotFound) {
  TempDir dir;
  WriteCifar10(dir.path());
  fs::remove(dir.Path("data_batch_4.bin"));
  EXPECT_ERROR(ReadCifar(dir.path(), false, true).status(),
               StatusCode::kNotFound, dir.Path("data_batch_4.bin"));
}

// ---------------------------------------------------------------- folders

// A w x h PNG with `channels` channels; pixel value (seed + x + 3y + 50c).
void WritePng(const std::string& path, int w, int h, int channels, int seed) {
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  std::vector<uint8_t> px(static_cast<size_t>(w * h * channels));
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      for (int c = 0; c < channels; ++c) {
        px[(y * w + x) * channels + c] =
            static_cast<uint8_t>((seed + x + 3 * y + 50 * c) % 256);
      }
    }
  }
  TERN_CHECK(stbi_write_png(path.c_str(), w, h, channels, px.data(),
                            w * channels) != 0)
      << path;
}

TEST(ImageFolderTest, ReadsClassesInSortedOrder) {
  TempDir dir;
  WritePng(dir.Path("train/zebra/a.png"), 6, 5, 1, 10);
  WritePng(dir.Path("train/ant/b.png"), 6, 5, 1, 20);
  WritePng(dir.Path("train/ant/a.PNG"), 6, 5, 1, 30);
  WriteBytes(dir.Path("train/ant/notes.txt"), "ignored");
  StatusOr<ImageDataset> d = ReadImageFolder(dir.Path("train"), 0);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->images.sizes(), (at::IntArrayRef{3, 1, 5, 6}));
  EXPECT_EQ(d->num_classes, 2);
  EXPECT_EQ(d->class_names, (std::vector<std::string>{"ant", "zebra"}));
  // ant/a.PNG, ant/b.png, zebra/a.png.
  EXPECT_EQ(d->labels[0].item<int64_t>(), 0);
  EXPECT_EQ(d->labels[1].item<int64_t>(), 0);
  EXPECT_EQ(d->labels[2].item<int64_t>(), 1);
  EXPECT_EQ(d->images[0][0][0][0].item<uint8_t>(), 30);
  EXPECT_EQ(d->images[1][0][2][3].item<uint8_t>(), 20 + 3 + 6);
  EXPECT_EQ(d->images[2][0][4][5].item<uint8_t>(), 10 + 5 + 12);
}

TEST(ImageFolderTest, ReadsWebpAndSaysWhatItSkipped) {
  TempDir dir;
  WritePng(dir.Path("train/a/1.png"), 4, 4, 3, 5);
  std::vector<uint8_t> rgb(4 * 4 * 3, 200);
  uint8_t* webp = nullptr;
  const size_t webp_size = WebPEncodeLosslessRGB(rgb.data(), 4, 4, 4 * 3, &webp);
  WriteBytes(dir.Path("train/a/2.webp"),
             std::string(reinterpret_cast<const char*>(webp), webp_size));
  WebPFree(webp);
  WriteBytes(dir.Path("train/a/3.tif"), "not read");
  WriteBytes(dir.Path("train/a/README"), "not read");
  testing::internal::CaptureStderr();
  StatusOr<ImageDataset> d = ReadImageFolder(dir.Path("train"), 0);
  const std::string log = testing::internal::GetCapturedStderr();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->images.sizes(), (at::IntArrayRef{2, 3, 4, 4}));
  EXPECT_EQ(d->images[1][2][3][3].item<uint8_t>(), 200);
  EXPECT_NE(log.find("skipped 2 files that are not images of a supported format "
                     "((no extension), .tif)"),
            std::string::npos)
      << log;
}

TEST(ImageFolderTest, MixedGreyAndColourBecomeRgb) {
  TempDir dir;
  WritePng(dir.Path("train/a/grey.png"), 4, 4, 1, 7);
  WritePng(dir.Path("train/b/rgb.png"), 4, 4, 3, 9);
  WritePng(dir.Path("train/b/rgba.png"), 4, 4, 4, 11);
  StatusOr<ImageDataset> d = ReadImageFolder(dir.Path("train"), 0);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->images.sizes(), (at::IntArrayRef{3, 3, 4, 4}));
  // Grey is replicated to R=G=B; RGB keeps its planes; alpha is dropped.
  EXPECT_EQ(d->images[0][0][1][2].item<uint8_t>(), 7 + 2 + 3);
  EXPECT_EQ(d->images[0][2][1][2].item<uint8_t>(), 7 + 2 + 3);
  EXPECT_EQ(d->images[1][1][1][2].item<uint8_t>(), 9 + 2 + 3 + 50);
  EXPECT_EQ(d->images[2][2][0][0].item<uint8_t>(), 11 + 100);
}

TEST(ImageFolderTest, ResizesAndUsesValFolderAsTestSplit) {
  TempDir dir;
  WritePng(dir.Path("train/cat/1.png"), 20, 10, 3, 1);
  WritePng(dir.Path("train/dog/1.png"), 12, 16, 3, 2);
  WritePng(dir.Path("val/dog/1.png"), 9, 9, 1, 3);  // grey: follows train (RGB)
  DatasetOptions o;
  o.kind = DatasetKind::kImageFolder;
  o.path = dir.path();
  o.image_size = 8;
  StatusOr<DatasetSplits> s = LoadDatasets(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train.images.sizes(), (at::IntArrayRef{2, 3, 8, 8}));
  EXPECT_EQ(s->test.images.sizes(), (at::IntArrayRef{1, 3, 8, 8}));
  EXPECT_EQ(s->test.labels[0].item<int64_t>(), 1);  // "dog" in train's order
  EXPECT_EQ(s->test.num_classes, 2);
}

TEST(ImageFolderTest, RejectsCorruptImageNamingTheFile) {
  TempDir dir;
  WritePng(dir.Path("train/a/good.png"), 4, 4, 1, 0);
  WriteBytes(dir.Path("train/b/broken.png"), "this is not a png at all");
  EXPECT_ERROR(ReadImageFolder(dir.Path("train"), 0).status(),
               StatusCode::kDataLoss,
               "cannot decode " + dir.Path("train/b/broken.png"));
}

TEST(ImageFolderTest, RejectsTruncatedImageNamingTheFile) {
  TempDir dir;
  WritePng(dir.Path("train/a/good.png"), 16, 16, 3, 0);
  WritePng(dir.Path("full.png"), 16, 16, 3, 5);
  StatusOr<std::string> png = ReadFileToString(dir.Path("full.png"));
  ASSERT_TRUE(png.ok());
  // Header intact (so the size probe passes), pixel data cut.
  WriteBytes(dir.Path("train/a/cut.png"), png->substr(0, 45));
  EXPECT_ERROR(ReadImageFolder(dir.Path("train"), 0).status(),
               StatusCode::kDataLoss,
               "cannot decode " + dir.Path("train/a/cut.png"));
}

TEST(ImageFolderTest, RejectsEmptyClassFolder) {
  TempDir dir;
  WritePng(dir.Path("train/a/1.png"), 4, 4, 1, 0);
  fs::create_directories(dir.Path("train/b"));
  WriteBytes(dir.Path("train/b/readme.txt"), "no images here");
  EXPECT_ERROR(ReadImageFolder(dir.Path("train"), 0).status(),
               StatusCode::kInvalidArgument,
               dir.Path("train/b") + ": class folder is empty");
  EXPECT_ERROR(ReadImageFolder(dir.Path("nothing"), 0).status(),
               StatusCode::kNotFound, dir.Path("nothing"));
}

TEST(ImageFolderTest, RejectsUnequalSizesWithoutImageSize) {
  TempDir dir;
  WritePng(dir.Path("train/a/1.png"), 4, 4, 1, 0);
  WritePng(dir.Path("train/a/2.png"), 5, 4, 1, 0);
  EXPECT_ERROR(ReadImageFolder(dir.Path("train"), 0).status(),
               StatusCode::kInvalidArgument,
               dir.Path("train/a/2.png") + ": image is 4x5");
  EXPECT_TRUE(ReadImageFolder(dir.Path("train"), 4).ok());
}

TEST(ImageFolderTest, RejectsTestClassMissingFromTrain) {
  TempDir dir;
  WritePng(dir.Path("train/a/1.png"), 4, 4, 1, 0);
  WritePng(dir.Path("test/c/1.png"), 4, 4, 1, 0);
  DatasetOptions o;
  o.kind = DatasetKind::kImageFolder;
  o.path = dir.path();
  EXPECT_ERROR(LoadDatasets(o).status(), StatusCode::kInvalidArgument,
               dir.Path("test/c") + ": class not present");
}

// What a reader accepted, even from a damaged file, is a well-formed data
// set: [N, C, H, W] uint8 images, N labels within the classes.
void ExpectWellFormed(const StatusOr<ImageDataset>& read, const std::string& what) {
  if (!read.ok()) return;
  ASSERT_EQ(read->images.dim(), 4) << what;
  EXPECT_EQ(read->images.scalar_type(), at::kByte) << what;
  ASSERT_EQ(read->labels.dim(), 1) << what;
  EXPECT_EQ(read->labels.size(0), read->images.size(0)) << what;
  EXPECT_GT(read->num_classes, 0) << what;
  if (read->labels.numel() > 0) {
    EXPECT_GE(read->labels.min().item<int64_t>(), 0) << what;
    EXPECT_LT(read->labels.max().item<int64_t>(), read->num_classes) << what;
  }
}

TEST(ReaderRobustnessTest, SurvivesRandomCorruption) {
  // Mutated and cut files must give a status or, by luck, well-formed data,
  // never a crash. This binary links LibTorch, which scripts/sanitize.sh
  // leaves out: the parsers' fuzz targets search further with exact
  // properties, idx_fuzz and image_fuzz under ASan/UBSan there, cifar_fuzz
  // (LibTorch too) in the normal build.
  TempDir dir;
  std::mt19937 rng(17);
  const IdxSet set = MakeIdxSet(20, 6, 6, 10);
  WriteGzip(dir.Path("ref.gz"), set.images);
  WritePng(dir.Path("ref.png"), 12, 9, 3, 4);
  const std::string gz = *ReadFileToString(dir.Path("ref.gz"));
  const std::string png = *ReadFileToString(dir.Path("ref.png"));
  const std::string cifar = CifarRecords(2, true);
  WriteBytes(dir.Path("labels"), set.labels);
  auto mutate = [&](std::string bytes) {
    if (rng() % 3 == 0) return bytes.substr(0, rng() % (bytes.size() + 1));
    for (int k = 1 + rng() % 4; k > 0; --k) {
      bytes[rng() % bytes.size()] = static_cast<char>(rng());
    }
    return bytes;
  };
  int failures = 0;
  const auto count = [&](const StatusOr<ImageDataset>& read, const std::string& what) {
    ExpectWellFormed(read, what);
    failures += !read.ok();
  };
  for (int iter = 0; iter < 150; ++iter) {
    WriteBytes(dir.Path("idx"), mutate(set.images));
    count(ReadIdx(dir.Path("idx"), dir.Path("labels")), "idx " + std::to_string(iter));
    WriteBytes(dir.Path("idx.gz"), mutate(gz));
    count(ReadIdx(dir.Path("idx.gz"), dir.Path("labels")), "idx.gz " + std::to_string(iter));
    WriteBytes(dir.Path("c100/train.bin"), mutate(cifar));
    count(ReadCifar(dir.Path("c100"), true, true), "cifar " + std::to_string(iter));
    WriteBytes(dir.Path("folder/a/x.png"), mutate(png));
    count(ReadImageFolder(dir.Path("folder"), 0), "png " + std::to_string(iter));
  }
  EXPECT_GT(failures, 150);
}

// ---------------------------------------------------------------- sampler

TEST(ShardedSamplerTest, ShardsAreDisjointAndCoverTheGlobalBatch) {
  const int world = 4;
  std::vector<ShardedSampler> ranks;
  for (int r = 0; r < world; ++r)
    ranks.emplace_back(103, 16, r, world, 9, true);
  EXPECT_EQ(ranks[0].steps_per_epoch(), 6);  // 103 / 16, last 7 dropped
  ShardedSampler single(103, 16, 0, 1, 9, true);
  std::set<int64_t> epoch_seen;
  for (int64_t step = 0; step < 6; ++step) {
    std::vector<int64_t> joined;
    for (const ShardedSampler& s : ranks) {
      const std::vector<int64_t> part = s.Indices(2, step);
      EXPECT_EQ(part.size(), 4u);
      joined.insert(joined.end(), part.begin(), part.end());
    }
    EXPECT_EQ(joined, single.Indices(2, step));
    for (int64_t i : joined) {
      EXPECT_TRUE(i >= 0 && i < 103);
      EXPECT_TRUE(epoch_seen.insert(i).second) << i;
    }
  }
  EXPECT_EQ(epoch_seen.size(), 96u);
}

TEST(ShardedSamplerTest, OneRankMicroBatchesEqualRankSlices) {
  const int world = 3;
  ShardedSampler single(50, 12, 0, 1, 1, true);
  for (int64_t step = 0; step < single.steps_per_epoch(); ++step) {
    for (int r = 0; r < world; ++r) {
      ShardedSampler rank(50, 12, r, world, 1, true);
      EXPECT_EQ(single.MicroBatchIndices(5, step, r, world),
                rank.Indices(5, step));
    }
  }
  // Uneven split: parts still partition the slice in order.
  std::vector<int64_t> joined;
  for (int m = 0; m < 5; ++m) {
    const std::vector<int64_t> part = single.MicroBatchIndices(0, 1, m, 5);
    joined.insert(joined.end(), part.begin(), part.end());
  }
  EXPECT_EQ(joined, single.Indices(0, 1));
}

TEST(ShardedSamplerTest, DeterministicPerEpochAndDifferentAcrossEpochs) {
  ShardedSampler a(1000, 100, 0, 1, 42, true);
  ShardedSampler b(1000, 100, 0, 1, 42, true);
  ShardedSampler copy = a;
  EXPECT_EQ(*a.Permutation(3), *b.Permutation(3));
  EXPECT_EQ(*copy.Permutation(3), *b.Permutation(3));
  EXPECT_EQ(a.Indices(3, 7), b.Indices(3, 7));
  EXPECT_NE(*a.Permutation(3), *a.Permutation(4));
  EXPECT_EQ(*a.Permutation(3), *b.Permutation(3));  // after the cache moved
  ShardedSampler other_seed(1000, 100, 0, 1, 43, true);
  EXPECT_NE(*other_seed.Permutation(3), *a.Permutation(3));
  std::vector<int64_t> sorted = *a.Permutation(4);
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) EXPECT_EQ(sorted[i], i);
}

TEST(ShardedSamplerTest, NoShuffleIsIdentity) {
  ShardedSampler s(10, 4, 1, 2, 5, false);
  EXPECT_EQ(s.steps_per_epoch(), 2);
  EXPECT_EQ(s.Indices(0, 0), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(s.Indices(7, 1), (std::vector<int64_t>{6, 7}));
}

// ---------------------------------------------------------------- loader

// n random-ish images [n, c, h, w] with labels i % 10.
ImageDataset MakeDataset(int64_t n, int64_t c, int64_t h, int64_t w) {
  ImageDataset d;
  d.images = at::empty({n, c, h, w}, at::kByte);
  uint8_t* p = d.images.data_ptr<uint8_t>();
  for (int64_t i = 0; i < d.images.numel(); ++i) {
    p[i] = static_cast<uint8_t>((i * 2654435761u) >> 7);
  }
  d.labels = at::arange(n, at::kLong).remainder(10);
  d.num_classes = 10;
  return d;
}

std::vector<Batch> RunEpoch(BatchLoader& loader, int64_t epoch,
                            int64_t first_step = 0) {
  loader.StartEpoch(epoch, first_step);
  std::vector<Batch> out;
  while (std::optional<Batch> b = loader.Next()) out.push_back(std::move(*b));
  return out;
}

void ExpectSameBatches(const std::vector<Batch>& a,
                       const std::vector<Batch>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].step, b[i].step);
    EXPECT_EQ(a[i].epoch, b[i].epoch);
    EXPECT_TRUE(at::equal(a[i].images, b[i].images)) << "batch " << i;
    EXPECT_TRUE(at::equal(a[i].labels, b[i].labels)) << "batch " << i;
  }
}

TEST(BatchLoaderTest, SameBatchesForAnyThreadCount) {
  const ImageDataset data = MakeDataset(70, 3, 8, 8);
  const Normalization norm = ComputeMeanStd(data);
  ShardedSampler sampler(70, 8, 0, 1, 11, true);
  BatchLoader inline_loader(data, sampler, norm, {}, true, 11, 0, 1);
  BatchLoader one(data, sampler, norm, {}, true, 11, 1, 2);
  BatchLoader two(data, sampler, norm, {}, true, 11, 2, 3);
  BatchLoader four(data, sampler, norm, {}, true, 11, 4, 1);
  const std::vector<Batch> reference = RunEpoch(one, 1);
  ASSERT_EQ(reference.size(), 8u);
  EXPECT_EQ(reference[0].images.sizes(), (at::IntArrayRef{8, 3, 8, 8}));
  EXPECT_EQ(reference[0].images.scalar_type(), at::kFloat);
  ExpectSameBatches(RunEpoch(two, 1), reference);
  ExpectSameBatches(RunEpoch(four, 1), reference);
  ExpectSameBatches(RunEpoch(inline_loader, 1), reference);
  // The labels are those of the sampled images.
  const std::vector<int64_t> idx = sampler.Indices(1, 3);
  for (size_t i = 0; i < idx.size(); ++i) {
    EXPECT_EQ(reference[3].labels[i].item<int64_t>(), idx[i] % 10);
  }
}

TEST(BatchLoaderTest, RawByteBatchesNormalizeToTheFloatBatches) {
  const ImageDataset data = MakeDataset(48, 3, 8, 8);
  const Normalization norm = ComputeMeanStd(data);
  ShardedSampler sampler(48, 8, 0, 1, 4, true);
  BatchLoader floats(data, sampler, norm, {}, /*train=*/true, 4, 2, 2);
  BatchFormat raw_format;
  raw_format.raw_bytes = true;
  BatchLoader raw(data, sampler, norm, {}, /*train=*/true, 4, 2, 2, raw_format);
  const std::vector<Batch> a = RunEpoch(floats, 2);
  const std::vector<Batch> b = RunEpoch(raw, 2);
  ASSERT_EQ(a.size(), b.size());
  const NormalizationTensors t = MakeNormalizationTensors(norm, 3, at::kCPU);
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(b[i].images.scalar_type(), at::kByte);
    EXPECT_TRUE(at::equal(a[i].labels, b[i].labels));
    const at::Tensor normalized = NormalizeBatch(b[i].images, t);
    EXPECT_EQ(normalized.scalar_type(), at::kFloat);
    // Augmented alike (crops pad with black, which normalizes to the bias).
    EXPECT_LT((normalized - a[i].images).abs().max().item<float>(), 1e-5) << "batch " << i;
  }
}

TEST(BatchLoaderTest, DeterministicAcrossRunsAndDifferentAcrossEpochs) {
  const ImageDataset data = MakeDataset(40, 1, 6, 6);
  const Normalization norm = ComputeMeanStd(data);
  ShardedSampler sampler(40, 10, 0, 1, 5, true);
  std::vector<Batch> first, second;
  {
    BatchLoader loader(data, sampler, norm, {}, true, 5, 2, 2);
    first = RunEpoch(loader, 0);
  }
  {
    BatchLoader loader(data, sampler, norm, {}, true, 5, 3, 4);
    second = RunEpoch(loader, 0);
    const std::vector<Batch> next_epoch = RunEpoch(loader, 1);
    EXPECT_FALSE(at::equal(next_epoch[0].images, first[0].images));
  }
  ExpectSameBatches(first, second);
}

TEST(BatchLoaderTest, MidEpochResumeMatchesUninterruptedRun) {
  const ImageDataset data = MakeDataset(64, 3, 5, 5);
  const Normalization norm = ComputeMeanStd(data);
  ShardedSampler sampler(64, 8, 0, 1, 2, true);
  BatchLoader full_loader(data, sampler, norm, {}, true, 2, 2, 2);
  const std::vector<Batch> full = RunEpoch(full_loader, 3);
  ASSERT_EQ(full.size(), 8u);
  std::vector<Batch> resumed;
  {
    // Interrupted after 3 batches (the loader dies mid-epoch) ...
    BatchLoader loader(data, sampler, norm, {}, true, 2, 2, 4);
    loader.StartEpoch(3, 0);
    for (int i = 0; i < 3; ++i) resumed.push_back(*loader.Next());
  }
  // ... then a new process resumes at step 3.
  BatchLoader loader(data, sampler, norm, {}, true, 2, 3, 2);
  for (Batch& b : RunEpoch(loader, 3, 3)) resumed.push_back(std::move(b));
  ExpectSameBatches(resumed, full);
  // Restarting an epoch on the same loader mid-way also works.
  loader.StartEpoch(3, 0);
  ASSERT_TRUE(loader.Next().has_value());
  ExpectSameBatches(RunEpoch(loader, 3, 6), {full[6], full[7]});
}

TEST(BatchLoaderTest, TwoRanksSeeTheSameAugmentedImagesAsOneRank) {
  const ImageDataset data = MakeDataset(50, 3, 8, 8);
  const Normalization norm = ComputeMeanStd(data);
  ShardedSampler one_rank(50, 12, 0, 1, 8, true);
  BatchLoader single(data, one_rank, norm, {}, true, 8, 2, 2);
  std::vector<std::vector<Batch>> ranks;
  for (int r = 0; r < 2; ++r) {
    BatchLoader loader(data, ShardedSampler(50, 12, r, 2, 8, true), norm, {},
                       true, 8, 1, 2);
    ranks.push_back(RunEpoch(loader, 4));
  }
  const std::vector<Batch> whole = RunEpoch(single, 4);
  ASSERT_EQ(whole.size(), 4u);
  for (size_t s = 0; s < whole.size(); ++s) {
    EXPECT_TRUE(at::equal(at::cat({ranks[0][s].images, ranks[1][s].images}),
                          whole[s].images));
    EXPECT_TRUE(at::equal(at::cat({ranks[0][s].labels, ranks[1][s].labels}),
                          whole[s].labels));
  }
}

TEST(BatchLoaderTest, AugmentationIsPadCropAndFlip) {
  // One 1x4x4 image; no shuffle. Every augmented sample must equal some
  // shift (|dx|, |dy| <= 1) of the image, optionally mirrored, with zero
  // padding; over many epochs, both flips and several shifts occur.
  ImageDataset data = MakeDataset(1, 1, 4, 4);
  Normalization norm{{0.0f}, {1.0f}};
  ShardedSampler sampler(1, 1, 0, 1, 0, false);
  AugmentOptions augment;
  augment.pad = 1;
  BatchLoader loader(data, sampler, norm, augment, true, 3, 1, 1);
  const at::Tensor img = data.images[0][0].to(at::kFloat) / 255.0;
  const at::Tensor padded = at::constant_pad_nd(img, {1, 1, 1, 1}, 0);
  std::set<std::tuple<int, int, bool>> seen;
  for (int64_t epoch = 0; epoch < 60; ++epoch) {
    const at::Tensor out = RunEpoch(loader, epoch)[0].images[0][0];
    bool matched = false;
    for (int oy = 0; oy <= 2 && !matched; ++oy) {
      for (int ox = 0; ox <= 2 && !matched; ++ox) {
        const at::Tensor crop =
            padded.slice(0, oy, oy + 4).slice(1, ox, ox + 4);
        for (bool flip : {false, true}) {
          const at::Tensor want = flip ? crop.flip({1}) : crop;
          if (at::allclose(out, want, 1e-6, 1e-6)) {
            seen.insert({oy, ox, flip});
            matched = true;
            break;
          }
        }
      }
    }
    EXPECT_TRUE(matched) << "epoch " << epoch;
  }
  EXPECT_GT(seen.size(), 6u);
  // train=false: no augmentation, identical to the eval batch.
  BatchLoader plain(data, sampler, norm, augment, false, 3, 0, 1);
  EXPECT_TRUE(
      at::equal(RunEpoch(plain, 0)[0].images, MakeEvalBatch(data, 0, 1, norm)));
}

TEST(BatchLoaderTest, DestructorStopsWorkersMidEpoch) {
  const ImageDataset data = MakeDataset(400, 3, 16, 16);
  ShardedSampler sampler(400, 4, 0, 1, 0, true);
  BatchLoader loader(data, sampler, ComputeMeanStd(data), {}, true, 0, 4, 8);
  loader.StartEpoch(0, 0);
  EXPECT_TRUE(loader.Next().has_value());
  // `loader` goes out of scope with workers busy and batches queued.
  // Before the first StartEpoch, Next() returns nullopt.
  BatchLoader idle(data, sampler, ComputeMeanStd(data), {}, true, 0, 2, 2);
  EXPECT_FALSE(idle.Next().has_value());
}

// ---------------------------------------------------------------- eval, norm

TEST(NormalizationTest, MatchesDirectComputation) {
  const ImageDataset data = MakeDataset(30, 3, 7, 5);
  const Normalization norm = ComputeMeanStd(data);
  const at::Tensor x = data.images.to(at::kDouble) / 255.0;
  for (int c = 0; c < 3; ++c) {
    const at::Tensor xc = x.select(1, c);
    EXPECT_NEAR(norm.mean[c], xc.mean().item<double>(), 1e-6);
    EXPECT_NEAR(norm.std[c], xc.std(/*unbiased=*/false).item<double>(), 1e-6);
  }
  ImageDataset constant = data;
  constant.images = at::full({2, 1, 3, 3}, 9, at::kByte);
  constant.labels = at::zeros({2}, at::kLong);
  EXPECT_EQ(ComputeMeanStd(constant).std[0], 1.0f);
}

TEST(EvalTest, RangesCoverEveryImageOnceAcrossRanks) {
  std::vector<int64_t> covered;
  for (int r = 0; r < 3; ++r) {
    for (auto [b, e] : EvalRanges(47, 5, r, 3)) {
      EXPECT_LE(e - b, 5);
      EXPECT_LT(b, e);
      for (int64_t i = b; i < e; ++i) covered.push_back(i);
    }
  }
  ASSERT_EQ(covered.size(), 47u);
  for (int64_t i = 0; i < 47; ++i) EXPECT_EQ(covered[i], i);
  EXPECT_EQ(EvalRanges(10, 4, 0, 1), (std::vector<std::pair<int64_t, int64_t>>{
                                         {0, 4}, {4, 8}, {8, 10}}));
}

TEST(EvalTest, MakeEvalBatchNormalizes) {
  const ImageDataset data = MakeDataset(9, 3, 4, 4);
  const Normalization norm = ComputeMeanStd(data);
  const at::Tensor batch = MakeEvalBatch(data, 2, 7, norm);
  ASSERT_EQ(batch.sizes(), (at::IntArrayRef{5, 3, 4, 4}));
  const at::Tensor mean = at::tensor(norm.mean).view({1, 3, 1, 1});
  const at::Tensor std = at::tensor(norm.std).view({1, 3, 1, 1});
  const at::Tensor want =
      (data.images.slice(0, 2, 7).to(at::kFloat) / 255.0 - mean) / std;
  EXPECT_TRUE(at::allclose(batch, want, 1e-5, 1e-5));
}

// ---------------------------------------------------------------- real data

TEST(FashionMnistTest, LoadsTheDebianDataset) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!fs::is_directory(dir)) {
    GTEST_SKIP() << dir << " is missing (Debian package dataset-fashion-mnist)";
  }
  DatasetOptions o;
  o.path = dir;
  StatusOr<DatasetSplits> s = LoadDatasets(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train.images.sizes(), (at::IntArrayRef{60000, 1, 28, 28}));
  EXPECT_EQ(s->test.images.sizes(), (at::IntArrayRef{10000, 1, 28, 28}));
  EXPECT_EQ(s->train.num_classes, 10);
  EXPECT_EQ(s->test.num_classes, 10);
  EXPECT_EQ(s->val.size(), 0);
  // Balanced: 6000 training and 1000 test images per class.
  EXPECT_TRUE(at::equal(at::bincount(s->train.labels),
                        at::full({10}, 6000, at::kLong)));
  EXPECT_TRUE(
      at::equal(at::bincount(s->test.labels), at::full({10}, 1000, at::kLong)));
  const Normalization norm = ComputeMeanStd(s->train);
  EXPECT_NEAR(norm.mean[0], 0.2860, 1e-3);  // the well-known statistics
  EXPECT_NEAR(norm.std[0], 0.3530, 1e-3);
}

}  // namespace
}  // namespace tern::trainer
