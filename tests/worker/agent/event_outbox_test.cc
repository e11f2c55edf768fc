// EventOutbox: Add never waits for a flush in flight (the supervising thread
// must reap and escalate while ternd is unreachable); events keep their
// order across failed flushes; batching waits for `due` unless a full report
// waits; Close sends the rest, gives up at its deadline or on stop() and
// says how many it dropped.
#include "worker/agent/event_outbox.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace tern::agent {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::deque<v1::TrainerEvent> Logs(int from, int count) {
  std::deque<v1::TrainerEvent> events;
  for (int i = from; i < from + count; ++i)
    events.emplace_back().mutable_log()->set_text(std::to_string(i));
  return events;
}

// A ternd stand-in: records what it accepted; fails while `down`; blocks
// while `stalled` (a call past its deadline on a dropped link).
struct FakeTernd {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> accepted;
  int calls = 0;
  bool down = false;
  bool stalled = false;

  bool Flush(std::deque<v1::TrainerEvent>* events) {
    std::unique_lock<std::mutex> lock(mu);
    ++calls;
    cv.notify_all();
    cv.wait(lock, [&] { return !stalled; });
    if (down) return false;
    for (const auto& e : *events) accepted.push_back(e.log().text());
    events->clear();
    cv.notify_all();
    return true;
  }
  std::vector<std::string> Accepted() {
    std::lock_guard<std::mutex> lock(mu);
    return accepted;
  }
  bool WaitForCalls(int n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(10), [&] { return calls >= n; });
  }
  void Set(bool* flag, bool value) {
    std::lock_guard<std::mutex> lock(mu);
    *flag = value;
    cv.notify_all();
  }
};

std::vector<std::string> Numbers(int from, int count) {
  std::vector<std::string> out;
  for (int i = from; i < from + count; ++i) out.push_back(std::to_string(i));
  return out;
}

TEST(EventOutboxTest, AddNeverWaitsForAStalledFlush) {
  FakeTernd ternd;
  ternd.stalled = true;
  EventOutbox outbox([&](auto* e) { return ternd.Flush(e); }, milliseconds(10));
  auto first = Logs(0, 3);
  outbox.Add(&first, Clock::now());
  EXPECT_TRUE(first.empty());
  ASSERT_TRUE(ternd.WaitForCalls(1));
  const auto start = Clock::now();
  for (int i = 0; i < 100; ++i) {
    auto more = Logs(3 + i, 1);
    outbox.Add(&more, Clock::now());
  }
  EXPECT_LT(Clock::now() - start, milliseconds(500)) << "Add waited for the flush";
  ternd.Set(&ternd.stalled, false);
  EXPECT_EQ(outbox.Close(Clock::now() + std::chrono::seconds(10), [] { return false; }), 0u);
  EXPECT_EQ(ternd.Accepted(), Numbers(0, 103));
}

TEST(EventOutboxTest, FailedFlushesAreRetriedInOrder) {
  FakeTernd ternd;
  ternd.down = true;
  EventOutbox outbox([&](auto* e) { return ternd.Flush(e); }, milliseconds(20));
  auto a = Logs(0, 5);
  outbox.Add(&a, Clock::now());
  ASSERT_TRUE(ternd.WaitForCalls(2));  // retried
  auto b = Logs(5, 5);
  outbox.Add(&b, Clock::now());
  ternd.Set(&ternd.down, false);
  EXPECT_EQ(outbox.Close(Clock::now() + std::chrono::seconds(10), [] { return false; }), 0u);
  EXPECT_EQ(ternd.Accepted(), Numbers(0, 10));
}

TEST(EventOutboxTest, EventsWaitForTheirDueUnlessAFullReportWaits) {
  FakeTernd ternd;
  EventOutbox outbox([&](auto* e) { return ternd.Flush(e); }, milliseconds(20));
  auto later = Logs(0, 2);
  outbox.Add(&later, Clock::now() + std::chrono::hours(1));
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_TRUE(ternd.Accepted().empty()) << "sent before its due";
  auto full = Logs(2, static_cast<int>(kMaxEventsPerReport));
  outbox.Add(&full, Clock::now() + std::chrono::hours(1));
  ASSERT_TRUE(ternd.WaitForCalls(1));
  EXPECT_EQ(ternd.Accepted().size(), kMaxEventsPerReport + 2);
  EXPECT_EQ(outbox.Close(Clock::now(), [] { return false; }), 0u);
}

TEST(EventOutboxTest, CloseGivesUpAtItsDeadlineOrOnStop) {
  {
    FakeTernd ternd;
    ternd.down = true;
    EventOutbox outbox([&](auto* e) { return ternd.Flush(e); }, milliseconds(20));
    auto events = Logs(0, 7);
    outbox.Add(&events, Clock::now() + std::chrono::hours(1));
    const auto start = Clock::now();
    EXPECT_EQ(outbox.Close(start + milliseconds(300), [] { return false; }), 7u);
    EXPECT_GE(Clock::now() - start, milliseconds(300));
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
    EXPECT_GE(ternd.calls, 2) << "retried until the deadline";
    EXPECT_EQ(outbox.Close(Clock::now(), [] { return false; }), 0u) << "idempotent";
  }
  {
    FakeTernd ternd;
    ternd.down = true;
    EventOutbox outbox([&](auto* e) { return ternd.Flush(e); }, milliseconds(20));
    auto events = Logs(0, 4);
    outbox.Add(&events, Clock::now() + std::chrono::hours(1));
    EXPECT_EQ(outbox.Close(Clock::now() + std::chrono::hours(1), [] { return true; }), 4u);
    EXPECT_EQ(ternd.calls, 1) << "one try, then stop";
  }
}

TEST(EventOutboxTest, HeldEventsStayBoundedDroppingLogLinesFirst) {
  FakeTernd ternd;
  ternd.down = true;
  EventOutbox outbox([&](auto* e) { return ternd.Flush(e); }, milliseconds(20));
  std::deque<v1::TrainerEvent> events;
  events.emplace_back().mutable_finished();  // kept: not a log line or sample
  for (auto& e : Logs(0, static_cast<int>(kMaxPendingEvents) + 50)) events.push_back(e);
  outbox.Add(&events, Clock::now() + std::chrono::hours(1));
  ternd.Set(&ternd.down, false);
  EXPECT_EQ(outbox.Close(Clock::now() + std::chrono::seconds(10), [] { return false; }), 0u);
  const auto accepted = ternd.Accepted();
  ASSERT_EQ(accepted.size(), kMaxPendingEvents);
  EXPECT_EQ(accepted.front(), "") << "the finished event survives the trim";
  EXPECT_EQ(accepted[1], "51") << "the oldest log lines went first";
}

}  // namespace
}  // namespace tern::agent
