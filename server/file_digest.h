// Size and SHA-256 of a file, for artifacts (JobResult.artifact_sha256 and
// GetArtifact's header). Reads the file once in 1 MiB blocks. Thread-safe.
#ifndef TERN_SERVER_FILE_DIGEST_H_
#define TERN_SERVER_FILE_DIGEST_H_

#include <cstdint>
#include <string>

#include "common/status.h"

namespace tern::server {

struct FileDigest {
  int64_t size_bytes = 0;
  std::string sha256;  // lowercase hex, 64 characters
};

// Blocks on disk I/O. NOT_FOUND when `path` does not exist or is not a
// regular file; INTERNAL for read or hashing errors (message names the path).
StatusOr<FileDigest> DigestFile(const std::string& path);

// SHA-256 of `bytes` as lowercase hex (tests, small inputs).
std::string Sha256Hex(const std::string& bytes);

// `bytes` as lowercase hex, two characters per byte.
std::string LowerHex(const std::string& bytes);

}  // namespace tern::server

#endif  // TERN_SERVER_FILE_DIGEST_H_
