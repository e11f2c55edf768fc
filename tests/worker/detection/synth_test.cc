#include "worker/detection/synth.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <string>

#include "common/file_util.h"
#include "tests/worker/detection/test_util.h"
#include "worker/detection/coco.h"
#include "worker/detection/eval.h"

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>

namespace tern::detection {
namespace {

namespace fs = std::filesystem;

// Every regular file under `root`, by relative path, with its bytes.
std::map<std::string, std::string> ReadTree(const std::string& root) {
  std::map<std::string, std::string> out;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (!entry.is_regular_file()) continue;
    auto bytes = ReadFileToString(entry.path().string());
    TERN_CHECK(bytes.ok()) << bytes.status();
    out[fs::relative(entry.path(), root).string()] = *bytes;
  }
  return out;
}

SynthOptions SmallOptions(const std::string& dir) {
  SynthOptions o;
  o.output_dir = dir;
  o.image_size = 64;
  o.train_images = 24;
  o.val_images = 8;
  o.max_objects = 5;
  o.seed = 7;
  return o;
}

// Decodes a PNG to interleaved RGB; TERN_CHECKs success.
std::vector<uint8_t> DecodeRgb(const std::string& path, int* w, int* h) {
  int channels = 0;
  stbi_uc* data = stbi_load(path.c_str(), w, h, &channels, 3);
  TERN_CHECK(data != nullptr) << path << ": " << stbi_failure_reason();
  std::vector<uint8_t> out(data, data + static_cast<size_t>(*w) * *h * 3);
  stbi_image_free(data);
  return out;
}

TEST(SynthOptionsTest, ValidateNamesTheField) {
  const SynthOptions good = SmallOptions("/tmp/x");
  EXPECT_TRUE(good.Validate().ok());
  auto expect_bad = [](SynthOptions o, const std::string& field) {
    const Status s = o.Validate();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << field;
    EXPECT_EQ(s.message().rfind(field + ": ", 0), 0u) << s;
  };
  SynthOptions o = good;
  o.output_dir = "";
  expect_bad(o, "output_dir");
  o = good, o.image_size = 16;
  expect_bad(o, "image_size");
  o = good, o.train_images = 0;
  expect_bad(o, "train_images");
  o = good, o.val_images = -1;
  expect_bad(o, "val_images");
  o = good, o.max_objects = 0;
  expect_bad(o, "max_objects");
  o = good, o.num_classes = 5;
  expect_bad(o, "num_classes");
  o = good, o.num_classes = 0;
  expect_bad(o, "num_classes");
}

TEST(SynthTest, SameSeedGivesByteIdenticalFiles) {
  TempDir a, b;
  ASSERT_TRUE(WriteSynthCoco(SmallOptions(a.path())).ok());
  ASSERT_TRUE(WriteSynthCoco(SmallOptions(b.path())).ok());
  const auto tree_a = ReadTree(a.path());
  EXPECT_EQ(tree_a.size(), 24u + 8u + 2u);
  EXPECT_TRUE(tree_a.count("annotations/instances_train.json"));
  EXPECT_TRUE(tree_a.count("annotations/instances_val.json"));
  EXPECT_TRUE(tree_a.count("train/000000000001.png"));
  EXPECT_TRUE(tree_a.count("val/000000000025.png"));
  EXPECT_TRUE(tree_a == ReadTree(b.path()));
}

TEST(SynthTest, DifferentSeedGivesDifferentFiles) {
  TempDir a, b;
  SynthOptions other = SmallOptions(b.path());
  other.seed = 8;
  ASSERT_TRUE(WriteSynthCoco(SmallOptions(a.path())).ok());
  ASSERT_TRUE(WriteSynthCoco(other).ok());
  const auto tree_a = ReadTree(a.path());
  const auto tree_b = ReadTree(b.path());
  ASSERT_EQ(tree_a.size(), tree_b.size());
  int same = 0;
  for (const auto& [name, bytes] : tree_a) same += tree_b.at(name) == bytes;
  EXPECT_EQ(same, 0);
}

TEST(SynthTest, ImagesDoNotDependOnTheCounts) {
  TempDir a, b;
  SynthOptions more = SmallOptions(b.path());
  more.train_images = 30;  // shifts the val image ids by 6
  ASSERT_TRUE(WriteSynthCoco(SmallOptions(a.path())).ok());
  ASSERT_TRUE(WriteSynthCoco(more).ok());
  const auto tree_a = ReadTree(a.path());
  const auto tree_b = ReadTree(b.path());
  EXPECT_EQ(tree_a.at("train/000000000024.png"),
            tree_b.at("train/000000000024.png"));
  EXPECT_EQ(tree_a.at("val/000000000025.png"),
            tree_b.at("val/000000000031.png"));
}

TEST(SynthTest, AnnotationsParseAndBoxesLieWithinImages) {
  TempDir dir;
  const SynthOptions o = SmallOptions(dir.path());
  const auto summary = WriteSynthCoco(o);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->train_images, 24);
  EXPECT_EQ(summary->val_images, 8);

