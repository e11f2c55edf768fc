#include "server/path_access.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "path_policy/path_rules.h"
#include "path_policy/spec_paths.h"

namespace tern::server {
namespace {

Status PermissionDenied(std::string message) {
  return Status(StatusCode::kPermissionDenied, std::move(message));
}

// A path inside one of ternd's roots.
struct ManagedPath {
  const char* root_name;  // "artifact" or "checkpoint"
  std::string dir_name;   // the job directory (or artifact) name, no ".tern"
};

std::string NormalRoot(const std::string& root) {
  StatusOr<std::string> normal = paths::NormalizeAbsolutePath("root", root);
  return normal.ok() ? *normal : root;
}

std::optional<ManagedPath> InManagedRoot(const std::string& path, const JobLayout& layout) {
  const std::pair<const char*, std::string> roots[] = {
      {"checkpoint", NormalRoot(layout.checkpoint_root)},
      {"artifact", NormalRoot(layout.artifact_root)}};
  for (const auto& [name, root] : roots) {
    if (root.empty() || !paths::IsUnder(path, root)) continue;
    ManagedPath managed{name, ""};
    if (path.size() > root.size()) {
      const size_t start = root == "/" ? 1 : root.size() + 1;
      const size_t end = path.find('/', start);
      managed.dir_name = path.substr(start, end == std::string::npos ? end : end - start);
      const std::string suffix = ".tern";
      if (managed.dir_name.size() > suffix.size() &&
          managed.dir_name.compare(managed.dir_name.size() - suffix.size(), suffix.size(),
                                   suffix) == 0) {
        managed.dir_name.resize(managed.dir_name.size() - suffix.size());
      }
    }
    return managed;
  }
  return std::nullopt;
}

// The policy's roots with "{owner}" replaced.
v1::PathGrant OwnersRoots(const PathPolicy& policy, const std::string& owner) {
  v1::PathGrant grant;
  for (std::string& r : paths::ExpandRoots(policy.read_roots, owner)) {
    grant.add_read_roots(std::move(r));
  }
  for (std::string& r : paths::ExpandRoots(policy.write_roots, owner)) {
    grant.add_write_roots(std::move(r));
  }
  return grant;
}

void AddOnce(google::protobuf::RepeatedPtrField<std::string>* roots, const std::string& root) {
  if (std::find(roots->begin(), roots->end(), root) == roots->end()) *roots->Add() = root;
}

}  // namespace

std::optional<scheduler::JobId> JobIdOfDirName(const std::string& name) {
  const std::string prefix = "job-";
  if (name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  size_t i = prefix.size();
  scheduler::JobId id = 0;
  const size_t digits_start = i;
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) {
    if (i - digits_start >= 18) return std::nullopt;  // stays inside int64
    id = id * 10 + (name[i] - '0');
    ++i;
  }
  if (i == digits_start || i >= name.size() || name[i] != '-' || i + 1 == name.size()) {
    return std::nullopt;
  }
  for (size_t j = i + 1; j < name.size(); ++j) {
    if (!std::isdigit(static_cast<unsigned char>(name[j]))) return std::nullopt;
  }
  return id;
}

Status CheckSpecPaths(const v1::JobSpec& spec, const PathPolicy& policy, const JobLayout& layout,
                      const JobDirOwner& owner_of) {
  TERN_ASSIGN_OR_RETURN(std::vector<paths::NamedPath> named, paths::PathsNamedBy(spec));
  std::vector<paths::NamedPath> outside_managed;
  for (paths::NamedPath& p : named) {
    const std::optional<ManagedPath> managed = InManagedRoot(p.path, layout);
    if (!managed) {
      outside_managed.push_back(std::move(p));
      continue;
    }
    const std::string where = "spec." + p.field + ": " + p.path + " is in ternd's " +
                              managed->root_name + " root";
    if (managed->dir_name.empty()) return PermissionDenied(where + " itself");
    if (p.access == paths::Access::kWrite && std::string(managed->root_name) == "artifact") {
      return PermissionDenied(where + ", which only ternd writes");
    }
    const std::optional<std::string> owner = owner_of(managed->dir_name);
    if (!owner) return PermissionDenied(where + " and belongs to no job");
    if (*owner != spec.owner()) {
      return PermissionDenied(where + " and belongs to a job of another owner");
    }
  }
  if (!policy.Restricts()) return OkStatus();
  return paths::CheckLexicalPaths(outside_managed, OwnersRoots(policy, spec.owner()));
}

std::optional<v1::PathGrant> PathGrantFor(const v1::JobSpec& spec,
                                          const std::string& checkpoint_dir,
                                          const PathPolicy& policy, const JobLayout& layout) {
  if (!policy.Restricts()) return std::nullopt;
  v1::PathGrant grant = OwnersRoots(policy, spec.owner());
  // Admitted at submission (ownership of a job never changes).
  StatusOr<std::vector<paths::NamedPath>> named = paths::PathsNamedBy(spec);
  if (named.ok()) {
    for (const paths::NamedPath& p : *named) {
      if (!InManagedRoot(p.path, layout)) continue;
      AddOnce(p.access == paths::Access::kWrite ? grant.mutable_write_roots()
                                                : grant.mutable_read_roots(),
              p.path);
    }
  }
  StatusOr<std::string> own = paths::NormalizeAbsolutePath("checkpoint_dir", checkpoint_dir);
  if (own.ok() && InManagedRoot(*own, layout)) AddOnce(grant.mutable_write_roots(), *own);
  return grant;
}

}  // namespace tern::server
