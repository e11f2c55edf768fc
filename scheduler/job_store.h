// JobStore: where the scheduler persists jobs and their event log.
//
// The Scheduler acknowledges a change only once it is stored, so a new
// Scheduler over the same store resumes with everything acknowledged. It
// stores either one change per call (CreateJob, UpdateJob) or the changes of
// many calls in one transaction (Commit: group commit). Events
// are append-only; (job id, seq) is unique. Implementations: SqliteJobStore
// (sqlite_job_store.h), PostgresJobStore (postgres_job_store.h; OpenJobStore
// in open_job_store.h picks one by name); tests wrap them to inject failures. Implementations are
// thread-safe.
#ifndef TERN_SCHEDULER_JOB_STORE_H_
#define TERN_SCHEDULER_JOB_STORE_H_

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "scheduler/job.h"

namespace tern::scheduler {

// One change of a Commit batch: a new job (as CreateJob), a change of an
// existing one (as UpdateJob), a new spec and labels of an existing job
// (kRelabel: job.spec and job.labels replace the stored ones; nothing else
// is written, `events` must be empty), or the removal of an existing job
// with every row of it (kDelete: job, labels, ranks, events; only job.id is
// read). kRelabel and kDelete of a job the store lacks are NOT_FOUND. They
// exist only in batches: the per-call methods below are the scheduler's
// CommitMode::kPerCall path for creating and updating.
struct JobWrite {
  enum class Kind { kCreate, kUpdate, kRelabel, kDelete };
  Kind kind = Kind::kUpdate;
  Job job;
  std::vector<JobEvent> events;
};

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

  // Applies `writes` in order in one transaction, durably: all of them or,
  // on error, none. The error is the first failing write's, as CreateJob or
  // UpdateJob would return it. An empty batch is OK and writes nothing.
  virtual Status Commit(const std::vector<JobWrite>& writes) = 0;

  // Every job, by ascending id, with `history` holding its state-change events.
  virtual StatusOr<std::vector<Job>> LoadJobs() = 0;

  // The highest id of any job the store ever held, deleted ones included; 0
  // for none. New jobs get higher ids, so that no id names two jobs.
  virtual StatusOr<JobId> HighestJobIdEver() = 0;

  // Events of `job` with seq > after_seq, ascending, at most `limit`.
  virtual StatusOr<std::vector<JobEvent>> ReadEvents(JobId job,
                                                     int64_t after_seq,
                                                     int limit) = 0;
};

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_JOB_STORE_H_
