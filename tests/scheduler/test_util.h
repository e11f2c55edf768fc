// Helpers shared by the scheduler tests: a temp dir per test and a JobStore
// wrapper that fails writes on demand.
#ifndef TERN_TESTS_SCHEDULER_TEST_UTIL_H_
#define TERN_TESTS_SCHEDULER_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "scheduler/job.h"
#include "scheduler/job_store.h"

namespace tern::scheduler {

// Readable gtest failure messages.
inline void PrintTo(JobState state, std::ostream* os) {
  *os << JobStateName(state);
}
inline void PrintTo(RankState state, std::ostream* os) {
  *os << RankStateName(state);
}
inline void PrintTo(JobEventType type, std::ostream* os) {
  *os << JobEventTypeName(type);
}

}  // namespace tern::scheduler

namespace tern::scheduler::testing {

// A fresh directory, removed with everything in it at destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "tern_sched_XXXXXX").string();
    char* made = mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Forwards to `inner`; while fail_writes is set, CreateJob/UpdateJob/Commit
// fail with UNAVAILABLE and write nothing.
class FaultyJobStore final : public JobStore {
 public:
  explicit FaultyJobStore(std::unique_ptr<JobStore> inner)
      : inner_(std::move(inner)) {}
  std::atomic<bool> fail_writes{false};

  Status CreateJob(const Job& job,
                   const std::vector<JobEvent>& events) override {
    if (fail_writes) return UnavailableError("injected: disk full");
    return inner_->CreateJob(job, events);
  }
  Status UpdateJob(const Job& job,
                   const std::vector<JobEvent>& events) override {
    if (fail_writes) return UnavailableError("injected: disk full");
    return inner_->UpdateJob(job, events);
  }
  Status Commit(const std::vector<JobWrite>& writes) override {
    if (fail_writes) return UnavailableError("injected: disk full");
    return inner_->Commit(writes);
  }
  StatusOr<std::vector<Job>> LoadJobs() override { return inner_->LoadJobs(); }
  StatusOr<JobId> HighestJobIdEver() override { return inner_->HighestJobIdEver(); }
  StatusOr<std::vector<JobEvent>> ReadEvents(JobId job, int64_t after_seq, int limit) override {
    return inner_->ReadEvents(job, after_seq, limit);
  }

 private:
  std::unique_ptr<JobStore> inner_;
};

// Forwards to `inner`; Commit (the group writer's call) can be held: while
// `Hold()` is in force a Commit waits inside until Release(), failing with
// UNAVAILABLE if fail_writes was set meanwhile. `delay` slows every Commit.
class GatedJobStore final : public JobStore {
 public:
  explicit GatedJobStore(std::unique_ptr<JobStore> inner) : inner_(std::move(inner)) {}
  std::atomic<bool> fail_writes{false};
  std::atomic<int> commits{0};    // successful Commit calls
  std::atomic<int> committed{0};  // writes they carried
  std::chrono::milliseconds delay{0};

  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = true;
  }
  // Blocks until a Commit waits at the gate; returns its batch size.
  size_t AwaitHeldCommit() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return waiting_ != 0; });
    return waiting_;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = false;
    cv_.notify_all();
  }

  Status CreateJob(const Job& job, const std::vector<JobEvent>& events) override {
    if (fail_writes) return UnavailableError("injected: disk full");
    return inner_->CreateJob(job, events);
  }
  Status UpdateJob(const Job& job, const std::vector<JobEvent>& events) override {
    if (fail_writes) return UnavailableError("injected: disk full");
    return inner_->UpdateJob(job, events);
  }
  Status Commit(const std::vector<JobWrite>& writes) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (held_) {
        waiting_ = writes.size();
        cv_.notify_all();
        cv_.wait(lock, [&] { return !held_; });
        waiting_ = 0;
      }
    }
    if (delay.count() > 0) std::this_thread::sleep_for(delay);
    if (fail_writes) return UnavailableError("injected: disk full");
    Status status = inner_->Commit(writes);
    if (status.ok()) {
      ++commits;
      committed += static_cast<int>(writes.size());
    }
    return status;
  }
  StatusOr<std::vector<Job>> LoadJobs() override { return inner_->LoadJobs(); }
  StatusOr<JobId> HighestJobIdEver() override { return inner_->HighestJobIdEver(); }
  StatusOr<std::vector<JobEvent>> ReadEvents(JobId job, int64_t after_seq,
                                             int limit) override {
    return inner_->ReadEvents(job, after_seq, limit);
  }

 private:
  std::unique_ptr<JobStore> inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;
  size_t waiting_ = 0;
};

}  // namespace tern::scheduler::testing

#endif  // TERN_TESTS_SCHEDULER_TEST_UTIL_H_
