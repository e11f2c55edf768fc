#include "server/path_access.h"

#include <gtest/gtest.h>

#include <map>

namespace tern::server {
namespace {

JobLayout Layout() {
  JobLayout layout;
  layout.artifact_root = "/srv/tern/artifacts";
  layout.checkpoint_root = "/srv/tern/checkpoints";
  return layout;
}

// Jobs by directory name, as ternd's store would answer.
JobDirOwner Owners(std::map<std::string, std::string> owners) {
  return [owners](const std::string& name) -> std::optional<std::string> {
    auto it = owners.find(name);
    if (it == owners.end()) return std::nullopt;
    return it->second;
  };
}

v1::JobSpec SpecOf(const std::string& owner) {
  v1::JobSpec spec;
  spec.set_owner(owner);
  spec.mutable_dataset()->set_kind(v1::DATASET_SYNTHETIC);
  return spec;
}

TEST(JobIdOfDirNameTest, ReadsOnlyNamesJobDirNameMakes) {
  EXPECT_EQ(JobIdOfDirName("job-42-1700000000000000"), 42);
  for (const char* name : {"job-42", "job--1", "job-42-", "job-4x-1", "job-42-1a", "xjob-1-2",
                           "job-9999999999999999999-1"}) {
    EXPECT_FALSE(JobIdOfDirName(name).has_value()) << name;
  }
}

TEST(CheckSpecPathsTest, TernsRootsHoldOnlyTheOwnersOwnJobs) {
  const JobDirOwner owners = Owners({{"job-1-100", "alice"}, {"job-2-200", "bob"}});
  v1::JobSpec spec = SpecOf("alice");
  // Her own artifact and checkpoints: to start from, and to resume into.
  spec.mutable_model()->set_init_from("/srv/tern/artifacts/job-1-100.tern");  // older layout
  spec.mutable_checkpoint()->set_directory("/srv/tern/checkpoints/job-1-100");
  EXPECT_TRUE(CheckSpecPaths(spec, PathPolicy{}, Layout(), owners).ok());
  spec.mutable_model()->set_init_from("/srv/tern/artifacts/job-1-100/job-1-100.tern");
  EXPECT_TRUE(CheckSpecPaths(spec, PathPolicy{}, Layout(), owners).ok());
  spec.mutable_model()->set_init_from("/srv/tern/artifacts/job-2-200/job-2-200.tern");
  EXPECT_EQ(CheckSpecPaths(spec, PathPolicy{}, Layout(), owners).code(),
            StatusCode::kPermissionDenied);

  spec.mutable_model()->set_init_from("/srv/tern/checkpoints/job-2-200/step-500");
  Status denied = CheckSpecPaths(spec, PathPolicy{}, Layout(), owners);
  EXPECT_EQ(denied.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.message(),
            "spec.model.init_from: /srv/tern/checkpoints/job-2-200/step-500 is in ternd's "
            "checkpoint root and belongs to a job of another owner");

  spec.mutable_model()->clear_init_from();
  spec.mutable_checkpoint()->set_directory("/srv/tern/checkpoints/job-3-300");
  EXPECT_EQ(CheckSpecPaths(spec, PathPolicy{}, Layout(), owners).message(),
            "spec.checkpoint.directory: /srv/tern/checkpoints/job-3-300 is in ternd's "
            "checkpoint root and belongs to no job");
  spec.mutable_checkpoint()->set_directory("/srv/tern/checkpoints");
  EXPECT_EQ(CheckSpecPaths(spec, PathPolicy{}, Layout(), owners).message(),
            "spec.checkpoint.directory: /srv/tern/checkpoints is in ternd's checkpoint root "
            "itself");
  spec.mutable_checkpoint()->set_directory("/srv/tern/artifacts/job-1-100");
  EXPECT_EQ(CheckSpecPaths(spec, PathPolicy{}, Layout(), owners).message(),
            "spec.checkpoint.directory: /srv/tern/artifacts/job-1-100 is in ternd's artifact "
            "root, which only ternd writes");
  // Without a policy every other path is the agent's Unix user's business.
  spec.mutable_checkpoint()->set_directory("/home/bob/ckpt");
  EXPECT_TRUE(CheckSpecPaths(spec, PathPolicy{}, Layout(), owners).ok());
  spec.mutable_checkpoint()->set_directory("/srv/tern//checkpoints/./job-2-200");
  EXPECT_EQ(CheckSpecPaths(spec, PathPolicy{}, Layout(), owners).code(),
            StatusCode::kPermissionDenied);
}

TEST(CheckSpecPathsTest, APolicyConfinesEveryOtherPathToTheOwnersRoots) {
  const PathPolicy policy{{"/datasets", "/home/{owner}"}, {"/scratch/{owner}"}};
  const JobDirOwner owners = Owners({{"job-1-100", "alice"}});
  v1::JobSpec spec = SpecOf("alice");
  spec.mutable_dataset()->set_kind(v1::DATASET_IMAGE_FOLDER);
  spec.mutable_dataset()->set_path("/home/alice/pets");
  spec.mutable_model()->set_init_from("/srv/tern/artifacts/job-1-100.tern");
  spec.mutable_checkpoint()->set_directory("/scratch/alice/pets-run");
  EXPECT_TRUE(CheckSpecPaths(spec, policy, Layout(), owners).ok());

  spec.mutable_dataset()->set_path("/home/bob/pets");
  const Status other_home = CheckSpecPaths(spec, policy, Layout(), owners);
  EXPECT_EQ(other_home.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(other_home.message(),
            "spec.dataset.path: /home/bob/pets is outside the directories this job may read "
            "(/datasets, /home/alice, /scratch/alice)");

  // IDX's default path is checked like a named one.
  spec.mutable_dataset()->set_kind(v1::DATASET_IDX);
  spec.mutable_dataset()->clear_path();
  EXPECT_NE(CheckSpecPaths(spec, policy, Layout(), owners).message().find(
                "spec.dataset.path: /usr/share/datasets/fashion-mnist is outside"),
            std::string::npos);

  // An owner name that is not a path component gets no "{owner}" roots.
  v1::JobSpec odd = SpecOf("../alice");
  odd.mutable_checkpoint()->set_directory("/scratch/alice/x");
  EXPECT_EQ(CheckSpecPaths(odd, policy, Layout(), owners).message(),
            "spec.checkpoint.directory: /scratch/alice/x is outside the directories this job "
            "may write (none)");
}

TEST(PathGrantForTest, CarriesTheOwnersRootsAndTheAdmittedPathsInTernsRoots) {
  EXPECT_FALSE(
      PathGrantFor(SpecOf("alice"), "/srv/tern/checkpoints/job-5-500", PathPolicy{}, Layout()));

  const PathPolicy policy{{"/datasets"}, {"/scratch/{owner}"}};
  v1::JobSpec spec = SpecOf("alice");
  spec.mutable_model()->set_init_from("/srv/tern/artifacts/job-1-100.tern");
  const std::optional<v1::PathGrant> grant =
      PathGrantFor(spec, "/srv/tern/checkpoints/job-5-500", policy, Layout());
  ASSERT_TRUE(grant.has_value());
  EXPECT_EQ(std::vector<std::string>(grant->read_roots().begin(), grant->read_roots().end()),
            (std::vector<std::string>{"/datasets", "/srv/tern/artifacts/job-1-100.tern"}));
  EXPECT_EQ(std::vector<std::string>(grant->write_roots().begin(), grant->write_roots().end()),
            (std::vector<std::string>{"/scratch/alice", "/srv/tern/checkpoints/job-5-500"}));

  // A checkpoint directory the spec names outside ternd's roots is not granted
  // by itself: the agent checks it against the roots.
  const std::optional<v1::PathGrant> named =
      PathGrantFor(spec, "/scratch/bob/x", policy, Layout());
  ASSERT_TRUE(named.has_value());
  EXPECT_EQ(named->write_roots_size(), 1);
}

}  // namespace
}  // namespace tern::server
