// SqliteJobStore's own behaviour: the file, WAL, schema versions and
// migrations. The JobStore contract both stores keep is job_store_test.cc.
#include "scheduler/sqlite_job_store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tests/scheduler/test_util.h"

namespace tern::scheduler {
namespace {

using ::tern::scheduler::testing::TempDir;

class SqliteJobStoreTest : public ::testing::Test {
 protected:
  std::string DbPath() const { return (dir_.path() / "jobs.db").string(); }

  std::unique_ptr<SqliteJobStore> OpenStore() {
    StatusOr<std::unique_ptr<SqliteJobStore>> store =
        SqliteJobStore::Open(DbPath());
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(store).value() : nullptr;
  }

  // Runs SQL on the file through a separate connection.
  void RawExec(const std::string& sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(DbPath().c_str(), &db), SQLITE_OK);
    char* error = nullptr;
    EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error),
              SQLITE_OK)
        << (error ? error : "");
    sqlite3_free(error);
    sqlite3_close(db);
  }

  std::string RawQueryText(const std::string& sql) {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open(DbPath().c_str(), &db), SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr),
              SQLITE_OK);
    std::string out;
    if (sqlite3_step(stmt) == SQLITE_ROW) {
      out = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return out;
  }

  TempDir dir_;
};

TEST_F(SqliteJobStoreTest, UsesWriteAheadLog) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(RawQueryText("PRAGMA journal_mode"), "wal");
  EXPECT_EQ(RawQueryText("PRAGMA user_version"),
            std::to_string(SqliteJobStore::kSchemaVersion));
}

TEST_F(SqliteJobStoreTest, GarbageFileIsDataLoss) {
  {
    std::ofstream out(DbPath(), std::ios::binary);
    for (int i = 0; i < 512; ++i) out << "this is not a database ";
  }
  StatusOr<std::unique_ptr<SqliteJobStore>> store =
      SqliteJobStore::Open(DbPath());
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kDataLoss) << store.status();
  EXPECT_NE(store.status().message().find(DbPath()), std::string::npos);
  EXPECT_NE(store.status().message().find("not a database"), std::string::npos)
      << store.status();
}

TEST_F(SqliteJobStoreTest, MissingDirectoryIsAnError) {
  StatusOr<std::unique_ptr<SqliteJobStore>> store =
      SqliteJobStore::Open((dir_.path() / "no" / "such" / "jobs.db").string());
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("sqlite3_open_v2"), std::string::npos)
      << store.status();
}

TEST_F(SqliteJobStoreTest, NewerSchemaVersionIsRejected) {
  ASSERT_NE(OpenStore(), nullptr);
  RawExec("PRAGMA user_version = 99");
  StatusOr<std::unique_ptr<SqliteJobStore>> store =
      SqliteJobStore::Open(DbPath());
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("99"), std::string::npos)
      << store.status();
}

// Version 1's schema exactly as that release created it (kept here, not
// shared with the store, so that a change there cannot hide a break).
constexpr char kVersion1Schema[] = R"sql(
CREATE TABLE jobs (
  id INTEGER PRIMARY KEY, owner TEXT NOT NULL, priority INTEGER NOT NULL,
  world_size INTEGER NOT NULL, device_kind TEXT NOT NULL, max_restarts INTEGER NOT NULL,
  idempotency_key TEXT NOT NULL, spec BLOB NOT NULL, submit_time_us INTEGER NOT NULL,
  state TEXT NOT NULL, restarts_used INTEGER NOT NULL, attempt INTEGER NOT NULL,
  last_checkpoint_step INTEGER, artifact_path TEXT NOT NULL, metrics_json TEXT NOT NULL,
  last_event_seq INTEGER NOT NULL, rendezvous_host TEXT NOT NULL,
  rendezvous_port INTEGER NOT NULL, restart_not_before_us INTEGER NOT NULL);
CREATE UNIQUE INDEX jobs_by_idempotency_key
  ON jobs (owner, idempotency_key) WHERE idempotency_key <> '';
CREATE TABLE job_labels (job_id INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (job_id, key)) WITHOUT ROWID;
CREATE TABLE job_ranks (job_id INTEGER NOT NULL, rank INTEGER NOT NULL,
  agent_id TEXT NOT NULL, state TEXT NOT NULL, exit_code INTEGER NOT NULL,
  PRIMARY KEY (job_id, rank)) WITHOUT ROWID;
CREATE TABLE job_events (job_id INTEGER NOT NULL, seq INTEGER NOT NULL,
  time_us INTEGER NOT NULL, type TEXT NOT NULL, from_state TEXT NOT NULL,
  to_state TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL,
  payload TEXT NOT NULL, step INTEGER NOT NULL, PRIMARY KEY (job_id, seq)) WITHOUT ROWID;
INSERT INTO jobs VALUES (7, 'alice', 2, 2, 'cpu', 3, 'key-7', x'0a0378797a', 1704067200000000,
  'RUNNING', 1, 2, 40, '', '', 3, 'host-a', 26500, 1704067200000000);
INSERT INTO jobs VALUES (8, 'bob', 0, 1, 'cuda', 0, '', x'', 1704067300000000,
  'FAILED', 0, 1, NULL, '', '', 2, '', 0, 1704067300000000);
