// SqliteJobStore: the embedded JobStore, one SQLite file per ternd.
//
// Durability: journal_mode=WAL and synchronous=FULL, so a transaction that
// returned OK survives a process crash and a power loss (WAL with NORMAL
// would only survive the former). Every JobStore call is one BEGIN IMMEDIATE
// ... COMMIT transaction (Commit: one for the whole batch, one fsync). The schema version lives in
// PRAGMA user_version: an empty file gets the current schema (version 1's tables, then every
// migration); an older version is migrated in one transaction when opened (all of it or nothing;
// see kMigrations in sqlite_job_store.cc); a newer version, or a database that is not a tern job
// store, is FAILED_PRECONDITION; a file that is not SQLite at all is DATA_LOSS.
// Versions: 1 the jobs, labels, ranks and events; 2 adds Job::last_failure (columns failure_*,
// "no failure" in the rows of version 1). The spec column needs no conversion: it has always held
// the spec as submitted (owner filled in); the server resolves the rest (checkpoint directory,
// defaults) on the way out, for rows of either version alike.
// Every sqlite3 result code is checked through one helper that records the call, file:line and
// sqlite3_errmsg. Thread-safe: one mutex serializes the calls on the single connection.
#ifndef TERN_SCHEDULER_SQLITE_JOB_STORE_H_
#define TERN_SCHEDULER_SQLITE_JOB_STORE_H_

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "scheduler/job_store.h"

struct sqlite3;

namespace tern::scheduler {

class SqliteStatementCache;  // sqlite_job_store.cc

struct SqliteJobStoreOptions {
  std::chrono::milliseconds busy_timeout{
      5000};  // wait for another writer's lock
  Status Validate() const;
};

class SqliteJobStore final : public JobStore {
 public:
  static constexpr int kSchemaVersion = 2;

  // Opens `path`, creating the file and the schema when absent. Blocks on
  // disk I/O. Errors: DATA_LOSS (not an SQLite file, corrupt),
  // FAILED_PRECONDITION (foreign or newer schema, WAL refused), others as
  // SQLite reports them; the message names the path.
  static StatusOr<std::unique_ptr<SqliteJobStore>> Open(
      const std::string& path, SqliteJobStoreOptions options = {});
  ~SqliteJobStore() override;

  Status CreateJob(const Job& job,
                   const std::vector<JobEvent>& events) override;
  Status UpdateJob(const Job& job,
                   const std::vector<JobEvent>& events) override;
  Status Commit(const std::vector<JobWrite>& writes) override;
  StatusOr<std::vector<Job>> LoadJobs() override;
  StatusOr<JobId> HighestJobIdEver() override;
  StatusOr<std::vector<JobEvent>> ReadEvents(JobId job, int64_t after_seq,
                                             int limit) override;

 private:
  struct DbCloser {
    void operator()(sqlite3* db) const;
  };
  using DbPtr = std::unique_ptr<sqlite3, DbCloser>;

  SqliteJobStore(std::string path, DbPtr db);
  Status EnsureSchema();

  const std::string path_;
  std::mutex mu_;
  DbPtr db_;  // guarded by mu_
  // The write path's prepared statements (finalized before db_ closes).
  std::unique_ptr<SqliteStatementCache> statements_;  // guarded by mu_
};

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_SQLITE_JOB_STORE_H_
