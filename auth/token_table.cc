#include "auth/token_table.h"

#include <google/protobuf/timestamp.pb.h>
#include <google/protobuf/util/time_util.h>
#include <sys/stat.h>

#include <utility>
#include <vector>

#include "auth/bearer_token.h"
#include "common/config_text.h"
#include "common/file_util.h"
#include "common/logging.h"

namespace tern::server {
namespace {

constexpr auto kCheckInterval = std::chrono::seconds(1);

bool IsHash(const std::string& word) {
  const std::string prefix = "sha256:";
  if (word.size() != prefix.size() + 64 || word.compare(0, prefix.size(), prefix) != 0) {
    return false;
  }
  for (size_t i = prefix.size(); i < word.size(); ++i) {
    const char c = word[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// The file's text, refused when others than its owner may write it.
StatusOr<std::string> ReadTokenTableFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return Status(StatusCode::kPermissionDenied,
                  path + " is writable by its group or others (chmod go-w " + path +
                      "): whoever can write it can add a token");
  }
  return ReadFileToString(path);
}

}  // namespace

StatusOr<std::map<std::string, TokenEntry>> TokenTable::Parse(std::string_view text,
                                                              const std::string& path) {
  std::map<std::string, TokenEntry> entries;
  for (const ConfigLine& line : SplitConfigLines(text)) {
    const std::vector<std::string>& words = line.words;
    const std::string where = path + ":" + std::to_string(line.number) + ": ";
    if (!IsHash(words[0])) {
      return InvalidArgumentError(where + "must start with sha256:<64 lowercase hex digits> "
                                  "(the hash `ternctl token new` prints, not the token)");
    }
    if (words.size() < 2 || !IsIdentityName(words[1])) {
      return InvalidArgumentError(where + "needs a name after the hash: 1..128 printable "
                                  "characters without spaces");
    }
    TokenEntry entry{words[1], false, false, 0};
    const std::string expires = "expires=";
    for (size_t i = 2; i < words.size(); ++i) {
      if (words[i] == "admin") {
        entry.admin = true;
      } else if (words[i] == "agent") {
        entry.agent = true;
      } else if (words[i].compare(0, expires.size(), expires) == 0) {
        google::protobuf::Timestamp when;
        if (!google::protobuf::util::TimeUtil::FromString(words[i].substr(expires.size()),
                                                          &when) ||
            when.seconds() <= 0) {
          return InvalidArgumentError(where + "\"" + words[i] +
                                      "\": expected expires=<RFC 3339 time>, e.g. "
                                      "expires=2027-01-31T00:00:00Z");
        }
        entry.expires_unix_s = when.seconds();
      } else {
        return InvalidArgumentError(where + "unknown word \"" + words[i] +
                                    "\" (roles: admin, agent; expires=<time>)");
      }
    }
    if (!entries.emplace(words[0], std::move(entry)).second) {
      return InvalidArgumentError(where + "this hash is listed twice");
    }
  }
  return entries;
}

StatusOr<std::unique_ptr<TokenTable>> TokenTable::Load(const std::string& path) {
  const std::string stamp = FileChangeStamp(path);
  TERN_ASSIGN_OR_RETURN(const std::string text, ReadTokenTableFile(path));
  TERN_ASSIGN_OR_RETURN(auto entries, Parse(text, path));
  std::unique_ptr<TokenTable> table(new TokenTable(path, std::move(entries)));
  table->stamp_ = stamp;
  return table;
}

TokenTable::TokenTable(std::string path, std::map<std::string, TokenEntry> entries)
    : path_(std::move(path)),
      entries_(std::move(entries)),
      next_check_(std::chrono::steady_clock::now() + kCheckInterval) {}

void TokenTable::ReloadIfChangedLocked() {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_check_) return;
  next_check_ = now + kCheckInterval;
  const std::string stamp = FileChangeStamp(path_);
  if (stamp == stamp_) return;
  stamp_ = stamp;
  StatusOr<std::string> text = ReadTokenTableFile(path_);
  StatusOr<std::map<std::string, TokenEntry>> entries =
      text.ok() ? Parse(*text, path_) : StatusOr<std::map<std::string, TokenEntry>>(text.status());
  if (!entries.ok()) {
    TERN_LOG(ERROR) << "token file changed but cannot be used, keeping the previous "
                    << entries_.size() << " tokens: " << entries.status();
    return;
  }
  entries_ = *std::move(entries);
  TERN_LOG(INFO) << "token file " << path_ << " re-read: " << entries_.size() << " tokens";
}

std::optional<TokenEntry> TokenTable::Find(std::string_view token) {
  const std::string hash = tls::TokenHash(token);
  std::lock_guard<std::mutex> lock(mu_);
  ReloadIfChangedLocked();
  auto it = entries_.find(hash);
  if (it == entries_.end()) return std::nullopt;
  return it->second;
}

size_t TokenTable::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

}  // namespace tern::server
