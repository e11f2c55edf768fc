// StepPrefetcher<T>: builds the steps of an epoch in order on background
// threads, at most `prefetch` steps ahead of the consumer. The data loaders
// (BatchLoader for classification, DetectionLoader) supply the per-step
// build function; T is their batch type (it may be a StatusOr to carry
// per-batch errors such as an undecodable image).
//
// build(epoch, step) must be thread-safe and depend on (epoch, step) only, so
// the output is identical for any thread count. With 0 threads Next() builds
// on the caller's thread. An exception escaping build() is a bug: Next()
// TERN_CHECK-fails with its text. Driven by a single consumer thread.
#ifndef TERN_WORKER_TRAINER_PREFETCHER_H_
#define TERN_WORKER_TRAINER_PREFETCHER_H_

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/check.h"

namespace tern::trainer {

template <typename T>
class StepPrefetcher {
 public:
  using BuildFn = std::function<T(int64_t epoch, int64_t step)>;

  StepPrefetcher(BuildFn build, int64_t steps_per_epoch, int num_threads,
                 int prefetch)
      : build_(std::move(build)),
        steps_per_epoch_(steps_per_epoch),
        prefetch_(std::max(prefetch, 1)) {
    TERN_CHECK(num_threads >= 0) << num_threads;
    for (int t = 0; t < num_threads; ++t) {
      threads_.emplace_back([this] { WorkerLoop(); });
    }
  }

  // Stops and joins the workers, also mid-epoch.
  ~StepPrefetcher() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  StepPrefetcher(const StepPrefetcher&) = delete;
  StepPrefetcher& operator=(const StepPrefetcher&) = delete;

  // Discards whatever the previous epoch left and starts producing steps
  // [first_step, steps_per_epoch) of `epoch`. Non-blocking.
  void StartEpoch(int64_t epoch, int64_t first_step) {
    TERN_CHECK(first_step >= 0 && first_step <= steps_per_epoch_)
        << "first step " << first_step << " of " << steps_per_epoch_;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++generation_;
      ready_.clear();
      active_ = true;
      epoch_ = epoch;
      next_claim_ = first_step;
      next_emit_ = first_step;
    }
    work_cv_.notify_all();
  }

  // Blocks until the next step is built; std::nullopt once the epoch is
  // exhausted (or before the first StartEpoch).
  std::optional<T> Next() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!active_ || next_emit_ >= steps_per_epoch_) return std::nullopt;
    if (threads_.empty()) {
      const int64_t step = next_emit_++;
      const int64_t epoch = epoch_;
      lock.unlock();
      return build_(epoch, step);
    }
    ready_cv_.wait(lock, [&] { return ready_.count(next_emit_) > 0 || !error_.empty(); });
    TERN_CHECK(error_.empty()) << "data loader worker failed: " << error_;
    auto it = ready_.find(next_emit_);
    std::optional<T> out(std::move(it->second));
    ready_.erase(it);
    ++next_emit_;
    lock.unlock();
    work_cv_.notify_all();
    return out;
  }

 private:
  void WorkerLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      work_cv_.wait(lock, [&] {
        return stop_ || (active_ && next_claim_ < steps_per_epoch_ &&
                         next_claim_ < next_emit_ + prefetch_);
      });
      if (stop_) return;
      const uint64_t generation = generation_;
      const int64_t epoch = epoch_;
      const int64_t step = next_claim_++;
      lock.unlock();
      std::optional<T> built;
      std::string error;
      try {
        built.emplace(build_(epoch, step));
      } catch (const std::exception& e) {
        error = e.what();
      }
      lock.lock();
      if (generation != generation_) continue;  // StartEpoch discarded it
      if (built.has_value()) {
        ready_.emplace(step, std::move(*built));
      } else {
        error_ = error;
      }
      ready_cv_.notify_all();
    }
  }

  const BuildFn build_;
  const int64_t steps_per_epoch_;
  const int64_t prefetch_;

  std::mutex mu_;
  std::condition_variable work_cv_;   // workers wait for a step to claim
  std::condition_variable ready_cv_;  // Next() waits for its step
  bool stop_ = false;
  bool active_ = false;
  uint64_t generation_ = 0;  // bumped by StartEpoch; stale results dropped
  int64_t epoch_ = 0;
  int64_t next_claim_ = 0;  // next step a worker builds
  int64_t next_emit_ = 0;   // next step Next() returns
  std::map<int64_t, T> ready_;
  std::string error_;  // an exception text from a worker (a bug)
  std::vector<std::thread> threads_;
};

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_PREFETCHER_H_
