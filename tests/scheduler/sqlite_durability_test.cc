// SqliteJobStore's durability (scheduler/sqlite_job_store.h: WAL with
// synchronous=FULL, so that an acknowledged change survives a power loss).
// synchronous is a property of a connection, not of the file, so a second
// connection cannot see it: this binary defines sqlite3_open_v2 itself
// (taking precedence over libsqlite3's for the store's call) to keep the
// store's handle and to set synchronous=OFF on it before the store's own
// set-up runs, as a build with another default would; and it defines fsync
// and fdatasync to count the syncs of each file. Both checks fail if the
// store leaves synchronous to the library.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "scheduler/clock.h"
#include "scheduler/sqlite_job_store.h"
#include "tests/scheduler/test_util.h"

namespace {

std::mutex mu;
std::vector<std::pair<std::string, sqlite3*>> opened;  // (file, handle) per open
std::map<std::string, int>* syncs = nullptr;           // per file, while counting

template <typename F>
F Real(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}

void CountSync(int fd) {
  std::lock_guard<std::mutex> lock(mu);
  if (syncs == nullptr) return;
  char buffer[4096];
  const ssize_t n =
      ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buffer, sizeof(buffer) - 1);
  ++(*syncs)[n > 0 ? std::string(buffer, static_cast<size_t>(n)) : "?"];
}

}  // namespace

extern "C" int sqlite3_open_v2(const char* filename, sqlite3** db, int flags, const char* vfs) {
  static const auto real =
      Real<int (*)(const char*, sqlite3**, int, const char*)>("sqlite3_open_v2");
  const int rc = real(filename, db, flags, vfs);
  if (rc == SQLITE_OK) {
    // Not FULL (2): the store must set it.
    sqlite3_exec(*db, "PRAGMA synchronous = OFF", nullptr, nullptr, nullptr);
    std::lock_guard<std::mutex> lock(mu);
    opened.emplace_back(filename, *db);
  }
  return rc;
}

extern "C" int fsync(int fd) {
  CountSync(fd);
  static const auto real = Real<int (*)(int)>("fsync");
  return real(fd);
}

extern "C" int fdatasync(int fd) {
  CountSync(fd);
  static const auto real = Real<int (*)(int)>("fdatasync");
  return real(fd);
}

namespace tern::scheduler {
namespace {

using ::tern::scheduler::testing::TempDir;

class SqliteDurabilityTest : public ::testing::Test {
 protected:
  std::string DbPath() const { return (dir_.path() / "jobs.db").string(); }

  // Opens the store; its connection's handle is in `handle_`.
  std::unique_ptr<SqliteJobStore> OpenStore() {
    {
      std::lock_guard<std::mutex> lock(mu);
      opened.clear();
    }
    StatusOr<std::unique_ptr<SqliteJobStore>> store = SqliteJobStore::Open(DbPath());
    EXPECT_TRUE(store.ok()) << store.status();
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(opened.size(), 1u) << "the store opens one connection";
    handle_ = opened.empty() ? nullptr : opened.back().second;
    if (!opened.empty()) EXPECT_EQ(opened.back().first, DbPath());
    return store.ok() ? std::move(store).value() : nullptr;
  }

  // A one-value query on the store's own connection.
  std::string Query(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(handle_, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK);
    std::string out;
    if (sqlite3_step(stmt) == SQLITE_ROW) {
      out = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    sqlite3_finalize(stmt);
    return out;
  }

  static Job SampleJob(JobId id) {
    FakeClock clock;
    Job job;
    job.id = id;
    job.owner = "alice";
    job.world_size = 1;
    job.idempotency_key = "key-" + std::to_string(id);
    job.spec = {'\x08', '\0'};
    job.submit_time = clock.Now();
    job.restart_not_before = clock.Now();
    return job;
  }

  static std::vector<JobEvent> Submitted(Job* job) {
    std::vector<JobEvent> events;
    JobEvent e;
    e.time = job->submit_time;
    e.to = JobState::kQueued;
    e.reason = reason::kSubmitted;
    e.message = "submitted";
    job->history.push_back(AppendJobEvent(job, e, &events));
    return events;
  }

  TempDir dir_;
  sqlite3* handle_ = nullptr;
};

TEST_F(SqliteDurabilityTest, TheStoresConnectionRunsWithSynchronousFull) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_NE(handle_, nullptr);
  EXPECT_EQ(Query("PRAGMA synchronous"), "2") << "2 is FULL; 1 NORMAL, 0 OFF";
  EXPECT_EQ(Query("PRAGMA journal_mode"), "wal");
  // Still so after the store has worked on the connection.
  Job job = SampleJob(1);
  ASSERT_TRUE(store->CreateJob(job, Submitted(&job)).ok());
  EXPECT_EQ(Query("PRAGMA synchronous"), "2");
}

// WAL with FULL syncs the log at every commit (with NORMAL it would not, and
// a power loss could take acknowledged transactions with it): each
// acknowledged CreateJob / UpdateJob synced the -wal file before it returned.
TEST_F(SqliteDurabilityTest, EveryAcknowledgedWriteSyncsTheLog) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  const std::string wal = std::filesystem::canonical(dir_.path()).string() + "/jobs.db-wal";
  constexpr int kJobs = 5;
  for (int i = 1; i <= kJobs; ++i) {
    std::map<std::string, int> counted;
    {
      std::lock_guard<std::mutex> lock(mu);
      syncs = &counted;
    }
    Job job = SampleJob(i);
    const Status created = store->CreateJob(job, Submitted(&job));
    std::vector<JobEvent> events;
    const Status transitioned = TransitionJob(&job, JobState::kAdmitted, reason::kAdmitted,
                                              "placed", job.submit_time, &events);
    const Status updated = store->UpdateJob(job, events);
    {
      std::lock_guard<std::mutex> lock(mu);
      syncs = nullptr;
    }
    ASSERT_TRUE(created.ok()) << created;
    ASSERT_TRUE(transitioned.ok()) << transitioned;
    ASSERT_TRUE(updated.ok()) << updated;
    std::string seen;
    for (const auto& [file, n] : counted) seen += " " + file + ":" + std::to_string(n);
    EXPECT_GE(counted[wal], 2) << "job " << i << ": two commits; syncs per file:" << seen;
  }
}

}  // namespace
}  // namespace tern::scheduler
