#include "scheduler/agent_leases.h"

#include <cstdint>
#include <random>

#include "common/logging.h"

namespace tern::scheduler {
namespace {

constexpr int kListPageSize = 500;

std::string NewLeaseId() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (int word = 0; word < 2; ++word) {
    uint64_t v = rng();
    for (int i = 0; i < 16; ++i, v >>= 4) out.push_back(kDigits[v & 0xf]);
  }
  return out;
}

}  // namespace

AgentLeases::AgentLeases(Scheduler* scheduler, const Clock* clock)
    : scheduler_(scheduler), clock_(clock) {}

StatusOr<AgentLeases::Grant> AgentLeases::Register(const AgentRegistration& registration) {
  TERN_ASSIGN_OR_RETURN(Lease lease, scheduler_->RegisterAgent(registration));
  Grant grant;
  grant.lease_id = NewLeaseId();
  grant.expires_at = lease.expires_at;
  std::lock_guard<std::mutex> lock(mu_);
  Entry& entry = leases_[registration.agent_id];
  // An expired lease that Expire has not collected yet still counts.
  grant.replaced_expired = !entry.lease_id.empty() && entry.expires_at <= clock_->Now();
  entry = Entry{grant.lease_id, grant.expires_at, /*lost=*/false};
  return grant;
}

Status AgentLeases::Check(const std::string& agent_id, const std::string& lease_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = leases_.find(agent_id);
  if (it == leases_.end() || it->second.lease_id != lease_id || it->second.lost ||
      it->second.expires_at <= clock_->Now()) {
    return FailedPreconditionError(
        "agent " + agent_id +
        ": unknown or expired lease; register again, listing the ranks still running");
  }
  return OkStatus();
}

Status AgentLeases::Lost(const std::string& agent_id, const std::string& lease_id,
                         const std::string& what) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = leases_.find(agent_id);
    if (it != leases_.end() && it->second.lease_id == lease_id) {
      it->second.lost = true;  // Expire counts and removes it
    }
  }
  return FailedPreconditionError("agent " + agent_id + ": " + what + "; register again");
}

StatusOr<AgentLeases::Renewal> AgentLeases::Heartbeat(const std::string& agent_id,
                                                      const std::string& lease_id,
                                                      const std::vector<RankRef>& running) {
  TERN_RETURN_IF_ERROR(Check(agent_id, lease_id));
  StatusOr<Lease> lease = scheduler_->Heartbeat(agent_id);
  if (!lease.ok()) {
    if (lease.status().code() != StatusCode::kNotFound) return lease.status();
    return Lost(agent_id, lease_id, "lease expired");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = leases_.find(agent_id);
    if (it != leases_.end() && it->second.lease_id == lease_id) {
      it->second.expires_at = lease->expires_at;
    }
  }
  Renewal renewal;
  renewal.expires_at = lease->expires_at;
  // Reconcile: a rank alive on the agent has started; one the scheduler no
  // longer expects must be killed.
  TERN_ASSIGN_OR_RETURN(renewal.unexpected, scheduler_->ReconcileRunningRanks(agent_id, running));
  return renewal;
}

StatusOr<std::vector<AgentLeases::PlacedRank>> AgentLeases::PlacedRanks(
    const std::string& agent_id) const {
  std::vector<PlacedRank> placed;
  for (JobState holding : {JobState::kAdmitted, JobState::kRunning}) {
    ListJobsQuery query;
    query.states = {holding};
    query.page_size = kListPageSize;
    for (;;) {
      TERN_ASSIGN_OR_RETURN(ListJobsResult page, scheduler_->ListJobs(query));
      for (const Job& job : page.jobs) {
        for (const RankPlacement& r : job.ranks) {
          if (IsExpectedRank(job, {job.id, job.attempt, r.rank, agent_id})) {
            placed.push_back({AssignmentOf(job, r.rank), job});
          }
        }
      }
      if (page.next_page_token.empty()) break;
      query.page_token = page.next_page_token;
    }
  }
  return placed;
}

StatusOr<AgentWork> AgentLeases::TakeWork(const std::string& agent_id, const std::string& lease_id,
                                          std::chrono::milliseconds max_wait) {
  TERN_RETURN_IF_ERROR(Check(agent_id, lease_id));
  StatusOr<AgentWork> work = scheduler_->TakeAgentWork(agent_id, max_wait);
  if (!work.ok() && work.status().code() == StatusCode::kNotFound) {
    return Lost(agent_id, lease_id, "lease ended");
  }
  return work;
}

Status AgentLeases::Drain(const std::string& agent_id, const std::string& lease_id) {
  TERN_RETURN_IF_ERROR(Check(agent_id, lease_id));
  const Status drained = scheduler_->DrainAgent(agent_id);
  if (drained.code() == StatusCode::kNotFound) {
    return Lost(agent_id, lease_id, "lease expired");
  }
  return drained;
}

Status AgentLeases::Deregister(const std::string& agent_id, const std::string& lease_id) {
  TERN_RETURN_IF_ERROR(Check(agent_id, lease_id));
  const Status left = scheduler_->DeregisterAgent(agent_id);
  if (!left.ok() && left.code() != StatusCode::kNotFound) return left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    leases_.erase(agent_id);  // ended, not expired: not counted
  }
  TERN_LOG(INFO) << "agent " << agent_id << " deregistered";
  if (!left.ok()) {
    return FailedPreconditionError("agent " + agent_id + ": lease expired before it deregistered");
  }
  return OkStatus();
}

int AgentLeases::Expire(TimePoint now) {
  std::lock_guard<std::mutex> lock(mu_);
  int expired = 0;
  for (auto it = leases_.begin(); it != leases_.end();) {
    if (it->second.expires_at <= now) {
      TERN_LOG(WARNING) << "agent " << it->first << ": lease expired";
      it = leases_.erase(it);
      ++expired;
    } else {
      ++it;
    }
  }
  return expired;
}

}  // namespace tern::scheduler
