#include "server/rendezvous_key.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "common/file_util.h"
#include "common/logging.h"
#include "common/sha256.h"

namespace tern::server {
namespace {

constexpr size_t kSecretBytes = 32;
constexpr size_t kKeyHexChars = 32;  // 128 bits

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

StatusOr<RendezvousKeys> RendezvousKeys::LoadOrCreate(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) {
      return InternalError("cannot stat " + path + ": " + std::strerror(errno));
    }
    unsigned char bytes[kSecretBytes];
    if (RAND_bytes(bytes, sizeof bytes) != 1) {
      return InternalError("the system's random number generator failed");
    }
    const std::string secret(reinterpret_cast<const char*>(bytes), sizeof bytes);
    TERN_RETURN_IF_ERROR(WriteFileAtomically(path, LowerHex(secret) + "\n", 0600));
    TERN_LOG(INFO) << "ternd: created the rendezvous secret " << path;
    return RendezvousKeys(secret);
  }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return Status(StatusCode::kPermissionDenied,
                  path + " is readable or writable by its group or others (chmod 600 " + path +
                      "): whoever reads it can join any job's rendezvous");
  }
  TERN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  if (!text.empty() && text.back() == '\n') text.pop_back();
  if (text.size() != 2 * kSecretBytes) {
    return DataLossError(path + ": expected " + std::to_string(2 * kSecretBytes) +
                         " lowercase hex characters (delete it to have ternd make a new one)");
  }
  std::string secret(kSecretBytes, '\0');
  for (size_t i = 0; i < kSecretBytes; ++i) {
    const int high = HexValue(text[2 * i]);
    const int low = HexValue(text[2 * i + 1]);
    if (high < 0 || low < 0) {
      return DataLossError(path + ": expected " + std::to_string(2 * kSecretBytes) +
                           " lowercase hex characters (delete it to have ternd make a new one)");
    }
    secret[i] = static_cast<char>(high * 16 + low);
  }
  return RendezvousKeys(std::move(secret));
}

std::string RendezvousKeys::ForAttempt(int64_t job_id, int attempt, int64_t submit_micros) const {
  const std::string message =
      std::to_string(job_id) + "/" + std::to_string(attempt) + "/" + std::to_string(submit_micros);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  HMAC(EVP_sha256(), secret_.data(), static_cast<int>(secret_.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &size);
  return LowerHex(std::string(reinterpret_cast<const char*>(mac), size)).substr(0, kKeyHexChars);
}

}  // namespace tern::server
