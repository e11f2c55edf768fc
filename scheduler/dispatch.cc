#include "scheduler/dispatch.h"

namespace tern::scheduler {

bool IsExpectedRank(const Job& job, const RankRef& ref) {
  if (!HoldsSlots(job.state) || ref.attempt != job.attempt || ref.rank < 0 ||
      ref.rank >= static_cast<int>(job.ranks.size())) {
    return false;
  }
  const RankPlacement& r = job.ranks[ref.rank];
  return r.agent_id == ref.agent_id &&
         (r.state == RankState::kAssigned || r.state == RankState::kRunning);
}

Assignment AssignmentOf(const Job& job, int rank) {
  Assignment a;
  a.job_id = job.id;
  a.attempt = job.attempt;
  a.rank = rank;
  a.world_size = job.world_size;
  a.agent_id = job.ranks.at(rank).agent_id;
  a.device_kind = job.device_kind;
  a.rendezvous_host = job.rendezvous_host;
  a.rendezvous_port = job.rendezvous_port;
  a.resume_from_step = job.last_checkpoint_step;
  a.spec = job.spec;
  return a;
}

}  // namespace tern::scheduler
