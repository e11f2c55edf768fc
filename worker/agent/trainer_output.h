// TrainerOutput: the stdout/stderr pump of one trainer process. Reads its
// non-blocking pipes into lines (a stdout line longer than 1 MiB is cut),
// parses stdout lines into tern.v1 events (trainer_protocol/trainer_events.h)
// and updates the agent's per-rank tern_job_* series from them, turns stderr
// lines into `log` events (when relayed) and keeps the last of them for the
// exit report.
//
// Usage (the rank's thread):
//   TrainerOutput out(spec, child->pid(), options, &metrics, job, rank);
//   while (...) {
//     if (out.Poll(*child, 100ms)) flush_due = std::min(flush_due, out.Read(*child, &pending));
//   }
//   out.failed_reason(), out.stderr_tail()     // for ReportExit
//
// Not thread-safe: one object belongs to the thread that reads the pipes.
#ifndef TERN_WORKER_AGENT_TRAINER_OUTPUT_H_
#define TERN_WORKER_AGENT_TRAINER_OUTPUT_H_

#include <chrono>
#include <deque>
#include <string>
#include <vector>

#include "tern/v1/worker_service.pb.h"
#include "trainer_protocol/trainer_events.h"
#include "worker/agent/child_process.h"
#include "worker/agent/trainer_metrics.h"

namespace tern::agent {

// Splits a non-blocking pipe's bytes into lines.
class LineReader {
 public:
  // Reads what is available; appends complete lines to `lines`. Returns
  // false at EOF (or on a read error).
  bool Read(int fd, std::vector<std::string>* lines);

 private:
  std::string partial_;
};

class TrainerOutput {
 public:
  struct Options {
    int rank = 0;                                   // the rank's number, in `log` events
    bool relay_logs = true;                         // stderr lines as `log` events
    int stderr_tail_lines = 20;                     // kept for stderr_tail()
    std::chrono::milliseconds flush_interval{250};  // how long events may wait
  };
  // `metrics` is not owned and must outlive this object; `job` and
  // `rank_label` label its series.
  TrainerOutput(const v1::JobSpec& spec, int pid, Options options, TrainerMetrics* metrics,
                std::string job, std::string rank_label);

  // Waits up to `timeout` for either open pipe to be readable (sleeps when
  // both are closed). Blocks; false when nothing is to be read.
  bool Poll(const ChildProcess& child, std::chrono::milliseconds timeout) const;
  // Reads what both pipes hold, closing a pipe at EOF, and appends the
  // events to *pending. Returns when they should be sent: now for started,
  // finished, failed and checkpoint lines (and a full batch), after
  // flush_interval for the others; time_point::max() for none.
  std::chrono::steady_clock::time_point Read(ChildProcess& child,
                                             std::deque<v1::TrainerEvent>* pending);

  // "CODE: reason" of the trainer's `failed` event; "" without one.
  const std::string& failed_reason() const { return failed_reason_; }
  // The last stderr_tail_lines stderr lines, valid UTF-8.
  const std::deque<std::string>& stderr_tail() const { return tail_; }

 private:
  const Options options_;
  trainer::TrainerEventParser parser_;
  TrainerMetrics* metrics_;
  const std::string job_, rank_label_;
  TrainerMetrics::Window metrics_window_;  // the step-time interval
  LineReader out_reader_, err_reader_;
  std::string failed_reason_;
  std::deque<std::string> tail_;
};

}  // namespace tern::agent

#endif  // TERN_WORKER_AGENT_TRAINER_OUTPUT_H_
