// AgentLeases: the lease each agent holds, named by a random lease id that
// every call of the agent after Register must present.
//
// Usage: one per Scheduler; Register grants a lease id (the scheduler
// registers the agent and reconciles the ranks it still runs), then the
// agent's calls go through Heartbeat / TakeWork / Drain / Deregister with
// its (agent_id, lease_id), and the daemon calls Expire(now) after each
// Scheduler::Tick. Leases live in memory only: after a restart every agent
// registers anew (scheduler.h: Durability).
//
// A lease is current while its id is the agent's newest, it has not expired
// (expired is expired even before Expire collects it: the agent's trainers
// stop at that deadline, so a late renewal must not bring their ranks back)
// and the scheduler still knows the agent. Any other lease gets
// FAILED_PRECONDITION ("register again"); the scheduler's own errors pass
// through unchanged.
//
// Thread-safe: one mutex guards the table; it is never held while calling
// the Scheduler (TakeWork blocks up to max_wait there).
#ifndef TERN_SCHEDULER_AGENT_LEASES_H_
#define TERN_SCHEDULER_AGENT_LEASES_H_

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "scheduler/clock.h"
#include "scheduler/dispatch.h"
#include "scheduler/scheduler.h"

namespace tern::scheduler {

class AgentLeases {
 public:
  // Neither is owned; both must outlive this object.
  AgentLeases(Scheduler* scheduler, const Clock* clock);

  struct Grant {
    std::string lease_id;  // 32 lowercase hex digits
    TimePoint expires_at;
    // The agent's previous lease had expired but was not collected yet: it
    // counts as an expiry (as Expire would have counted it).
    bool replaced_expired = false;
  };
  // Scheduler::RegisterAgent (its errors as they are), then a new lease id
  // replacing the agent's previous one.
  StatusOr<Grant> Register(const AgentRegistration& registration);

  // OK when `lease_id` is `agent_id`'s current lease; FAILED_PRECONDITION.
  Status Check(const std::string& agent_id, const std::string& lease_id) const;

  struct Renewal {
    TimePoint expires_at;
    std::vector<RankRef> unexpected;  // of `running`: to be killed
  };
  // Check, then renews the lease with the scheduler, then reconciles
  // `running` (ranks alive on the agent): one the scheduler still expects
  // (its current attempt, placed on this agent, not exited) is marked
  // started; any other is returned as unexpected. FAILED_PRECONDITION once
  // the scheduler no longer knows the agent.
  StatusOr<Renewal> Heartbeat(const std::string& agent_id, const std::string& lease_id,
                              const std::vector<RankRef>& running);

  // A rank the agent should be running now, and its job as listed.
  struct PlacedRank {
    Assignment assignment;
    Job job;
  };
  // Every rank the agent should be running now (ADMITTED jobs first, then
  // RUNNING; ascending job id). No lease check.
  StatusOr<std::vector<PlacedRank>> PlacedRanks(const std::string& agent_id) const;

  // Check, then Scheduler::TakeAgentWork (blocks up to max_wait).
  // FAILED_PRECONDITION once the scheduler no longer knows the agent.
  StatusOr<AgentWork> TakeWork(const std::string& agent_id, const std::string& lease_id,
                               std::chrono::milliseconds max_wait);
  // Check, then Scheduler::DrainAgent; FAILED_PRECONDITION as TakeWork.
  Status Drain(const std::string& agent_id, const std::string& lease_id);
  // Check, then Scheduler::DeregisterAgent; the lease ends (not counted as
  // expired). FAILED_PRECONDITION when the scheduler had already lost the
  // agent (its lease ends all the same).
  Status Deregister(const std::string& agent_id, const std::string& lease_id);

  // Forgets the leases that expired at or before `now` (logging each);
  // returns how many.
  int Expire(TimePoint now);

 private:
  struct Entry {
    std::string lease_id;
    TimePoint expires_at;
    bool lost = false;  // the scheduler no longer knows the agent
  };
  // Marks the lease lost (Expire collects it) and returns the
  // FAILED_PRECONDITION that tells the agent so.
  Status Lost(const std::string& agent_id, const std::string& lease_id, const std::string& what);

  Scheduler* const scheduler_;
  const Clock* const clock_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> leases_;  // by agent id
};

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_AGENT_LEASES_H_
