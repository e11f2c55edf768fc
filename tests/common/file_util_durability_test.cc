// WriteFileAtomically's durability (common/file_util.h): the new content is
// fsynced before the rename makes it visible, and the directory after it, so
// that a power loss leaves the old file or the whole new one. A kill -9
// cannot show a missing fsync (the page cache survives it): this test binary
// defines fsync, fdatasync and rename itself, which takes precedence over
// libc's for every call in the process (tern_common included), records each
// call with the path of its descriptor, and forwards it to libc.
#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "common/file_util.h"

namespace {

struct Call {
  std::string what;  // "fsync", "fdatasync", "rename"
  std::string path;  // the descriptor's file (fsync) or the source (rename)
  std::string to;    // rename's target
  bool directory = false;
};

std::mutex calls_mu;
std::vector<Call>* calls = nullptr;  // recording when set

std::string PathOf(int fd) {
  char buffer[4096];
  const ssize_t n =
      ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buffer, sizeof(buffer) - 1);
  return n > 0 ? std::string(buffer, static_cast<size_t>(n)) : "?";
}

void RecordSync(const char* what, int fd) {
  std::lock_guard<std::mutex> lock(calls_mu);
  if (calls == nullptr) return;
  struct stat st {};
  const bool directory = ::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
  calls->push_back({what, PathOf(fd), "", directory});
}

template <typename F>
F Real(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" int fsync(int fd) {
  RecordSync("fsync", fd);
  static const auto real = Real<int (*)(int)>("fsync");
  return real(fd);
}

extern "C" int fdatasync(int fd) {
  RecordSync("fdatasync", fd);
  static const auto real = Real<int (*)(int)>("fdatasync");
  return real(fd);
}

extern "C" int rename(const char* from, const char* to) noexcept {
  {
    std::lock_guard<std::mutex> lock(calls_mu);
    if (calls != nullptr) {
      calls->push_back({"rename", std::filesystem::absolute(from).string(),
                        std::filesystem::absolute(to).string(), false});
    }
  }
  static const auto real = Real<int (*)(const char*, const char*)>("rename");
  return real(from, to);
}

namespace tern {
namespace {

namespace fs = std::filesystem;

// Records the calls made while `body` runs.
std::vector<Call> Record(const std::function<void()>& body) {
  std::vector<Call> recorded;
  {
    std::lock_guard<std::mutex> lock(calls_mu);
    calls = &recorded;
  }
  body();
  std::lock_guard<std::mutex> lock(calls_mu);
  calls = nullptr;
  return recorded;
}

std::string Describe(const std::vector<Call>& recorded) {
  std::string out;
  for (const Call& c : recorded) {
    out += "\n  " + c.what + " " + c.path + (c.to.empty() ? "" : " -> " + c.to) +
           (c.directory ? " (directory)" : "");
  }
  return out;
}

class WriteFileAtomicallyDurabilityTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::canonical(testing::TempDir()) /
           ("file_util_durability_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Expects exactly: a sync of the temporary file, its rename onto `path`,
  // then a sync of `path`'s directory.
  void ExpectDurableWrite(const fs::path& path, const std::string& content) {
    const std::vector<Call> recorded =
        Record([&] { ASSERT_TRUE(WriteFileAtomically(path.string(), content).ok()); });
    ASSERT_EQ(recorded.size(), 3u) << Describe(recorded);
    // 1. The data reaches the disk under the temporary name...
    EXPECT_TRUE(recorded[0].what == "fsync" || recorded[0].what == "fdatasync")
        << Describe(recorded);
    EXPECT_FALSE(recorded[0].directory) << Describe(recorded);
    // 2. ... before the rename makes it the file's content ...
    EXPECT_EQ(recorded[1].what, "rename") << Describe(recorded);
    EXPECT_EQ(recorded[1].path, recorded[0].path) << "the synced file is the renamed one"
                                                  << Describe(recorded);
    EXPECT_EQ(recorded[1].to, path.string()) << Describe(recorded);
    // 3. ... and the directory entry after it. (fdatasync would not do for
    // a directory's entries on every file system: fsync.)
    EXPECT_EQ(recorded[2].what, "fsync") << Describe(recorded);
    EXPECT_TRUE(recorded[2].directory) << Describe(recorded);
    EXPECT_EQ(recorded[2].path, path.parent_path().string()) << Describe(recorded);
    EXPECT_EQ(*ReadFileToString(path.string()), content);
  }

  fs::path dir_;
};

TEST_F(WriteFileAtomicallyDurabilityTest, SyncsTheDataBeforeTheRenameAndTheDirectoryAfter) {
  ExpectDurableWrite(dir_ / "new.txt", "first");
}

TEST_F(WriteFileAtomicallyDurabilityTest, AnOverwriteIsSyncedTheSameWay) {
  ASSERT_TRUE(WriteFileAtomically((dir_ / "f").string(), "old").ok());
  ExpectDurableWrite(dir_ / "f", std::string(1 << 20, 'x'));  // more than one write() may take
}

TEST_F(WriteFileAtomicallyDurabilityTest, AFileInANestedDirectorySyncsThatDirectory) {
  ASSERT_TRUE(MakeDirectories((dir_ / "a" / "b").string()).ok());
  ExpectDurableWrite(dir_ / "a" / "b" / "c.bin", std::string("\0\1\2", 3));
}

// A relative path syncs the working directory (its parent is "").
TEST_F(WriteFileAtomicallyDurabilityTest, ARelativePathSyncsTheWorkingDirectory) {
  const fs::path before = fs::current_path();
  fs::current_path(dir_);
  const std::vector<Call> recorded =
      Record([] { ASSERT_TRUE(WriteFileAtomically("relative.txt", "r").ok()); });
  fs::current_path(before);
  ASSERT_EQ(recorded.size(), 3u) << Describe(recorded);
  EXPECT_EQ(recorded[1].to, (dir_ / "relative.txt").string());
  EXPECT_TRUE(recorded[2].directory);
  EXPECT_EQ(recorded[2].path, dir_.string());
}

// The recording itself sees calls (so the counts above are not vacuous).
TEST(FsyncRecorderTest, SeesDirectCalls) {
  const std::string path = testing::TempDir() + "/fsync_recorder_" + std::to_string(::getpid());
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  const std::vector<Call> recorded = Record([&] {
    ::fsync(fd);
    ::fdatasync(fd);
  });
  ::close(fd);
  ::unlink(path.c_str());
  ASSERT_EQ(recorded.size(), 2u);
  EXPECT_EQ(recorded[0].what, "fsync");
  EXPECT_EQ(recorded[1].what, "fdatasync");
}

}  // namespace
}  // namespace tern
