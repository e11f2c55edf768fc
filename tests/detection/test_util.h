// Helpers shared by the detection tests: a temp dir per test.
#ifndef TERN_TESTS_DETECTION_TEST_UTIL_H_
#define TERN_TESTS_DETECTION_TEST_UTIL_H_

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/check.h"

namespace tern::detection {

// A fresh directory, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "tern_detection_test.XXXXXX")
            .string();
    TERN_CHECK(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string Path(const std::string& name) const {
    return (std::filesystem::path(path_) / name).string();
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Writes `text` to `path`, creating parent directories.
inline void WriteText(const std::string& path, const std::string& text) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(),
                                      ec);
  std::ofstream out(path, std::ios::binary);
  out << text;
  TERN_CHECK(out.good()) << path;
}

}  // namespace tern::detection

#endif  // TERN_TESTS_DETECTION_TEST_UTIL_H_
