#include "path_policy/path_rules.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "tests/common/scoped_temp_dir.h"

namespace tern::paths {
namespace {

namespace fs = std::filesystem;

TEST(NormalizeAbsolutePathTest, CollapsesSlashesAndDotsAndRefusesRelativeOrDotDot) {
  EXPECT_EQ(*NormalizeAbsolutePath("f", "/a//./b/"), "/a/b");
  EXPECT_EQ(*NormalizeAbsolutePath("f", "/"), "/");
  EXPECT_EQ(*NormalizeAbsolutePath("f", "//./"), "/");
  EXPECT_EQ(*NormalizeAbsolutePath("f", "/a/..b/c.."), "/a/..b/c..");  // names, not ".."

  const Status relative = NormalizeAbsolutePath("spec.dataset.path", "data/x").status();
  EXPECT_EQ(relative.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(relative.message(), "spec.dataset.path: must be an absolute path, got \"data/x\"");
  EXPECT_EQ(NormalizeAbsolutePath("f", "").status().code(), StatusCode::kInvalidArgument);
  const Status dotdot = NormalizeAbsolutePath("f", "/data/alice/../bob").status();
  EXPECT_EQ(dotdot.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(dotdot.message().find("must not contain \"..\""), std::string::npos);
  EXPECT_EQ(NormalizeAbsolutePath("f", "/a/..").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(NormalizeAbsolutePath("f", std::string("/a\nb")).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(NormalizeAbsolutePath("f", "/" + std::string(5000, 'a')).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(JoinUnderTest, RelativeChildrenJoinTheBaseAndAbsoluteOnesStandAlone) {
  EXPECT_EQ(*JoinUnder("f", "/d", "annotations/a.json"), "/d/annotations/a.json");
  EXPECT_EQ(*JoinUnder("f", "/d", "/elsewhere/a.json"), "/elsewhere/a.json");
  EXPECT_EQ(JoinUnder("f", "/d", "../e").status().code(), StatusCode::kInvalidArgument);
}

TEST(IsUnderTest, ComparesWholeComponents) {
  EXPECT_TRUE(IsUnder("/data/alice", "/data/alice"));
  EXPECT_TRUE(IsUnder("/data/alice/x", "/data/alice"));
  EXPECT_FALSE(IsUnder("/data/alice2", "/data/alice"));
  EXPECT_FALSE(IsUnder("/data", "/data/alice"));
  EXPECT_TRUE(IsUnder("/anything", "/"));
}

TEST(ParseRootsTest, ReadsAListAndPlacesOwnerOnlyAsAWholeComponent) {
  EXPECT_TRUE(ParseRoots("--read-roots", "")->empty());
  const std::vector<std::string> roots = *ParseRoots("--read-roots", "/datasets,/home/{owner}/");
  EXPECT_EQ(roots, (std::vector<std::string>{"/datasets", "/home/{owner}"}));

  const Status empty_entry = ParseRoots("--read-roots", "/a,,/b").status();
  EXPECT_EQ(empty_entry.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(empty_entry.message(), "--read-roots entry 2: empty");
  EXPECT_EQ(ParseRoots("--write-roots", "scratch").status().message(),
            "--write-roots entry 1: must be an absolute path, got \"scratch\"");
  EXPECT_NE(ParseRoots("--write-roots", "/scratch/u-{owner}").status().message().find(
                "must be a whole path component"),
            std::string::npos);
}

TEST(ExpandRootsTest, ReplacesOwnerAndDropsRootsForOwnersThatAreNotPathSafe) {
  const std::vector<std::string> roots = {"/datasets", "/home/{owner}/data"};
  EXPECT_EQ(ExpandRoots(roots, "alice"),
            (std::vector<std::string>{"/datasets", "/home/alice/data"}));
  for (const char* owner : {"..", ".", "a/b", "", "a b", "x*"}) {
    EXPECT_EQ(ExpandRoots(roots, owner), (std::vector<std::string>{"/datasets"})) << owner;
  }
  EXPECT_TRUE(IsSafePathComponent("svc-account@team.example+1"));
}

TEST(ResolveSymlinksTest, FollowsLinksAndKeepsTheMissingTail) {
  testing_util::ScopedTempDir dir("tern_path_rules_test");
  const std::string root = fs::canonical(dir.path()).string();
  fs::create_directories(root + "/alice");
  fs::create_directories(root + "/bob/secret");
  fs::create_directory_symlink(root + "/bob", root + "/alice/link");

  EXPECT_EQ(*ResolveSymlinks(root + "/alice"), root + "/alice");
  EXPECT_EQ(*ResolveSymlinks(root + "/alice/link/secret"), root + "/bob/secret");
  // Missing components are kept as they are, after the resolved ancestor.
  EXPECT_EQ(*ResolveSymlinks(root + "/alice/link/new/ckpt"), root + "/bob/new/ckpt");
  EXPECT_EQ(*ResolveSymlinks(root + "/alice/new"), root + "/alice/new");

  // A dangling link could create its target: refused.
  fs::create_symlink(root + "/bob/not-yet", root + "/alice/dangling");
  const Status dangling = ResolveSymlinks(root + "/alice/dangling/x").status();
  EXPECT_EQ(dangling.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(dangling.message().find("symbolic link whose target does not exist"),
            std::string::npos);
}

}  // namespace
}  // namespace tern::paths
