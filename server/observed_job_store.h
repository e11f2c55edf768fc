// ObservedJobStore: a JobStore that forwards every call to another store and,
// after each successful write, reports the job and each new event to an
// observer. ternd feeds its scheduler metrics (state counts by transition,
// restarts by reason, admission waits, ended jobs) from it without the
// scheduler knowing about metrics.
//
// The observer runs on the thread that writes the store (the scheduler's,
// under its lock, or its group-commit writer), one call at a time: it must be
// quick and must never call the Scheduler. Thread-safe as far as the inner store and the observer
// are.
#ifndef TERN_SERVER_OBSERVED_JOB_STORE_H_
#define TERN_SERVER_OBSERVED_JOB_STORE_H_

#include <functional>
#include <memory>
#include <vector>

#include "scheduler/job_store.h"

namespace tern::server {

class ObservedJobStore final : public scheduler::JobStore {
 public:
  using Observer =
      std::function<void(const scheduler::Job&, const scheduler::JobEvent&)>;

  ObservedJobStore(std::unique_ptr<scheduler::JobStore> inner,
                   Observer observer);

  Status CreateJob(const scheduler::Job& job,
                   const std::vector<scheduler::JobEvent>& events) override;
  Status UpdateJob(const scheduler::Job& job,
                   const std::vector<scheduler::JobEvent>& events) override;
  Status Commit(const std::vector<scheduler::JobWrite>& writes) override;
  StatusOr<std::vector<scheduler::Job>> LoadJobs() override;
  StatusOr<scheduler::JobId> HighestJobIdEver() override;
  StatusOr<std::vector<scheduler::JobEvent>> ReadEvents(scheduler::JobId job,
                                                        int64_t after_seq,
                                                        int limit) override;

 private:
  void Notify(const scheduler::Job& job,
              const std::vector<scheduler::JobEvent>& events) const;

  const std::unique_ptr<scheduler::JobStore> inner_;
  const Observer observer_;
};

}  // namespace tern::server

#endif  // TERN_SERVER_OBSERVED_JOB_STORE_H_
