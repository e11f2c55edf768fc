// SqliteJobStore's durability (scheduler/sqlite_job_store.h: WAL with
// synchronous=FULL, so that an acknowledged change survives a power loss).
// synchronous is a property of a connection, not of the file, so a second
// connection cannot see it: this binary defines sqlite3_open_v2 itself
// (taking precedence over libsqlite3's for the store's call) to keep the
// store's handle and to set synchronous=OFF on it before the store's own
// set-up runs, as a build with another default would; and it defines fsync
// and fdatasync to count the syncs of each file. Both checks fail if the
// store leaves synchronous to the library. A last test SIGKILLs a process
// in the middle of group-committed submissions.
#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "scheduler/clock.h"
#include "scheduler/scheduler.h"
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

// Lines "ID KEY" of `path` (the submissions a child acknowledged).
std::map<JobId, std::string> ReadAcks(const std::string& path) {
  std::map<JobId, std::string> acks;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    JobId id = 0;
    std::string key;
    if (fields >> id >> key) acks[id] = key;  // a torn last line is skipped
  }
  return acks;
}

// A ternd killed while many submissions are being group-committed loses only
// submissions it had not acknowledged: every acknowledged one is in the store,
// once, with its key and its SUBMITTED event.
TEST_F(SqliteDurabilityTest, KilledMidBatchLosesOnlyUnacknowledgedSubmissions) {
  const std::string acks_path = (dir_.path() / "acks").string();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The child: a scheduler with group commit, 16 submitters; each writes
    // "ID KEY" to the acks file once SubmitJob returned OK. No gtest here.
    const int acks = ::open(acks_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    StatusOr<std::unique_ptr<SqliteJobStore>> store = SqliteJobStore::Open(DbPath());
    if (acks < 0 || !store.ok()) _exit(3);
    SchedulerOptions options;
    options.commit_mode = CommitMode::kGroup;
    StatusOr<std::unique_ptr<Scheduler>> scheduler =
        Scheduler::Create(options, std::move(store).value(), nullptr);
    if (!scheduler.ok()) _exit(4);
    std::vector<std::thread> submitters;
    for (int t = 0; t < 16; ++t) {
      submitters.emplace_back([&, t] {
        for (int i = 0;; ++i) {
          JobRequest request;
          request.owner = "alice";
          request.idempotency_key = "t" + std::to_string(t) + "-" + std::to_string(i);
          request.spec = "spec";
          StatusOr<SubmitResult> r = (*scheduler)->SubmitJob(request);
          if (!r.ok()) _exit(5);
          const std::string line = std::to_string(r->job.id) + " " + request.idempotency_key + "\n";
          if (::write(acks, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
            _exit(6);
          }
        }
      });
    }
    for (std::thread& t : submitters) t.join();
    _exit(0);
  }
  // Kill it once it has acknowledged a few hundred, while it keeps going.
  size_t seen = 0;
  int status = 0;
  for (int spin = 0; spin < 3000 && seen < 300; ++spin) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    seen = ReadAcks(acks_path).size();
    ASSERT_EQ(waitpid(child, &status, WNOHANG), 0) << "the child ended early: " << status;
  }
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  const std::map<JobId, std::string> acked = ReadAcks(acks_path);
  ASSERT_GE(acked.size(), 300u);

  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  StatusOr<std::vector<Job>> jobs = store->LoadJobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  std::map<JobId, const Job*> stored;
  std::set<std::string> keys;
  for (const Job& job : *jobs) {
    stored[job.id] = &job;
    EXPECT_TRUE(keys.insert(job.idempotency_key).second) << job.idempotency_key;
    ASSERT_EQ(job.history.size(), 1u) << "job " << job.id;
    EXPECT_EQ(job.history[0].reason, "SUBMITTED");
    EXPECT_EQ(job.last_event_seq, 1);
  }
  size_t lost = 0;
  for (const auto& [id, key] : acked) {
    auto it = stored.find(id);
    if (it == stored.end()) {
      ++lost;
      continue;
    }
    EXPECT_EQ(it->second->idempotency_key, key) << "job " << id;
  }
  EXPECT_EQ(lost, 0u) << "acknowledged submissions missing from the store";
  // Ids are handed out in order: the stored ones are 1..N without gaps.
  EXPECT_EQ(stored.begin()->first, 1);
  EXPECT_EQ(stored.rbegin()->first, static_cast<JobId>(stored.size()));
  std::cout << acked.size() << " acknowledged, " << stored.size() << " stored when killed\n";
}

}  // namespace
}  // namespace tern::scheduler
