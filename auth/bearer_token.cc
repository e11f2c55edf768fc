#include "auth/bearer_token.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <cstdint>
#include <mutex>
#include <utility>

#include "common/file_util.h"
#include "common/logging.h"
#include "common/sha256.h"

namespace tern::tls {
namespace {

constexpr size_t kTokenBytes = 32;
constexpr size_t kMinTokenLength = 16;
constexpr size_t kMaxTokenLength = 512;

std::string Base64Url(const unsigned char* data, size_t size) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t bits = 0;
  int count = 0;
  for (size_t i = 0; i < size; ++i) {
    bits = (bits << 8) | data[i];
    count += 8;
    while (count >= 6) {
      count -= 6;
      out += kAlphabet[(bits >> count) & 0x3f];
    }
  }
  if (count > 0) out += kAlphabet[(bits << (6 - count)) & 0x3f];
  return out;  // no padding
}

std::string Trim(const std::string& text) {
  const char* const space = " \t\r\n";
  const size_t begin = text.find_first_not_of(space);
  if (begin == std::string::npos) return "";
  return text.substr(begin, text.find_last_not_of(space) - begin + 1);
}

// Sends the current token of a TokenFile.
class TokenFilePlugin final : public grpc::MetadataCredentialsPlugin {
 public:
  explicit TokenFilePlugin(std::shared_ptr<TokenFile> file) : file_(std::move(file)) {}

  grpc::Status GetMetadata(grpc::string_ref /*service_url*/, grpc::string_ref /*method_name*/,
                           const grpc::AuthContext& /*channel_auth_context*/,
                           std::multimap<grpc::string, grpc::string>* metadata) override {
    metadata->insert({"authorization", "Bearer " + file_->Current()});
    return grpc::Status::OK;
  }

  // A stat (and, after a rotation, a read) of a small local file: quick
  // enough to run on the calling thread, with no thread pool of its own.
  bool IsBlocking() const override { return false; }

  grpc::string DebugString() override { return "tern bearer token"; }

 private:
  const std::shared_ptr<TokenFile> file_;
};

}  // namespace

StatusOr<std::string> NewToken() {
  unsigned char bytes[kTokenBytes];
  if (RAND_bytes(bytes, sizeof bytes) != 1) {
    return InternalError("the system's random number generator failed");
  }
  return std::string(kTokenPrefix) + Base64Url(bytes, sizeof bytes);
}

std::string TokenHash(std::string_view token) { return "sha256:" + Sha256Hex(token); }

bool IsWellFormedToken(std::string_view token) {
  if (token.size() < kMinTokenLength || token.size() > kMaxTokenLength) return false;
  for (const char c : token) {
    if (c <= 0x20 || c >= 0x7f) return false;
  }
  return true;
}

StatusOr<std::string> ReadTokenFile(const std::string& flag, const std::string& path) {
  StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return text.status().WithContext(flag);
  std::string token = Trim(*text);
  if (!IsWellFormedToken(token)) {
    return InvalidArgumentError(flag + ": " + path +
                                " must hold one token of 16..512 printable characters "
                                "without spaces");
  }
  return token;
}

StatusOr<std::shared_ptr<grpc::CallCredentials>> BearerTokenCredentials(const std::string& flag,
                                                                        const std::string& path) {
  TERN_ASSIGN_OR_RETURN(std::shared_ptr<TokenFile> file, TokenFile::Open(flag, path));
  return grpc::MetadataCredentialsFromPlugin(std::make_unique<TokenFilePlugin>(std::move(file)));
}

StatusOr<std::shared_ptr<TokenFile>> TokenFile::Open(const std::string& flag,
                                                     const std::string& path) {
  TERN_ASSIGN_OR_RETURN(std::string token, ReadTokenFile(flag, path));
  return std::shared_ptr<TokenFile>(new TokenFile(flag, path, std::move(token)));
}

TokenFile::TokenFile(std::string flag, std::string path, std::string token)
    : flag_(std::move(flag)),
      path_(std::move(path)),
      token_(std::move(token)),
      stamp_(FileChangeStamp(path_)) {}

std::string TokenFile::Current() {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string now = FileChangeStamp(path_);
  if (now != stamp_) {
    stamp_ = now;
    StatusOr<std::string> reread = ReadTokenFile(flag_, path_);
    if (reread.ok()) {
      token_ = *std::move(reread);
    } else {
      TERN_LOG(ERROR) << "keeping the previous token: " << reread.status();
    }
  }
  return token_;
}

bool TokenFile::Matches(std::string_view token) {
  const std::string current = Current();
  return token.size() == current.size() &&
         CRYPTO_memcmp(token.data(), current.data(), current.size()) == 0;
}

}  // namespace tern::tls
