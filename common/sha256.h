// SHA-256 from OpenSSL's libcrypto, the one implementation in tern: artifact
// digests (ternd's JobResult.artifact_sha256 and GetArtifact header,
// ternctl's download check) and bearer-token hashes. Lowercase hex
// throughout.
//
// Usage: Sha256 h; h.Update(chunk1); h.Update(chunk2); h.HexDigest(); or
// Sha256Hex(bytes); or DigestFile(path) for a file's size and digest in one
// read. A libcrypto failure (it can only fail to allocate) is a broken
// invariant: TERN_CHECK aborts. A Sha256 object is not thread-safe (one per
// stream); the functions are.
#ifndef TERN_COMMON_SHA256_H_
#define TERN_COMMON_SHA256_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace tern {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::string_view data);
  // Lowercase hex digest (64 characters) of everything passed to Update.
  // Call once.
  std::string HexDigest();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

// Lowercase hex SHA-256 of `data`.
std::string Sha256Hex(std::string_view data);

// `bytes` as lowercase hex, two characters per byte.
std::string LowerHex(std::string_view bytes);

struct FileDigest {
  int64_t size_bytes = 0;
  std::string sha256;  // lowercase hex, 64 characters
};

// Reads `path` once in 1 MiB blocks (blocks on disk I/O). NOT_FOUND when it
// does not exist or is not a regular file; INTERNAL for a read error (the
// message names the path).
StatusOr<FileDigest> DigestFile(const std::string& path);

}  // namespace tern

#endif  // TERN_COMMON_SHA256_H_
