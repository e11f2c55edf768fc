// EventOutbox: one rank's trainer events on their way to ternd, sent by the
// outbox's own thread, so that the rank's supervising thread (which reads
// the trainer's output, reaps it and escalates its stop) never waits on the
// network. A unary call to a ternd behind a dropped link can block well past
// its deadline once HTTP/2 flow control stalls its send (seen with a
// ReportProgress of a hundred events: 7 s against a 2 s deadline), and a
// trainer that died meanwhile stayed an unreaped zombie, its SIGKILL late.
//
// Events keep their order. At most kMaxPendingEvents wait (TrimPending: log
// lines and progress samples go first, the oldest first). A flush that fails
// is retried `retry_after` later with what it left.
//
// Usage (one per rank, in its supervising thread):
//   EventOutbox outbox([&](std::deque<v1::TrainerEvent>* e) { return Flush(rank, e); },
//                      std::chrono::seconds(1));
//   outbox.Add(&events_read, due);          // never blocks on a flush
//   size_t dropped = outbox.Close(give_up, [&] { return ShuttingDown(); });
// Close sends what is left (at least one try), retrying until `give_up` or
// `stop()`, then joins the thread: it waits for a flush in flight.
#ifndef TERN_WORKER_AGENT_EVENT_OUTBOX_H_
#define TERN_WORKER_AGENT_EVENT_OUTBOX_H_

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "tern/v1/worker_service.pb.h"

namespace tern::agent {

inline constexpr size_t kMaxEventsPerReport = 1000;  // WorkerService limit per call
inline constexpr size_t kMaxPendingEvents = 5000;    // held while ternd is unreachable

// Drops events until at most kMaxPendingEvents remain: log lines and progress
// samples first, the oldest of them first.
void TrimPending(std::deque<v1::TrainerEvent>* pending);

class EventOutbox {
 public:
  using Clock = std::chrono::steady_clock;
  // Sends events from the front, erasing what was sent (or written off);
  // false: try again later with what is left.
  using FlushFn = std::function<bool(std::deque<v1::TrainerEvent>*)>;

  EventOutbox(FlushFn flush, std::chrono::milliseconds retry_after);
  ~EventOutbox();  // Close(now, ...) unless closed: one more try, then dropped
  EventOutbox(const EventOutbox&) = delete;
  EventOutbox& operator=(const EventOutbox&) = delete;

  // Moves `events` (emptied) behind those waiting; they go out by `due` at
  // the latest (the earliest due of those waiting wins; at once when a full
  // report, kMaxEventsPerReport, waits). Never waits for a flush.
  void Add(std::deque<v1::TrainerEvent>* events, Clock::time_point due);

  // No more events: sends the rest, retrying until `give_up` or stop();
  // returns how many were dropped. Idempotent (later calls return 0).
  size_t Close(Clock::time_point give_up, const std::function<bool()>& stop);

 private:
  void Run();

  const FlushFn flush_;
  const std::chrono::milliseconds retry_after_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::TrainerEvent> pending_;              // guarded by mu_
  Clock::time_point due_ = Clock::time_point::max();  // guarded by mu_
  bool closing_ = false;                              // guarded by mu_
  Clock::time_point give_up_;                         // guarded by mu_
  std::function<bool()> stop_;                        // guarded by mu_
  size_t dropped_ = 0;                                // guarded by mu_
  std::thread thread_;
};

}  // namespace tern::agent

#endif  // TERN_WORKER_AGENT_EVENT_OUTBOX_H_
