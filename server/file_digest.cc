#include "server/file_digest.h"

#include <openssl/evp.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <system_error>
#include <vector>

namespace tern::server {
namespace {

struct MdCtxFree {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

std::string Hex(const unsigned char* data, unsigned int size) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (unsigned int i = 0; i < size; ++i) {
    out.push_back(kDigits[data[i] >> 4]);
    out.push_back(kDigits[data[i] & 0xf]);
  }
  return out;
}

// Feeds chunks from `next` (returns false at the end) into SHA-256.
template <typename Next>
StatusOr<std::string> Sha256Of(Next&& next) {
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (ctx == nullptr ||
      EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return InternalError("EVP_DigestInit_ex(sha256) failed");
  }
  const char* data = nullptr;
  size_t size = 0;
  for (;;) {
    TERN_ASSIGN_OR_RETURN(bool more, next(&data, &size));
    if (!more) break;
    if (EVP_DigestUpdate(ctx.get(), data, size) != 1) {
      return InternalError("EVP_DigestUpdate failed");
    }
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &digest_size) != 1) {
    return InternalError("EVP_DigestFinal_ex failed");
  }
  return Hex(digest, digest_size);
}

}  // namespace

std::string LowerHex(const std::string& bytes) {
  return Hex(reinterpret_cast<const unsigned char*>(bytes.data()),
             static_cast<unsigned int>(bytes.size()));
}

StatusOr<FileDigest> DigestFile(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return NotFoundError(path + ": no such file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return InternalError(path + ": cannot open: " + std::strerror(errno));
  }
  FileDigest digest;
  std::vector<char> buffer(1 << 20);
  TERN_ASSIGN_OR_RETURN(
      digest.sha256,
      Sha256Of([&](const char** data, size_t* size) -> StatusOr<bool> {
        in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
        const std::streamsize got = in.gcount();
        if (in.bad()) return InternalError(path + ": read error");
        if (got <= 0) return false;
        *data = buffer.data();
        *size = static_cast<size_t>(got);
        digest.size_bytes += got;
        return true;
      }));
  return digest;
}

std::string Sha256Hex(const std::string& bytes) {
  bool done = false;
  StatusOr<std::string> hex =
      Sha256Of([&](const char** data, size_t* size) -> StatusOr<bool> {
        if (done) return false;
        done = true;
        *data = bytes.data();
        *size = bytes.size();
        return true;
      });
  return hex.ok() ? *hex : std::string();
}

}  // namespace tern::server