INSERT INTO job_labels VALUES (7, 'team', 'vision');
INSERT INTO job_ranks VALUES (7, 0, 'a', 'RUNNING', 0), (7, 1, 'a', 'RUNNING', 0);
INSERT INTO job_events VALUES (7, 1, 1704067200000000, 'STATE_CHANGED', 'UNSPECIFIED', 'QUEUED',
  'SUBMITTED', 'submitted', '', 0);
INSERT INTO job_events VALUES (7, 2, 1704067201000000, 'STATE_CHANGED', 'QUEUED', 'ADMITTED',
  'ADMITTED', 'attempt 2', '', 0);
INSERT INTO job_events VALUES (7, 3, 1704067202000000, 'STATE_CHANGED', 'ADMITTED', 'RUNNING',
  'ALL_RANKS_STARTED', 'all 2 ranks started', '', 0);
PRAGMA user_version = 1;
)sql";

TEST_F(SqliteJobStoreTest, MigratesAVersion1DatabaseKeepingEveryJob) {
  RawExec(kVersion1Schema);
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(RawQueryText("PRAGMA user_version"), "2");
  StatusOr<std::vector<Job>> loaded = store->LoadJobs();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 2u);
  Job job = (*loaded)[0];
  EXPECT_EQ(job.id, 7);
  EXPECT_EQ(job.owner, "alice");
  EXPECT_EQ(job.idempotency_key, "key-7");
  EXPECT_EQ(job.spec, std::string("\x0a\x03xyz", 5));
  EXPECT_EQ(job.state, JobState::kRunning);
  EXPECT_EQ(job.attempt, 2);
  EXPECT_EQ(job.restarts_used, 1);
  EXPECT_EQ(job.last_checkpoint_step, std::optional<int64_t>(40));
  EXPECT_EQ(job.labels, (std::map<std::string, std::string>{{"team", "vision"}}));
  ASSERT_EQ(job.ranks.size(), 2u);
  ASSERT_EQ(job.history.size(), 3u);
  EXPECT_EQ(job.history[2].reason, "ALL_RANKS_STARTED");
  EXPECT_FALSE(job.last_failure.has_value()) << "version 1 recorded none";
  EXPECT_EQ((*loaded)[1].state, JobState::kFailed);
  EXPECT_FALSE((*loaded)[1].last_failure.has_value());

  // The migrated rows take the new fields, and the new state.
  std::vector<JobEvent> events;
  ASSERT_TRUE(TransitionJob(&job, JobState::kCancelling, reason::kCancelledByUser, "stop",
                            job.submit_time + std::chrono::seconds(9), &events)
                  .ok());
  RankFailure failure;
  failure.attempt = 2;
  failure.rank = 1;
  failure.agent_id = "a";
  failure.exit_code = 0;
  failure.signal = 9;
  failure.trainer_code = "DATA_LOSS";
  failure.reason = reason::kRankLost;
  failure.message = "rank 1 on agent a was killed by signal 9";
  failure.time = job.submit_time + std::chrono::seconds(8);
  job.last_failure = failure;
  ASSERT_TRUE(store->UpdateJob(job, events).ok());
  store.reset();
  store = OpenStore();  // already version 2: opened as is
  ASSERT_NE(store, nullptr);
  loaded = store->LoadJobs();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Job& got = (*loaded)[0];
  EXPECT_EQ(got.state, JobState::kCancelling);
  ASSERT_TRUE(got.last_failure.has_value());
  EXPECT_EQ(got.last_failure->attempt, 2);
  EXPECT_EQ(got.last_failure->rank, 1);
  EXPECT_EQ(got.last_failure->agent_id, "a");
  EXPECT_EQ(got.last_failure->signal, 9);
  EXPECT_EQ(got.last_failure->trainer_code, "DATA_LOSS");
  EXPECT_EQ(got.last_failure->reason, "RANK_LOST");
  EXPECT_EQ(got.last_failure->message, failure.message);
  EXPECT_EQ(got.last_failure->time, failure.time);
}

TEST_F(SqliteJobStoreTest, FailedMigrationChangesNothing) {
  RawExec(kVersion1Schema);
  // A column the migration adds already exists: its ALTER TABLE fails
  // half-way through the migration.
  RawExec("ALTER TABLE jobs ADD COLUMN failure_signal INTEGER");
  StatusOr<std::unique_ptr<SqliteJobStore>> store = SqliteJobStore::Open(DbPath());
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("migration to schema version 2"), std::string::npos)
      << store.status();
  EXPECT_EQ(RawQueryText("PRAGMA user_version"), "1");
  EXPECT_EQ(RawQueryText("SELECT count(*) FROM pragma_table_info('jobs') "
                         "WHERE name = 'failure_attempt'"),
            "0");
  EXPECT_EQ(RawQueryText("SELECT count(*) FROM jobs"), "2");
}

TEST_F(SqliteJobStoreTest, ForeignDatabaseIsRejected) {
  RawExec("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)");
  StatusOr<std::unique_ptr<SqliteJobStore>> store =
      SqliteJobStore::Open(DbPath());
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kFailedPrecondition)
      << store.status();
  EXPECT_NE(store.status().message().find("not a tern job store"),
            std::string::npos)
      << store.status();
}

}  // namespace
}  // namespace tern::scheduler
