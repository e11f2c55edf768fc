// Bearer tokens: the other way, beside a client certificate, for a caller to
// prove who it is to ternd. A client sends "authorization: Bearer <token>"
// on every call over TLS; ternd keeps only the tokens' SHA-256 hashes, in a
// token file (auth/token_table.h), so a copy of that file lets no one in.
//
//   ternctl token new alice          # prints the token and its file line
//   ternd ... --tls-cert c --tls-key k --token-file tokens
//   ternctl --tls-ca ca.pem --token-file alice.token list
//
// Thread-safe.
#ifndef TERN_AUTH_BEARER_TOKEN_H_
#define TERN_AUTH_BEARER_TOKEN_H_

#include <grpcpp/security/credentials.h>

#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "common/status.h"

namespace tern::tls {

inline constexpr char kTokenPrefix[] = "tern_";

// A new token: "tern_" and 43 base64url characters (32 bytes from the
// system's CSPRNG). INTERNAL when the CSPRNG fails.
StatusOr<std::string> NewToken();

// "sha256:<64 lowercase hex digits>" of the token's bytes.
std::string TokenHash(std::string_view token);

// Whether `token` can be sent in a header: 16..512 characters, printable
// ASCII without spaces.
bool IsWellFormedToken(std::string_view token);

// The token in a token file: its content with surrounding whitespace
// removed. NOT_FOUND / PERMISSION_DENIED naming `flag` when unreadable,
// INVALID_ARGUMENT when it is not IsWellFormedToken.
StatusOr<std::string> ReadTokenFile(const std::string& flag, const std::string& path);

// Call credentials that add "authorization: Bearer <token>" to every call,
// the token read from `path` (checked now; re-read when the file changes, so
// a rotated token needs no restart). gRPC sends call credentials only over
// TLS channels.
StatusOr<std::shared_ptr<grpc::CallCredentials>> BearerTokenCredentials(const std::string& flag,
                                                                         const std::string& path);

// A token file followed as it changes: what a client sends (the call
// credentials above) and what a server checks a peer's token against (the
// /metrics endpoints' --metrics-token-file; Prometheus reads the same file
// through `authorization: {credentials_file: ...}`). Re-read when the file
// changes; a file that turns bad keeps the last good token (logged).
// Thread-safe.
class TokenFile {
 public:
  // The file's errors as ReadTokenFile words them.
  static StatusOr<std::shared_ptr<TokenFile>> Open(const std::string& flag,
                                                   const std::string& path);
  std::string Current();
  // Constant-time comparison with Current().
  bool Matches(std::string_view token);

 private:
  TokenFile(std::string flag, std::string path, std::string token);
  const std::string flag_, path_;
  std::mutex mu_;
  std::string token_;  // guarded by mu_
  std::string stamp_;  // guarded by mu_: FileChangeStamp of the file
};

}  // namespace tern::tls

#endif  // TERN_AUTH_BEARER_TOKEN_H_
