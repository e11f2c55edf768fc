// JobStore: where the scheduler persists jobs and their event log.
//
// The Scheduler writes through: a change is stored (one call, one transaction)
// before the scheduler applies it in memory and acknowledges it, so a new
// Scheduler over the same store resumes with everything acknowledged. Events
// are append-only; (job id, seq) is unique. Implementations: SqliteJobStore
// (sqlite_job_store.h); tests wrap it to inject failures. Implementations are
// thread-safe.
#ifndef TERN_SCHEDULER_JOB_STORE_H_
#define TERN_SCHEDULER_JOB_STORE_H_

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "scheduler/job.h"

namespace tern::scheduler {

class JobStore {
 public:
  virtual ~JobStore() = default;

  // Inserts a new job (every field, its labels and ranks) and appends
  // `events`, atomically. ALREADY_EXISTS when the id, or the (owner,
  // idempotency_key) pair with a non-empty key, is taken.
  virtual Status CreateJob(const Job& job,
                           const std::vector<JobEvent>& events) = 0;

  // Replaces the mutable fields of an existing job (state, counters, result,
  // ranks, rendezvous) and appends `events`, atomically. NOT_FOUND when the
  // job does not exist. The fields set at submission are not rewritten.
  virtual Status UpdateJob(const Job& job,
                           const std::vector<JobEvent>& events) = 0;

  // Every job, by ascending id, with `history` holding its state-change events.
  virtual StatusOr<std::vector<Job>> LoadJobs() = 0;

  // Events of `job` with seq > after_seq, ascending, at most `limit`.
  virtual StatusOr<std::vector<JobEvent>> ReadEvents(JobId job,
                                                     int64_t after_seq,
                                                     int limit) = 0;
};

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_JOB_STORE_H_
