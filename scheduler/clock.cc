#include "scheduler/clock.h"

namespace tern::scheduler {

FakeClock::FakeClock(TimePoint start) : now_us_(ToUnixMicros(start)) {}

TimePoint FakeClock::Now() const { return FromUnixMicros(now_us_.load()); }

void FakeClock::Advance(std::chrono::microseconds delta) {
  now_us_.fetch_add(delta.count());
}

void FakeClock::Set(TimePoint now) { now_us_.store(ToUnixMicros(now)); }

int64_t ToUnixMicros(TimePoint t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             t.time_since_epoch())
      .count();
}

TimePoint FromUnixMicros(int64_t us) {
  return TimePoint(std::chrono::duration_cast<TimePoint::duration>(
      std::chrono::microseconds(us)));
}

}  // namespace tern::scheduler
