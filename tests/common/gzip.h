// Gzip(): bytes gzip-compressed in memory (zlib, one member), to make .gz
// inputs for tests and fuzz seeds. Test-only; header-only.
#ifndef TERN_TESTS_COMMON_GZIP_H_
#define TERN_TESTS_COMMON_GZIP_H_

#include <zlib.h>

#include <string>

#include "common/check.h"

namespace tern::testing_util {

inline std::string Gzip(const std::string& plain, int level = Z_BEST_COMPRESSION) {
  z_stream zs{};
  TERN_CHECK(deflateInit2(&zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  std::string out(deflateBound(&zs, plain.size()) + 32, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(plain.data()));
  zs.avail_in = static_cast<uInt>(plain.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  TERN_CHECK(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

}  // namespace tern::testing_util

#endif  // TERN_TESTS_COMMON_GZIP_H_
