// Sha256: incremental SHA-256 (OpenSSL's libcrypto), for checking downloaded
// artifacts against the digest ternd announces.
//
// Usage: Sha256 h; h.Update(chunk1); h.Update(chunk2); h.HexDigest();
// Not thread-safe; one object per stream.
#ifndef TERN_CLI_SHA256_H_
#define TERN_CLI_SHA256_H_

#include <memory>
#include <string>
#include <string_view>

namespace tern::cli {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::string_view data);
  // Lowercase hex digest of everything passed to Update. Call once.
  std::string HexDigest();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

// Lowercase hex SHA-256 of `data`.
std::string Sha256Hex(std::string_view data);

}  // namespace tern::cli

#endif  // TERN_CLI_SHA256_H_
