#include "cli/sha256.h"

#include <openssl/evp.h>

#include "common/check.h"

namespace tern::cli {

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
  ~Ctx() { EVP_MD_CTX_free(md); }
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  TERN_CHECK(ctx_->md != nullptr && EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) == 1)
      << "EVP_DigestInit_ex(sha256) failed";
}

Sha256::~Sha256() = default;

void Sha256::Update(std::string_view data) {
  TERN_CHECK(EVP_DigestUpdate(ctx_->md, data.data(), data.size()) == 1);
}

std::string Sha256::HexDigest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  TERN_CHECK(EVP_DigestFinal_ex(ctx_->md, digest, &size) == 1);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < size; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 0xf];
  }
  return hex;
}

std::string Sha256Hex(std::string_view data) {
  Sha256 h;
  h.Update(data);
  return h.HexDigest();
}

}  // namespace tern::cli
