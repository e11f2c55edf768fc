#include "worker/agent/trainer_stopper.h"

#include <signal.h>

#include <algorithm>

#include "common/logging.h"

namespace tern::agent {

StatusOr<std::unique_ptr<ChildProcess>> TrainerStopper::Start(const ChildProcess::Options& options,
                                                              bool shutting_down, bool* drained) {
  std::lock_guard<std::mutex> lock(mu_);
  if (requested_ || shutting_down) {
    *drained = !requested_ || signal_ == SIGUSR1;
    return CancelledError("killed before it started (" +
                          (requested_ ? reason_ : "agent shutting down") + ")");
  }
  StatusOr<std::unique_ptr<ChildProcess>> started = ChildProcess::Start(options);
  if (started.ok()) child_ = started->get();
  return started;
}

void TrainerStopper::Request(int signal, std::chrono::milliseconds grace,
                             const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!requested_) {
    requested_ = true;
    reason_ = reason;
    signal_ = signal;
    TERN_LOG(INFO) << prefix_ << "stopping trainer (" << reason << ") with " << SignalName(signal)
                   << ", SIGKILL after " << grace.count() << " ms";
  }
  sigkill_at_ = std::min(sigkill_at_, Clock::now() + grace);
  if (child_) child_->SignalGroup(signal);
  // A rank whose process is not started yet sees requested_ and stops.
}

void TrainerStopper::EscalateIfDue() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!requested_ || sigkill_sent_ || Clock::now() < sigkill_at_ || !child_) return;
  TERN_LOG(WARNING) << prefix_ << "trainer still runs after " << SignalName(signal_)
                    << "; sending SIGKILL";
  child_->SignalGroup(SIGKILL);
  sigkill_sent_ = true;
}

void TrainerStopper::Detach() {
  std::lock_guard<std::mutex> lock(mu_);
  child_ = nullptr;
}

bool TrainerStopper::requested() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requested_;
}

std::string TrainerStopper::reason() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reason_;
}

}  // namespace tern::agent
