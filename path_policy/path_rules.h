// Path rules for tenant isolation (docs/SECURITY.md): lexical normal forms,
// containment in a root, the "{owner}" placeholder of ternd --read-roots /
// --write-roots, and symlink resolution for the agent's second check.
// Plain C++ (no proto), thread-safe.
#ifndef TERN_PATH_POLICY_PATH_RULES_H_
#define TERN_PATH_POLICY_PATH_RULES_H_

#include <string>
#include <vector>

#include "common/status.h"

namespace tern::paths {

inline constexpr char kOwnerPlaceholder[] = "{owner}";

// `path` in absolute normal form: it must start with '/'; repeated '/' and
// "." components collapse and a trailing '/' is dropped ("/a//./b/" ->
// "/a/b"). INVALID_ARGUMENT naming `field` for a relative path, a ".."
// component (where it leads depends on symlinks, so it is never accepted),
// control characters, or more than 4096 bytes.
StatusOr<std::string> NormalizeAbsolutePath(const std::string& field, const std::string& path);

// `child` when it is absolute, else "<base>/<child>"; normalized as above.
// `base` must be absolute.
StatusOr<std::string> JoinUnder(const std::string& field, const std::string& base,
                                const std::string& child);

// Whether normalized `path` is `root` or lies below it, compared by whole
// components: "/data/alice2" is not under "/data/alice"; "/" holds every path.
bool IsUnder(const std::string& path, const std::string& root);

// Whether `name` may replace "{owner}" in a root: 1..128 characters of
// [A-Za-z0-9._@+-], and not "." or "..". Other owners (e.g. "a/b") get no
// "{owner}" roots at all.
bool IsSafePathComponent(const std::string& name);

// A --read-roots / --write-roots value: comma-separated absolute paths; each
// may use "{owner}" as one whole component ("/scratch/{owner}/ckpt").
// INVALID_ARGUMENT naming `flag` for an empty entry, a relative path, "..",
// or "{owner}" inside a longer component. "" is no roots.
StatusOr<std::vector<std::string>> ParseRoots(const std::string& flag, const std::string& text);

// `roots` for one owner: "{owner}" replaced; roots that use it are left out
// when the owner is not IsSafePathComponent.
std::vector<std::string> ExpandRoots(const std::vector<std::string>& roots,
                                     const std::string& owner);

// Normalized absolute `path` with every symlink resolved: realpath(3) of its
// deepest existing ancestor, followed by the components that do not exist
// yet. PERMISSION_DENIED or UNAVAILABLE (naming the path) when a component
// cannot be examined.
StatusOr<std::string> ResolveSymlinks(const std::string& path);

}  // namespace tern::paths

#endif  // TERN_PATH_POLICY_PATH_RULES_H_
