// What the scheduler and the node agents (tern-agent) tell each other.
//
// server/ maps these one to one onto WorkerService messages. An agent
// registers its slots, renews its lease with heartbeats, drains its AgentWork
// (kill orders first, then assignments) and reports each rank's start, exit,
// progress and checkpoints, always naming the rank by RankRef so that reports
// from an attempt the scheduler has given up on are recognised and ignored.
// Plain values (and AssignmentOf, dispatch.cc), no locking.
#ifndef TERN_SCHEDULER_DISPATCH_H_
#define TERN_SCHEDULER_DISPATCH_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "scheduler/clock.h"
#include "scheduler/job.h"

namespace tern::scheduler {

// One rank of one attempt of one job, as placed on an agent.
struct RankRef {
  JobId job_id = 0;
  int attempt = 0;  // Assignment::attempt
  int rank = 0;
  std::string agent_id;
};

struct AgentRegistration {
  std::string agent_id;  // stable across agent restarts (e.g. the node name)
  std::string host;      // where other ranks reach this machine
  std::map<std::string, int> slots;  // device kind -> slots, e.g. {"cuda": 8}
  // Ranks this agent still runs (after a ternd restart); empty when it starts
  // fresh. Placed ranks it does not list are treated as lost.
  std::vector<RankRef> running;
};

struct Lease {
  std::string agent_id;
  TimePoint expires_at;  // heartbeat before this, or the agent is lost
};

// Whether `ref` is a rank the scheduler expects alive: the current attempt's,
// placed on `ref.agent_id`, assigned or running (not exited), of a job that
// holds slots.
bool IsExpectedRank(const Job& job, const RankRef& ref);

// Start rank `rank` of `world_size`. Idempotent per (job_id, attempt, rank):
// an agent that already runs it ignores a repeat.
struct Assignment {
  JobId job_id = 0;
  int attempt = 0;
  int rank = 0;
  int world_size = 1;
  std::string agent_id;
  std::string device_kind;
  std::string rendezvous_host;  // rank 0's agent host; rank 0 hosts the store
  int rendezvous_port = 0;      // from SchedulerOptions' rendezvous range
  // Last checkpoint step the scheduler knows was committed; nullopt: start
  // fresh. The trainer may find a newer committed one and use that.
  std::optional<int64_t> resume_from_step;
  std::string spec;  // Job::spec, opaque
};

// The assignment that starts rank `rank` (placed) of `job`'s current attempt.
Assignment AssignmentOf(const Job& job, int rank);

// Stop rank `rank` of attempt `attempt` (and nothing else) on `agent_id`.
struct KillOrder {
  std::string agent_id;
  JobId job_id = 0;
  int attempt = 0;
  int rank = 0;
  std::string reason;  // reason::k* of the job's transition
};

struct AgentWork {
  std::vector<KillOrder> kills;  // apply these first
  std::vector<Assignment> assignments;
  bool empty() const { return kills.empty() && assignments.empty(); }
};

struct RankExit {
  RankRef rank;
  int exit_code = 0;    // 0 success; > 0 the trainer's status; < 0 -signal
  std::string message;  // e.g. the trainer's last error line
  // False when the failure would recur on every attempt (the job's spec, data
  // or paths are at fault): the job FAILS at once, keeping its restarts.
  bool retryable = true;
  // The trainer's error code, e.g. "INVALID_ARGUMENT" (its `failed` event,
  // or the agent's refusal to start it); "" when none. Kept in
  // Job::last_failure.
  std::string failure_code;
  // The trainer stopped on request at a committed checkpoint (exit code 3):
  // the job restarts from it without using one of its max_restarts.
  bool preempted = false;
  // The trainer stopped itself because its agent's lease ran out (exit code
  // 4): RANK_LOST, not TRAINER_FAILED.
  bool lease_lost = false;
  // Rank 0 found its rendezvous port taken by another process (exit code 5):
  // RENDEZVOUS_PORT_IN_USE, free of charge, another port next time.
  bool rendezvous_port_in_use = false;
  // A collective with the other ranks failed (exit code 6): a symptom of
  // another rank's failure, or of ranks cut off from each other. The
  // scheduler waits up to collective_failure_grace for a rank's own failure
  // before it restarts the job as COLLECTIVE_FAILED.
  bool collective_failed = false;
  // Rank 0 on success: the packed model and the final metrics.
  std::string artifact_path;
  std::string metrics_json;
};

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_DISPATCH_H_
