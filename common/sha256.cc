#include "common/sha256.h"

#include <openssl/evp.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <vector>

#include "common/check.h"

namespace tern {

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
  ~Ctx() { EVP_MD_CTX_free(md); }
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  TERN_CHECK(ctx_->md != nullptr) << "EVP_MD_CTX_new failed";
  TERN_CHECK(EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) == 1)
      << "EVP_DigestInit_ex(sha256) failed";
}

Sha256::~Sha256() = default;

void Sha256::Update(std::string_view data) {
  TERN_CHECK(EVP_DigestUpdate(ctx_->md, data.data(), data.size()) == 1)
      << "EVP_DigestUpdate failed";
}

std::string Sha256::HexDigest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  TERN_CHECK(EVP_DigestFinal_ex(ctx_->md, digest, &size) == 1) << "EVP_DigestFinal_ex failed";
  return LowerHex(std::string_view(reinterpret_cast<const char*>(digest), size));
}

std::string Sha256Hex(std::string_view data) {
  Sha256 h;
  h.Update(data);
  return h.HexDigest();
}

std::string LowerHex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) {
    const auto byte = static_cast<unsigned char>(c);
    out.push_back(kDigits[byte >> 4]);
    out.push_back(kDigits[byte & 0xf]);
  }
  return out;
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
  Sha256 hash;
  std::vector<char> buffer(1 << 20);
  for (;;) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const std::streamsize got = in.gcount();
    if (in.bad()) return InternalError(path + ": read error");
    if (got <= 0) break;
    hash.Update(std::string_view(buffer.data(), static_cast<size_t>(got)));
    digest.size_bytes += got;
  }
  digest.sha256 = hash.HexDigest();
  return digest;
}

}  // namespace tern
