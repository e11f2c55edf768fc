// PostgresJobStore: the JobStore in a PostgreSQL database, which several
// ternds can share (one leads: PostgresLeaderElection,
// postgres_leader_election.h).
//
//   auto store = PostgresJobStore::Open("postgresql://tern@db.example/tern", {});
//
// The tables hold what SqliteJobStore's schema version 2 holds (same
// columns and meaning); they live in the URL's database, in the first schema
// of its search_path (add `?options=-csearch_path%3Dtern` for another). Open
// creates them when absent (once, under an advisory lock, when two ternds
// start at once); a newer schema version, or tables of the same names that
// are not tern's, are FAILED_PRECONDITION.
//
// Durability: every call is one transaction, acknowledged once PostgreSQL
// committed it (its default synchronous_commit=on: flushed to its WAL, and
// to a synchronous standby when one is configured). Commit sends a batch's
// statements pipelined: one round trip per 256 statements, plus COMMIT.
//
// Fencing: a store opened with Options::fence_epoch > 0 first reads the
// leader lease row in every write transaction (FOR SHARE, so that a takeover
// waits for the write in flight) and refuses the write, storing nothing,
// once a later epoch exists: ABORTED with reason LEADERSHIP_LOST.
//
// Errors name the URL (password removed) and the statement. A lost
// connection makes that call UNAVAILABLE (for a Commit whose COMMIT was
// sent: the outcome is unknown); the next call connects again.
// Thread-safe: one mutex serializes the calls on one connection.
#ifndef TERN_SCHEDULER_POSTGRES_JOB_STORE_H_
#define TERN_SCHEDULER_POSTGRES_JOB_STORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "scheduler/job_store.h"

namespace tern::scheduler {

namespace pg {
class Connection;  // postgres_connection.h
}

// True for "postgresql://..." and "postgres://..." (libpq connection URIs).
bool IsPostgresUrl(std::string_view db);

class PostgresJobStore final : public JobStore {
 public:
  struct Options {
    // > 0: the store was opened by the leader with this epoch; every write
    // transaction first checks the election row (SELECT ... FOR SHARE, so a
    // takeover waits for it) and fails with ABORTED, ErrorDetails reason
    // error_reason::kLeadershipLost (common/error_reasons.h), writing nothing,
    // once a later epoch exists. 0: unfenced (single process, tests).
    int64_t fence_epoch = 0;
    // Called (once, from the failing thread) when a write is refused for
    // that reason, so ternd can stop at once. May be empty.
    std::function<void()> on_fenced;
  };

  // Connects and creates or checks the schema. Blocks (connect_timeout 10 s
  // unless the URL sets one). INVALID_ARGUMENT: not a PostgreSQL URL or a
  // malformed one; UNAVAILABLE: the server cannot be reached;
  // FAILED_PRECONDITION: a newer or foreign schema.
  static StatusOr<std::unique_ptr<PostgresJobStore>> Open(const std::string& url,
                                                          const Options& options);
  ~PostgresJobStore() override;

  Status CreateJob(const Job& job, const std::vector<JobEvent>& events) override;
  Status UpdateJob(const Job& job, const std::vector<JobEvent>& events) override;
  Status Commit(const std::vector<JobWrite>& writes) override;
  StatusOr<std::vector<Job>> LoadJobs() override;
  StatusOr<JobId> HighestJobIdEver() override;
  StatusOr<std::vector<JobEvent>> ReadEvents(JobId job, int64_t after_seq, int limit) override;

 private:
  PostgresJobStore(std::unique_ptr<pg::Connection> connection, Options options);

  const Options options_;
  std::mutex mu_;
  std::unique_ptr<pg::Connection> connection_;  // guarded by mu_
  std::atomic<bool> fenced_{false};             // a later epoch exists (for good)
};

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_POSTGRES_JOB_STORE_H_
