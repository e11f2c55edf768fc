// OpenJobStore: the JobStore that ternd's --db names: a PostgreSQL URL
// ("postgresql://..." or "postgres://...": PostgresJobStore) or otherwise
// the path of an SQLite file (SqliteJobStore). Blocks while it opens; the
// errors are those of the store's Open.
#ifndef TERN_SCHEDULER_OPEN_JOB_STORE_H_
#define TERN_SCHEDULER_OPEN_JOB_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "scheduler/job_store.h"

namespace tern::scheduler {

// `fence_epoch` and `on_fenced` go to PostgresJobStore::Options (0 and empty:
// unfenced); an SQLite store has one process and takes neither (a fence
// epoch > 0 with an SQLite path is INVALID_ARGUMENT).
StatusOr<std::unique_ptr<JobStore>> OpenJobStore(const std::string& db, int64_t fence_epoch,
                                                 std::function<void()> on_fenced);

// `db` fit for a log line: a URL without its password, a path as it is.
std::string JobStoreDisplayName(const std::string& db);

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_OPEN_JOB_STORE_H_
