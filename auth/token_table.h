// TokenTable: ternd's bearer tokens (--token-file), by SHA-256 hash.
//
// File format, one token per line ("#" starts a comment, blank lines are
// skipped):
//   sha256:<64 hex digits> <name> [admin] [agent] [expires=<RFC 3339 time>]
// `name` is the caller's identity (as a client certificate's common name
// is: it owns the jobs it submits), 1..128 printable characters without
// spaces; `admin` may read, list and cancel every owner's jobs; `agent` may
// call WorkerService, registering as agent_id = name; past `expires`
// (e.g. expires=2027-01-31T00:00:00Z) the token is refused as expired.
// `ternctl token new NAME [--expires 90d]` prints a new token and its line. Only hashes are stored, so the file
// grants nothing to whoever reads it.
//
// The file must not be writable by its group or others (PERMISSION_DENIED:
// whoever writes it can add a token). It is read at start-up (every error
// names the line) and again when
// it changes (checked at most once a second, on use): a bad new version is
// logged and the last good table kept, so a token is revoked by deleting its
// line. Thread-safe.
#ifndef TERN_AUTH_TOKEN_TABLE_H_
#define TERN_AUTH_TOKEN_TABLE_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace tern::server {

struct TokenEntry {
  std::string name;
  bool admin = false;
  bool agent = false;
  int64_t expires_unix_s = 0;  // 0: never
};

class TokenTable {
 public:
  // INVALID_ARGUMENT "<path>:<line>: ..." for a bad line or a hash listed
  // twice; the file's read error otherwise.
  static StatusOr<std::unique_ptr<TokenTable>> Load(const std::string& path);
  // The entries of `text` by hash ("sha256:..."); `path` words the errors.
  static StatusOr<std::map<std::string, TokenEntry>> Parse(std::string_view text,
                                                           const std::string& path);

  // The entry of `token` (hashed here), nullopt when none.
  std::optional<TokenEntry> Find(std::string_view token);
  size_t size() const;

 private:
  TokenTable(std::string path, std::map<std::string, TokenEntry> entries);
  void ReloadIfChangedLocked();

  const std::string path_;
  mutable std::mutex mu_;
  std::map<std::string, TokenEntry> entries_;  // guarded by mu_
  std::string stamp_;                          // guarded by mu_: mtime, size, inode
  std::chrono::steady_clock::time_point next_check_;  // guarded by mu_
};

}  // namespace tern::server

#endif  // TERN_AUTH_TOKEN_TABLE_H_
