// TrainerStopper: stops one trainer process with kill escalation: the first
// stop request sends its signal (SIGTERM stops the trainer at once, SIGUSR1
// at a checkpoint) to the trainer's process group, and SIGKILL follows once
// the request's grace has passed. A request before the process exists keeps
// it from starting.
//
// Usage (one per rank):
//   TrainerStopper stopper("[job 1 attempt 1 rank 0/2] ");
//   bool drained;
//   auto child = stopper.Start(options, shutting_down, &drained);  // the rank's thread
//   stopper.Request(SIGTERM, grace, "kill order");    // any thread
//   stopper.EscalateIfDue();                          // the rank's thread, periodically
//   stopper.Detach();                                 // before the process is destroyed
//
// Thread-safe.
#ifndef TERN_WORKER_AGENT_TRAINER_STOPPER_H_
#define TERN_WORKER_AGENT_TRAINER_STOPPER_H_

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "common/status.h"
#include "worker/agent/child_process.h"

namespace tern::agent {

class TrainerStopper {
 public:
  // `log_prefix` starts its log lines.
  explicit TrainerStopper(std::string log_prefix) : prefix_(std::move(log_prefix)) {}

  // Starts the trainer unless a stop was requested or `shutting_down` (the
  // agent drains: nothing starts any more). Then returns CANCELLED and sets
  // *drained when that stop was a drain (the agent shutting down, or
  // SIGUSR1), so the rank reports what a trainer stopped before its loop
  // does. Otherwise what ChildProcess::Start returns; the process is
  // attached: later requests signal it.
  StatusOr<std::unique_ptr<ChildProcess>> Start(const ChildProcess::Options& options,
                                                bool shutting_down, bool* drained);
  // Sends `signal` now (the first request's signal; later ones only bring
  // the SIGKILL deadline forward to now + `grace`). Non-blocking.
  void Request(int signal, std::chrono::milliseconds grace, const std::string& reason);
  // Sends SIGKILL once the deadline has passed (once).
  void EscalateIfDue();
  // Forgets the process (it is about to be destroyed).
  void Detach();

  bool requested() const;
  std::string reason() const;  // of the first request; "" without one

 private:
  using Clock = std::chrono::steady_clock;
  const std::string prefix_;
  mutable std::mutex mu_;
  ChildProcess* child_ = nullptr;  // owned by the rank's thread
  bool requested_ = false;
  bool sigkill_sent_ = false;
  int signal_ = 0;  // the first signal sent, before SIGKILL
  std::string reason_;
  Clock::time_point sigkill_at_ = Clock::time_point::max();
};

}  // namespace tern::agent

#endif  // TERN_WORKER_AGENT_TRAINER_STOPPER_H_
