#include "path_policy/spec_paths.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "tests/common/scoped_temp_dir.h"
#include "worker/trainer/spec.h"

namespace tern::paths {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> Fields(const std::vector<NamedPath>& named) {
  std::vector<std::string> out;
  for (const NamedPath& p : named) {
    out.push_back(p.field + "=" + p.path + (p.access == Access::kWrite ? " (w)" : ""));
  }
  return out;
}

v1::PathGrant Grant(std::vector<std::string> read, std::vector<std::string> write) {
  v1::PathGrant g;
  for (const std::string& r : read) g.add_read_roots(r);
  for (const std::string& w : write) g.add_write_roots(w);
  return g;
}

TEST(SpecPathsTest, TheTrainersDefaultsAreTheOnesChecked) {
  const trainer::DataConfig data;
  EXPECT_EQ(data.path, kDefaultIdxPath);
  EXPECT_EQ(data.train_annotations, kDefaultTrainAnnotations);
  EXPECT_EQ(data.val_annotations, kDefaultValAnnotations);
  EXPECT_EQ(data.train_images, kDefaultTrainImages);
  EXPECT_EQ(data.val_images, kDefaultValImages);
}

TEST(SpecPathsTest, ListsEveryPathASpecNames) {
  v1::JobSpec spec;
  EXPECT_EQ(Fields(*PathsNamedBy(spec)),
            (std::vector<std::string>{"dataset.path=/usr/share/datasets/fashion-mnist"}));

  spec.mutable_dataset()->set_kind(v1::DATASET_SYNTHETIC);
  spec.mutable_dataset()->set_path("relative/is/ignored");
  EXPECT_TRUE(PathsNamedBy(spec)->empty());

  spec.mutable_dataset()->set_kind(v1::DATASET_COCO);
  spec.mutable_dataset()->set_path("/data/shapes/");
  spec.mutable_dataset()->set_val_annotations("/other/val.json");
  spec.mutable_model()->set_init_from("/runs/fp.tern");
  spec.mutable_checkpoint()->set_directory("/scratch//ckpt");
  EXPECT_EQ(Fields(*PathsNamedBy(spec)),
            (std::vector<std::string>{
                "dataset.path=/data/shapes",
                "dataset.train_annotations=/data/shapes/annotations/instances_train.json",
                "dataset.val_annotations=/other/val.json",
                "dataset.train_images=/data/shapes/train",
                "dataset.val_images=/data/shapes/val",
                "model.init_from=/runs/fp.tern",
                "checkpoint.directory=/scratch/ckpt (w)"}));
}

TEST(SpecPathsTest, RelativeOrDotDotPathsAreInvalidNamingTheField) {
  v1::JobSpec spec;
  spec.mutable_dataset()->set_kind(v1::DATASET_CIFAR10);
  spec.mutable_dataset()->set_path("cifar");
  EXPECT_EQ(PathsNamedBy(spec).status().message(),
            "spec.dataset.path: must be an absolute path, got \"cifar\"");

  spec.mutable_dataset()->set_kind(v1::DATASET_COCO);
  spec.mutable_dataset()->set_path("/data/coco");
  spec.mutable_dataset()->set_train_images("../../home/bob/images");
  const Status escape = PathsNamedBy(spec).status();
  EXPECT_EQ(escape.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(escape.message().rfind("spec.dataset.train_images: must not contain \"..\"", 0), 0u)
      << escape.message();

  v1::JobSpec init;
  init.mutable_model()->set_init_from("fp.tern");
  EXPECT_EQ(PathsNamedBy(init, "").status().message(),
            "model.init_from: must be an absolute path, got \"fp.tern\"");
}

TEST(SpecPathsTest, EachPathMustLieUnderARootOfItsAccess) {
  v1::JobSpec spec;
  spec.mutable_dataset()->set_path("/datasets/fmnist");
  spec.mutable_model()->set_init_from("/scratch/alice/run1/fp.tern");
  spec.mutable_checkpoint()->set_directory("/scratch/alice/run2");
  const std::vector<NamedPath> named = *PathsNamedBy(spec);

  // A write root may be read (init_from from an earlier run's checkpoints).
  EXPECT_TRUE(CheckLexicalPaths(named, Grant({"/datasets"}, {"/scratch/alice"})).ok());

  const Status no_write = CheckLexicalPaths(named, Grant({"/datasets", "/scratch/alice"}, {}));
  EXPECT_EQ(no_write.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(no_write.message(),
            "spec.checkpoint.directory: /scratch/alice/run2 is outside the directories this "
            "job may write (none)");

  const Status other = CheckLexicalPaths(named, Grant({"/datasets"}, {"/scratch/alice2"}));
  EXPECT_EQ(other.message(),
            "spec.model.init_from: /scratch/alice/run1/fp.tern is outside the directories this "
            "job may read (/datasets, /scratch/alice2)");
}

TEST(SpecPathsTest, TheResolvedCheckFollowsSymlinksOutOfARoot) {
  testing_util::ScopedTempDir dir("tern_spec_paths_test");
  const std::string root = fs::canonical(dir.path()).string();
  fs::create_directories(root + "/alice/data");
  fs::create_directories(root + "/bob/checkpoints");
  fs::create_directory_symlink(root + "/bob/checkpoints", root + "/alice/bobs");
  fs::create_directory_symlink(root + "/alice", root + "/alice-link");

  v1::JobSpec spec;
  spec.mutable_dataset()->set_path(root + "/alice/data");
  spec.mutable_checkpoint()->set_directory(root + "/alice/bobs/job-1");
  const std::vector<NamedPath> named = *PathsNamedBy(spec);
  const v1::PathGrant grant = Grant({}, {root + "/alice"});

  EXPECT_TRUE(CheckLexicalPaths(named, grant).ok());  // what ternd can tell
  const Status resolved = CheckResolvedPaths(named, grant);
  EXPECT_EQ(resolved.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(resolved.message(), "spec.checkpoint.directory: " + root +
                                    "/alice/bobs/job-1 (which resolves to " + root +
                                    "/bob/checkpoints/job-1) is outside the directories this "
                                    "job may write (" + root + "/alice)");

  // A root that is itself a link is resolved too.
  spec.mutable_checkpoint()->set_directory(root + "/alice/run");
  EXPECT_TRUE(CheckResolvedPaths(*PathsNamedBy(spec), Grant({}, {root + "/alice-link"})).ok());
}

}  // namespace
}  // namespace tern::paths
