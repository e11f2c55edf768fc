#include "scheduler/open_job_store.h"

#include <utility>

#include "scheduler/postgres_connection.h"
#include "scheduler/postgres_job_store.h"
#include "scheduler/sqlite_job_store.h"

namespace tern::scheduler {

StatusOr<std::unique_ptr<JobStore>> OpenJobStore(const std::string& db, int64_t fence_epoch,
                                                 std::function<void()> on_fenced) {
  if (IsPostgresUrl(db)) {
    PostgresJobStore::Options options;
    options.fence_epoch = fence_epoch;
    options.on_fenced = std::move(on_fenced);
    TERN_ASSIGN_OR_RETURN(std::unique_ptr<PostgresJobStore> store,
                          PostgresJobStore::Open(db, options));
    return std::unique_ptr<JobStore>(std::move(store));
  }
  if (fence_epoch != 0) {
    return InvalidArgumentError("fence_epoch " + std::to_string(fence_epoch) +
                                " with the SQLite store " + db +
                                ": only a PostgreSQL store is shared and fenced");
  }
  TERN_ASSIGN_OR_RETURN(std::unique_ptr<SqliteJobStore> store, SqliteJobStore::Open(db));
  return std::unique_ptr<JobStore>(std::move(store));
}

std::string JobStoreDisplayName(const std::string& db) {
  return IsPostgresUrl(db) ? pg::RedactUrl(db) : db;
}

}  // namespace tern::scheduler
