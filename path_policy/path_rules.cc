#include "path_policy/path_rules.h"

#include <sys/stat.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "common/utf8.h"

namespace tern::paths {
namespace {

constexpr size_t kMaxPathLength = 4096;
constexpr size_t kMaxComponentLength = 128;

std::vector<std::string> SplitComponents(const std::string& path) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (end > start) out.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

std::string JoinComponents(const std::vector<std::string>& components) {
  if (components.empty()) return "/";
  std::string out;
  for (const std::string& c : components) out += "/" + c;
  return out;
}

}  // namespace

StatusOr<std::string> NormalizeAbsolutePath(const std::string& field, const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return InvalidArgumentError(field + ": must be an absolute path, got " + Quoted(path));
  }
  if (path.size() > kMaxPathLength) {
    return InvalidArgumentError(field + ": longer than " + std::to_string(kMaxPathLength) +
                                " bytes");
  }
  for (const char c : path) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return InvalidArgumentError(field + ": contains a control character");
    }
  }
  std::vector<std::string> kept;
  for (std::string& c : SplitComponents(path)) {
    if (c == ".") continue;
    if (c == "..") {
      return InvalidArgumentError(field + ": must not contain \"..\", got " + Quoted(path));
    }
    kept.push_back(std::move(c));
  }
  return JoinComponents(kept);
}

StatusOr<std::string> JoinUnder(const std::string& field, const std::string& base,
                                const std::string& child) {
  if (!child.empty() && child[0] == '/') return NormalizeAbsolutePath(field, child);
  return NormalizeAbsolutePath(field, base + "/" + child);
}

bool IsUnder(const std::string& path, const std::string& root) {
  if (root == "/") return !path.empty() && path[0] == '/';
  if (path.compare(0, root.size(), root) != 0) return false;
  return path.size() == root.size() || path[root.size()] == '/';
}

bool IsSafePathComponent(const std::string& name) {
  if (name.empty() || name.size() > kMaxComponentLength || name == "." || name == "..") {
    return false;
  }
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '@' || c == '+' || c == '-';
    if (!ok) return false;
  }
  return true;
}

StatusOr<std::vector<std::string>> ParseRoots(const std::string& flag, const std::string& text) {
  std::vector<std::string> roots;
  if (text.empty()) return roots;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string entry = text.substr(start, end - start);
    const std::string field = flag + " entry " + std::to_string(roots.size() + 1);
    if (entry.empty()) return InvalidArgumentError(field + ": empty");
    TERN_ASSIGN_OR_RETURN(std::string root, NormalizeAbsolutePath(field, entry));
    for (const std::string& c : SplitComponents(root)) {
      if (c != kOwnerPlaceholder && c.find(kOwnerPlaceholder) != std::string::npos) {
        return InvalidArgumentError(field + ": " + kOwnerPlaceholder +
                                    " must be a whole path component, got " + Quoted(entry));
      }
    }
    roots.push_back(std::move(root));
    start = end + 1;
  }
  return roots;
}

std::vector<std::string> ExpandRoots(const std::vector<std::string>& roots,
                                     const std::string& owner) {
  std::vector<std::string> out;
  for (const std::string& root : roots) {
    std::vector<std::string> components = SplitComponents(root);
    bool uses_owner = false;
    for (std::string& c : components) {
      if (c == kOwnerPlaceholder) {
        c = owner;
        uses_owner = true;
      }
    }
    if (uses_owner && !IsSafePathComponent(owner)) continue;
    out.push_back(JoinComponents(components));
  }
  return out;
}

StatusOr<std::string> ResolveSymlinks(const std::string& path) {
  std::vector<std::string> components = SplitComponents(path);
  std::vector<std::string> missing;  // innermost last
  while (true) {
    const std::string prefix = JoinComponents(components);
    std::unique_ptr<char, decltype(&std::free)> resolved(realpath(prefix.c_str(), nullptr),
                                                         &std::free);
    if (resolved != nullptr) {
      std::string out = resolved.get();
      for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
        out += (out == "/" ? "" : "/") + *it;
      }
      return out;
    }
    const int error = errno;
    if (error != ENOENT && error != ENOTDIR) {
      const std::string why = prefix + ": " + std::strerror(error);
      if (error == EACCES || error == ELOOP) return Status(StatusCode::kPermissionDenied, why);
      return UnavailableError("cannot resolve " + why);
    }
    // A name that exists but does not resolve is a dangling symlink: whatever
    // it points at could be created through it, so it is not followed.
    struct stat st;
    if (lstat(prefix.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
      return Status(StatusCode::kPermissionDenied,
                    prefix + " is a symbolic link whose target does not exist");
    }
    if (components.empty()) return UnavailableError("cannot resolve /");
    missing.push_back(components.back());
    components.pop_back();
  }
}

}  // namespace tern::paths
