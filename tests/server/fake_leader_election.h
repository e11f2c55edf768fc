// FakeLeaderElection: scheduler::LeaderElection in memory, for tests that run
// several Ternd in one process (the real one keeps its lease in PostgreSQL).
// The same contract: one holder at a time, a lease that expires after its
// ttl (steady clock), an epoch raised at every acquisition, Renew ABORTED
// (reason LEADERSHIP_LOST) once a later epoch exists. Tests can also take
// the lease away (TakeOver) or make renewals fail (FailRenewals).
// Thread-safe.
#ifndef TERN_TESTS_SERVER_FAKE_LEADER_ELECTION_H_
#define TERN_TESTS_SERVER_FAKE_LEADER_ELECTION_H_

#include <chrono>
#include <mutex>
#include <optional>
#include <string>

#include "common/error_reasons.h"
#include "scheduler/leader_election.h"

namespace tern::server::testing {

class FakeLeaderElection final : public scheduler::LeaderElection {
 public:
  using Clock = std::chrono::steady_clock;

  StatusOr<scheduler::Leadership> TryAcquire(const std::string& holder, const std::string& address,
                                             std::chrono::milliseconds ttl) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++acquire_calls_;
    const bool free = holder_.empty() || Clock::now() >= expiry_ || holder_ == holder;
    if (free) {
      ++epoch_;
      holder_ = holder;
      address_ = address;
      expiry_ = Clock::now() + ttl;
    }
    return LeadershipLocked(free ? holder : "");
  }

  Status Renew(int64_t epoch, std::chrono::milliseconds ttl) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (epoch != epoch_) return Lost(epoch);
    if (renew_failure_) return *renew_failure_;
    expiry_ = Clock::now() + ttl;
    return OkStatus();
  }

  Status Release(int64_t epoch) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++release_calls_;
    if (epoch == epoch_) {
      holder_.clear();
      address_.clear();
      expiry_ = Clock::now();
    }
    return OkStatus();
  }

  StatusOr<scheduler::Leadership> Current() override {
    std::lock_guard<std::mutex> lock(mu_);
    return LeadershipLocked("");
  }

  // Another process takes the lease now (a new epoch): the holder's next
  // Renew is ABORTED.
  void TakeOver(const std::string& holder, const std::string& address) {
    std::lock_guard<std::mutex> lock(mu_);
    ++epoch_;
    holder_ = holder;
    address_ = address;
    expiry_ = Clock::now() + std::chrono::hours(1);
  }
  // Every Renew of the current epoch returns `status` (nullopt: works again).
  void FailRenewals(std::optional<Status> status) {
    std::lock_guard<std::mutex> lock(mu_);
    renew_failure_ = std::move(status);
  }
  int64_t epoch() const {
    std::lock_guard<std::mutex> lock(mu_);
    return epoch_;
  }
  int release_calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return release_calls_;
  }

 private:
  scheduler::Leadership LeadershipLocked(const std::string& caller) const {
    scheduler::Leadership out;
    out.held = !caller.empty() && caller == holder_;
    out.epoch = epoch_;
    out.holder = holder_;
    out.address = address_;
    out.expired = holder_.empty() || Clock::now() >= expiry_;
    return out;
  }
  static Status Lost(int64_t epoch) {
    return Status(StatusCode::kAborted,
                  "epoch " + std::to_string(epoch) + " no longer holds the lease")
        .WithReason(error_reason::kLeadershipLost);
  }

  mutable std::mutex mu_;
  int64_t epoch_ = 0;
  std::string holder_;
  std::string address_;
  Clock::time_point expiry_{};
  std::optional<Status> renew_failure_;
  int acquire_calls_ = 0;
  int release_calls_ = 0;
};

}  // namespace tern::server::testing

#endif  // TERN_TESTS_SERVER_FAKE_LEADER_ELECTION_H_
