// Helpers shared by the scheduler tests: a temp dir per test and a JobStore
// wrapper that fails writes on demand.
#ifndef TERN_TESTS_SCHEDULER_TEST_UTIL_H_
#define TERN_TESTS_SCHEDULER_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <ostream>
#include <string>
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

// Forwards to `inner`; while fail_writes is set, CreateJob/UpdateJob fail
// with UNAVAILABLE and write nothing.
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
  StatusOr<std::vector<Job>> LoadJobs() override { return inner_->LoadJobs(); }
  StatusOr<std::vector<JobEvent>> ReadEvents(JobId job, int64_t after_seq,
                                             int limit) override {
    return inner_->ReadEvents(job, after_seq, limit);
  }

 private:
  std::unique_ptr<JobStore> inner_;
};

}  // namespace tern::scheduler::testing

#endif  // TERN_TESTS_SCHEDULER_TEST_UTIL_H_
