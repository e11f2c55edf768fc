// Which file-system paths a job may name (tenant isolation; docs/SECURITY.md).
//
// At submission ternd checks every path a spec names (path_policy/spec_paths.h):
// - ternd's own artifact and checkpoint roots hold one directory or file per
//   job ("job-<id>-<micros>"); a spec may name one there (model.init_from,
//   or checkpoint.directory to resume) only when that job has the same
//   owner, and may never name a path there to write that is not such a
//   checkpoint directory. This holds with or without a policy;
// - with a PathPolicy (ternd --read-roots / --write-roots, "{owner}" replaced
//   by the job's owner) every other path must lie under a root of its access.
// At dispatch the agent receives the roots as a tern.v1.PathGrant and checks
// the paths again with symlinks resolved. Thread-safe.
#ifndef TERN_SERVER_PATH_ACCESS_H_
#define TERN_SERVER_PATH_ACCESS_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "scheduler/job.h"
#include "server/job_convert.h"
#include "tern/v1/job.pb.h"
#include "tern/v1/worker_service.pb.h"

namespace tern::server {

struct PathPolicy {
  // As paths::ParseRoots returns them (normalized, may hold "{owner}").
  std::vector<std::string> read_roots;   // dataset paths and model.init_from
  std::vector<std::string> write_roots;  // checkpoint.directory (readable too)
  bool Restricts() const { return !read_roots.empty() || !write_roots.empty(); }
};

// The id in a name JobLayout::JobDirName made ("job-42-1700000000000000"),
// nullopt for any other name.
std::optional<scheduler::JobId> JobIdOfDirName(const std::string& name);

// The owner of the job whose directory name is `name` (a JobDirName, with
// any ".tern" suffix removed), nullopt when no job has that name.
using JobDirOwner = std::function<std::optional<std::string>(const std::string& name)>;

// OK, INVALID_ARGUMENT ("spec.<field>: must be an absolute path", ".."), or
// PERMISSION_DENIED naming the field, the path and why. The owner is
// spec.owner().
Status CheckSpecPaths(const v1::JobSpec& spec, const PathPolicy& policy, const JobLayout& layout,
                      const JobDirOwner& owner_of);

// The grant an agent enforces for a job (spec.owner() set) whose checkpoint
// directory resolved to `checkpoint_dir`: the policy's roots for its owner,
// plus the job's own directory in ternd's checkpoint root and the paths in
// ternd's roots that CheckSpecPaths admitted. nullopt when the policy does
// not restrict.
std::optional<v1::PathGrant> PathGrantFor(const v1::JobSpec& spec,
                                          const std::string& checkpoint_dir,
                                          const PathPolicy& policy, const JobLayout& layout);

}  // namespace tern::server

#endif  // TERN_SERVER_PATH_ACCESS_H_
