// TrainerLauncher: turns one assignment into a LaunchPlan (how to start its
// tern-trainer) or the reason it cannot start. Planning writes the rank's
// files:
//   <workdir>/jobs/<job>/rank-<r>/             the trainer's --workdir
//   <workdir>/jobs/<job>/rank-<r>/spec-attempt-<a>.json
//   <workdir>/jobs/<job>/checkpoints/          when the assignment names none
// checks the spec's paths against the assignment's PathGrant with symlinks
// resolved, and builds the Landlock ruleset, argv and environment (agent.h
// tells which paths a confined trainer may use).
//
// Usage:
//   TrainerLauncher launcher(&options);
//   std::string failure_code;
//   StatusOr<LaunchPlan> plan = launcher.Plan(assignment, cuda_slot, prefix, &failure_code);
//   if (plan.ok()) ChildProcess::Start(plan->process);   // while *plan lives
//
// Thread-safe: Plan() may run for several ranks at once.
#ifndef TERN_WORKER_AGENT_TRAINER_LAUNCH_H_
#define TERN_WORKER_AGENT_TRAINER_LAUNCH_H_

#include <atomic>
#include <optional>
#include <string>

#include "common/status.h"
#include "tern/v1/worker_service.pb.h"
#include "worker/agent/agent_options.h"
#include "worker/agent/child_process.h"
#include "worker/agent/fs_confinement.h"

namespace tern::agent {

struct LaunchPlan {
  ChildProcess::Options process;  // argv, env, working_dir, Landlock ruleset fd
  // Owns process.landlock_ruleset_fd: keep the plan until the child started.
  std::optional<FsConfinement> confinement;
};

class TrainerLauncher {
 public:
  // `options` is not owned and must outlive the launcher.
  explicit TrainerLauncher(const AgentOptions* options) : options_(*options) {}

  // The rank's agent-lease file (TERN_LEASE_FILE), one per attempt: an
  // earlier attempt's trainer in the same rank directory must not see this
  // attempt's renewals.
  std::string LeaseFile(const v1::RankRef& ref) const;

  // The plan for `a` (`cuda_slot` < 0: a CPU rank). On failure returns why;
  // when the job's own spec is at fault (a path outside its PathGrant),
  // *failure_code gets the status code's name (ReportExitRequest.failure_code:
  // ternd does not retry it). `log_prefix` starts the log line that
  // describes the confinement.
  StatusOr<LaunchPlan> Plan(const v1::Assignment& a, int cuda_slot, const std::string& log_prefix,
                            std::string* failure_code);

 private:
  std::string JobDir(const v1::RankRef& ref) const;
  // Writes the spec; returns its path.
  StatusOr<std::string> PrepareFiles(const v1::Assignment& a, const std::string& rank_dir,
                                     std::string* failure_code) const;
  // The Landlock ruleset for a rank whose assignment has a PathGrant
  // (writes, and reads with confine_reads kOn); nullopt without a grant,
  // with confine_writes kOff, or (kAuto, reads not confined) on a kernel
  // without Landlock.
  StatusOr<std::optional<FsConfinement>> Confine(const v1::Assignment& a,
                                                 const std::string& rank_dir);
  // `tmpdir` non-empty: the trainer's TMPDIR.
  std::vector<std::string> Env(const v1::Assignment& a, int cuda_slot,
                               const std::string& tmpdir) const;

  const AgentOptions& options_;
  std::atomic<bool> warned_no_landlock_{false};
};

}  // namespace tern::agent

#endif  // TERN_WORKER_AGENT_TRAINER_LAUNCH_H_
