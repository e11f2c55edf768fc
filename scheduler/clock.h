// Clock: where the scheduler reads the time (leases, aging, restart backoff).
//
// Production code passes SystemClock; tests pass FakeClock and move time by
// hand, so no test sleeps. Both are thread-safe.
#ifndef TERN_SCHEDULER_CLOCK_H_
#define TERN_SCHEDULER_CLOCK_H_

#include <atomic>
#include <chrono>
#include <cstdint>

namespace tern::scheduler {

// Wall-clock time: it is persisted (submit times, event times) and shown to
// users.
using TimePoint = std::chrono::system_clock::time_point;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
};

class SystemClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::system_clock::now(); }
};

// Time stands still until Advance() or Set() moves it.
class FakeClock final : public Clock {
 public:
  // Starts at 2024-01-01T00:00:00Z unless told otherwise.
  explicit FakeClock(
      TimePoint start = TimePoint(std::chrono::seconds(1704067200)));
  TimePoint Now() const override;
  void Advance(std::chrono::microseconds delta);
  void Set(TimePoint now);

 private:
  std::atomic<int64_t> now_us_;
};

// Microseconds since the Unix epoch, the form the store persists.
int64_t ToUnixMicros(TimePoint t);
TimePoint FromUnixMicros(int64_t us);

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_CLOCK_H_