  CocoReadOptions strict;
  strict.out_of_image = BoxPolicy::kReject;  // nothing may need clipping
  std::set<int64_t> image_ids;
  for (const char* split : {"train", "val"}) {
    const auto s = LoadCocoSplit(
        dir.Path(std::string("annotations/instances_") + split + ".json"),
        dir.Path(split), strict);
    ASSERT_TRUE(s.ok()) << s.status();
    const CocoDataset& d = s->dataset;
    ASSERT_EQ(d.categories.size(), 4u);
    for (int k = 0; k < 4; ++k) {
      EXPECT_EQ(d.categories[k].id, k + 1);
      EXPECT_EQ(d.categories[k].name, SynthClassNames()[k]);
    }
    const int64_t objects = static_cast<int64_t>(d.annotations.size());
    EXPECT_EQ(objects,
              split[0] == 't' ? summary->train_objects : summary->val_objects);
    std::set<int> classes;
    for (const ImageRecord& r : s->records) {
      EXPECT_TRUE(image_ids.insert(r.image_id).second)
          << "image id reused " << r.image_id;
      EXPECT_EQ(r.width, 64);
      EXPECT_EQ(r.height, 64);
      EXPECT_GE(r.objects.size(), 1u);
      EXPECT_LE(r.objects.size(), 5u);
      for (const ObjectBox& obj : r.objects) {
        classes.insert(obj.class_index);
        EXPECT_GE(obj.box.x, 0);
        EXPECT_GE(obj.box.y, 0);
        EXPECT_GE(obj.box.w, 1);
        EXPECT_GE(obj.box.h, 1);
        EXPECT_LE(obj.box.x + obj.box.w, 64);
        EXPECT_LE(obj.box.y + obj.box.h, 64);
        EXPECT_FALSE(obj.iscrowd);
      }
    }
    if (split[0] == 't') {
      EXPECT_EQ(classes.size(), 4u) << "every class appears in train";
    }
    for (const CocoAnnotation& a : d.annotations) {
      EXPECT_GT(a.area, 0);
      EXPECT_LE(a.area, a.bbox.w * a.bbox.h);
    }
    // The ground truth scored as detections is perfect.
    std::vector<Detection> dets;
    for (const CocoAnnotation& a : d.annotations) {
      dets.push_back(Detection{a.image_id, a.category_id, a.bbox, 1.0});
    }
    const auto m = EvaluateDetections(d, dets);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_DOUBLE_EQ(*m->ap, 1.0);
  }
}

TEST(SynthTest, ImagesDecodeAndRectangleBoxesAreTight) {
  // One rectangle per image: its box holds the shape's colour (+-10 noise)
  // and nothing else.
  TempDir dir;
  SynthOptions o = SmallOptions(dir.path());
  o.max_objects = 1;
  o.num_classes = 1;
  ASSERT_TRUE(WriteSynthCoco(o).ok());
  const auto s = LoadCocoSplit(dir.Path("annotations/instances_train.json"),
                               dir.Path("train"));
  ASSERT_TRUE(s.ok()) << s.status();
  for (const ImageRecord& r : s->records) {
    int w = 0, h = 0;
    const std::vector<uint8_t> rgb = DecodeRgb(r.path, &w, &h);
    ASSERT_EQ(w, 64);
    ASSERT_EQ(h, 64);
    ASSERT_EQ(r.objects.size(), 1u);
    const BoxXywh& b = r.objects[0].box;
    for (int ch = 0; ch < 3; ++ch) {
      int lo = 255, hi = 0;
      for (int y = int(b.y); y < int(b.y + b.h); ++y) {
        for (int x = int(b.x); x < int(b.x + b.w); ++x) {
          const int v = rgb[(static_cast<size_t>(y) * w + x) * 3 + ch];
          lo = std::min(lo, v), hi = std::max(hi, v);
        }
      }
      EXPECT_LE(hi - lo, 20) << r.path << " channel " << ch;
    }
  }
}

TEST(SynthTest, CommandLineToolWritesTheSameDataSet) {
  TempDir cli, lib;
  const std::string cmd =
      std::string(TERN_SYNTH_COCO_BINARY) + " --output " + cli.path() +
      " --image-size 64 --train-images 24 --val-images 8" +
      " --max-objects 5 --num-classes 4 --seed 7 > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  ASSERT_TRUE(WriteSynthCoco(SmallOptions(lib.path())).ok());
  EXPECT_TRUE(ReadTree(cli.path()) == ReadTree(lib.path()));
  const std::string bad = std::string(TERN_SYNTH_COCO_BINARY) + " --output " +
                          cli.path() + " --num-classes 9 2> /dev/null";
  EXPECT_NE(std::system(bad.c_str()), 0);
}

}  // namespace
}  // namespace tern::detection
