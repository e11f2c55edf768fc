#include "common/atomic_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "common/file_util.h"

namespace tern {
namespace {

namespace fs = std::filesystem;

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("tern-atomic-file-test-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  size_t Entries() const {
    return static_cast<size_t>(
        std::distance(fs::directory_iterator(dir_), fs::directory_iterator()));
  }
  fs::path dir_;
};

TEST_F(AtomicFileTest, AppearsWholeOnlyOnCommit) {
  const std::string path = (dir_ / "out.bin").string();
  AtomicFile file(path);
  ASSERT_TRUE(file.Open().ok());
  ASSERT_TRUE(file.Append("hello ").ok());
  ASSERT_TRUE(file.Append("world").ok());
  EXPECT_FALSE(fs::exists(path));
  ASSERT_TRUE(file.Commit().ok());
  EXPECT_EQ(*ReadFileToString(path), "hello world");
  EXPECT_EQ(Entries(), 1u);  // no temporary file left
}

TEST_F(AtomicFileTest, AnUncommittedFileLeavesNothing) {
  const std::string path = (dir_ / "out.bin").string();
  ASSERT_TRUE(WriteFileAtomically(path, "old").ok());
  {
    AtomicFile file(path);
    ASSERT_TRUE(file.Open().ok());
    ASSERT_TRUE(file.Append("new").ok());
  }
  EXPECT_EQ(*ReadFileToString(path), "old");
  EXPECT_EQ(Entries(), 1u);
}

TEST_F(AtomicFileTest, NoReplaceKeepsAnExistingFile) {
  const std::string path = (dir_ / "token").string();
  ASSERT_TRUE(WriteFileAtomically(path, "first").ok());
  AtomicFile file(path, 0600, AtomicFile::Replace::kNo);
  ASSERT_TRUE(file.Open().ok());
  ASSERT_TRUE(file.Append("second").ok());
  EXPECT_EQ(file.Commit().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(*ReadFileToString(path), "first");

  const std::string fresh = (dir_ / "fresh").string();
  AtomicFile created(fresh, 0600, AtomicFile::Replace::kNo);
  ASSERT_TRUE(created.Open().ok());
  ASSERT_TRUE(created.Append("secret").ok());
  ASSERT_TRUE(created.Commit().ok());
  EXPECT_EQ(*ReadFileToString(fresh), "secret");
  EXPECT_EQ(fs::status(fresh).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
}

TEST_F(AtomicFileTest, AMissingDirectoryIsNotFound) {
  AtomicFile file((dir_ / "no" / "such" / "dir").string());
  EXPECT_EQ(file.Open().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace tern
