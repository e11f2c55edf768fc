// The file-system paths a tern.v1.JobSpec makes a trainer read or write, and
// the check of those paths against a tern.v1.PathGrant. ternd checks them
// lexically at submission (server/path_access.h); tern-agent checks them
// again with symlinks resolved before it starts a trainer. Pure functions
// except CheckResolvedPaths (it reads the file system); thread-safe.
#ifndef TERN_PATH_POLICY_SPEC_PATHS_H_
#define TERN_PATH_POLICY_SPEC_PATHS_H_

#include <string>
#include <vector>

#include "common/status.h"
#include "spec/rules.h"
#include "tern/v1/job.pb.h"
#include "tern/v1/worker_service.pb.h"

namespace tern::paths {

// The defaults of fields a spec leaves empty (spec/rules.h, which the
// trainer applies too).
using spec::kDefaultIdxPath;
using spec::kDefaultTrainAnnotations;
using spec::kDefaultTrainImages;
using spec::kDefaultValAnnotations;
using spec::kDefaultValImages;

enum class Access { kRead, kWrite };

struct NamedPath {
  std::string field;  // e.g. "dataset.path"
  std::string path;   // absolute, normalized
  Access access = Access::kRead;
};

// In field order: dataset.path (every kind but SYNTHETIC; IDX's default when
// empty); for COCO the four annotation and image paths (resolved against
// dataset.path unless absolute, defaults when empty); model.init_from when
// set; checkpoint.directory when set (kWrite). INVALID_ARGUMENT
// "<prefix><field>: ..." for a relative or ".." path (NormalizeAbsolutePath).
StatusOr<std::vector<NamedPath>> PathsNamedBy(const v1::JobSpec& spec,
                                              const std::string& prefix = "spec.");

// OK when each path lies under one of the grant's roots for its access (a
// write root grants reading too); else PERMISSION_DENIED naming the first
// such field, its path and the roots it may use.
Status CheckLexicalPaths(const std::vector<NamedPath>& paths, const v1::PathGrant& grant,
                         const std::string& prefix = "spec.");

// As CheckLexicalPaths after resolving symlinks (ResolveSymlinks) in every
// path and every root, so a link inside an allowed root that points outside
// it is refused. Errors name the field.
Status CheckResolvedPaths(const std::vector<NamedPath>& paths, const v1::PathGrant& grant,
                          const std::string& prefix = "spec.");

}  // namespace tern::paths

#endif  // TERN_PATH_POLICY_SPEC_PATHS_H_
