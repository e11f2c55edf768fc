// Helpers shared by the detection tests: a temp dir per test.
#ifndef TERN_TESTS_DETECTION_TEST_UTIL_H_
#define TERN_TESTS_DETECTION_TEST_UTIL_H_

#include <filesystem>
#include <fstream>
#include <string>

#include "common/check.h"
#include "tests/common/scoped_temp_dir.h"

namespace tern::detection {

// A fresh directory for one test, removed with everything in it afterwards.
class TempDir : public ::tern::testing_util::ScopedTempDir {
 public:
  TempDir() : ScopedTempDir("tern_detection_test") {}
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
