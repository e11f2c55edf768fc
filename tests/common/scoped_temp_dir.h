// ScopedTempDir: a fresh directory (mkdtemp under the system temp dir) for
// one test, removed with everything in it when the object goes away.
// Test-only; header-only, no LibTorch (shared by the torch-free tests too).
#ifndef TERN_TESTS_COMMON_SCOPED_TEMP_DIR_H_
#define TERN_TESTS_COMMON_SCOPED_TEMP_DIR_H_

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

#include "common/check.h"

namespace tern::testing_util {

class ScopedTempDir {
 public:
  // `prefix` names the test in the directory name (e.g. "tern_data_test").
  explicit ScopedTempDir(const std::string& prefix) {
    std::string pattern = (std::filesystem::temp_directory_path() / (prefix + ".XXXXXX")).string();
    TERN_CHECK(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~ScopedTempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;

  std::string Path(const std::string& name) const {
    return (std::filesystem::path(path_) / name).string();
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace tern::testing_util

#endif  // TERN_TESTS_COMMON_SCOPED_TEMP_DIR_H_
