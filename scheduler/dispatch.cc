#include "scheduler/dispatch.h"

namespace tern::scheduler {

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
