#include "path_policy/spec_paths.h"

#include <utility>

#include "path_policy/path_rules.h"

namespace tern::paths {
namespace {

Status PermissionDenied(std::string message) {
  return Status(StatusCode::kPermissionDenied, std::move(message));
}

std::string RootList(const google::protobuf::RepeatedPtrField<std::string>& a,
                     const google::protobuf::RepeatedPtrField<std::string>* b) {
  std::string out;
  auto add = [&out](const google::protobuf::RepeatedPtrField<std::string>& roots) {
    for (const std::string& r : roots) out += (out.empty() ? "" : ", ") + r;
  };
  add(a);
  if (b != nullptr) add(*b);
  return out.empty() ? "none" : out;
}

// `resolve` maps a path (or root) to the form compared.
template <typename Resolve>
Status CheckPaths(const std::vector<NamedPath>& paths, const v1::PathGrant& grant,
                  const std::string& prefix, Resolve resolve) {
  std::vector<std::string> read_roots, write_roots;
  for (const std::string& r : grant.read_roots()) {
    TERN_ASSIGN_OR_RETURN(std::string resolved, resolve(r));
    read_roots.push_back(std::move(resolved));
  }
  for (const std::string& r : grant.write_roots()) {
    TERN_ASSIGN_OR_RETURN(std::string resolved, resolve(r));
    write_roots.push_back(std::move(resolved));
  }
  for (const NamedPath& p : paths) {
    StatusOr<std::string> resolved = resolve(p.path);
    if (!resolved.ok()) return resolved.status().WithContext(prefix + p.field);
    const bool write = p.access == Access::kWrite;
    bool allowed = false;
    for (const std::string& root : write_roots) allowed = allowed || IsUnder(*resolved, root);
    if (!write) {
      for (const std::string& root : read_roots) allowed = allowed || IsUnder(*resolved, root);
    }
    if (allowed) continue;
    std::string where = p.path;
    if (*resolved != p.path) where += " (which resolves to " + *resolved + ")";
    return PermissionDenied(
        prefix + p.field + ": " + where + " is outside the directories this job may " +
        (write ? "write" : "read") + " (" +
        (write ? RootList(grant.write_roots(), nullptr)
               : RootList(grant.read_roots(), &grant.write_roots())) +
        ")");
  }
  return OkStatus();
}

}  // namespace

StatusOr<std::vector<NamedPath>> PathsNamedBy(const v1::JobSpec& spec, const std::string& prefix) {
  std::vector<NamedPath> out;
  const v1::DatasetSpec& d = spec.dataset();
  if (d.kind() != v1::DATASET_SYNTHETIC) {
    const std::string& given = d.path();
    const bool idx = d.kind() == v1::DATASET_UNSPECIFIED || d.kind() == v1::DATASET_IDX;
    TERN_ASSIGN_OR_RETURN(
        std::string base,
        NormalizeAbsolutePath(prefix + "dataset.path",
                              given.empty() && idx ? std::string(kDefaultIdxPath) : given));
    out.push_back({"dataset.path", base, Access::kRead});
    if (d.kind() == v1::DATASET_COCO) {
      const std::pair<const char*, std::pair<const std::string*, const char*>> coco[] = {
          {"dataset.train_annotations", {&d.train_annotations(), kDefaultTrainAnnotations}},
          {"dataset.val_annotations", {&d.val_annotations(), kDefaultValAnnotations}},
          {"dataset.train_images", {&d.train_images(), kDefaultTrainImages}},
          {"dataset.val_images", {&d.val_images(), kDefaultValImages}}};
      for (const auto& [field, value] : coco) {
        const std::string& child = value.first->empty() ? value.second : *value.first;
        TERN_ASSIGN_OR_RETURN(std::string path, JoinUnder(prefix + field, base, child));
        out.push_back({field, std::move(path), Access::kRead});
      }
    }
  }
  if (!spec.model().init_from().empty()) {
    TERN_ASSIGN_OR_RETURN(
        std::string path, NormalizeAbsolutePath(prefix + "model.init_from", spec.model().init_from()));
    out.push_back({"model.init_from", std::move(path), Access::kRead});
  }
  if (!spec.checkpoint().directory().empty()) {
    TERN_ASSIGN_OR_RETURN(std::string path,
                          NormalizeAbsolutePath(prefix + "checkpoint.directory",
                                                spec.checkpoint().directory()));
    out.push_back({"checkpoint.directory", std::move(path), Access::kWrite});
  }
  return out;
}

Status CheckLexicalPaths(const std::vector<NamedPath>& paths, const v1::PathGrant& grant,
                         const std::string& prefix) {
  return CheckPaths(paths, grant, prefix, [](const std::string& path) -> StatusOr<std::string> {
    return NormalizeAbsolutePath("root", path);
  });
}

Status CheckResolvedPaths(const std::vector<NamedPath>& paths, const v1::PathGrant& grant,
                          const std::string& prefix) {
  return CheckPaths(paths, grant, prefix, [](const std::string& path) -> StatusOr<std::string> {
    TERN_ASSIGN_OR_RETURN(std::string normal, NormalizeAbsolutePath("path", path));
    return ResolveSymlinks(normal);
  });
}

}  // namespace tern::paths
