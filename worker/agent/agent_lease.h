// AgentLease: the agent's registration with ternd, as state: the lease id,
// its TTL and heartbeat interval, when it was last renewed, whether it is
// valid and, once ternd no longer knows it (it restarted), whether the agent
// is rejoining with its trainers kept. generation() counts registrations,
// so a late report of an old lease's loss changes nothing.
//
// Usage (agent.cc, under the Agent's mutex):
//   lease.Registered(register_response, Clock::now());
//   lease.Renewed(heartbeat_response, sent);      // a heartbeat got through
//   if (lease.Lose(generation, keep_trainers)) ...  // FAILED_PRECONDITION, TTL past
//
// Not thread-safe: the Agent guards it with the mutex that also guards its
// trainers, so that a registration and the ranks it lists change together.
#ifndef TERN_WORKER_AGENT_AGENT_LEASE_H_
#define TERN_WORKER_AGENT_AGENT_LEASE_H_

#include <chrono>
#include <string>

#include "tern/v1/worker_service.pb.h"

namespace tern::agent {

class AgentLease {
 public:
  using Clock = std::chrono::steady_clock;

  const std::string& id() const { return id_; }
  bool valid() const { return valid_; }
  // Lost while ternd no longer knew it, trainers kept for the next Register.
  bool rejoining() const { return rejoining_; }
  int generation() const { return generation_; }  // registrations so far
  std::chrono::milliseconds ttl() const { return ttl_; }
  std::chrono::milliseconds heartbeat_interval() const { return heartbeat_interval_; }
  Clock::time_point last_renewed() const { return last_renewed_; }
  // ternd expires the lease no earlier than this without a renewal.
  Clock::time_point deadline() const { return last_renewed_ + ttl_; }
  std::chrono::milliseconds TimeLeft() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(deadline() - Clock::now());
  }

  // A Register answered at `now`: a new, valid lease (unset durations: a
  // 15 s TTL, a heartbeat every third of it). Returns whether the agent was
  // rejoining (it no longer is).
  bool Registered(const v1::RegisterResponse& response, Clock::time_point now);
  // A Heartbeat sent at `sent` got through (unset durations keep theirs).
  void Renewed(const v1::HeartbeatResponse& response, Clock::time_point sent);
  // The lease of `generation` is lost; `keep_trainers`: ternd answered but
  // no longer knows it (rejoin). False (nothing changes) when that lease is
  // not the current valid one.
  bool Lose(int generation, bool keep_trainers);
  void StopRejoining() { rejoining_ = false; }  // the trainers are stopped
  void End() { valid_ = false; }                // deregistered

 private:
  std::string id_;
  bool valid_ = false;
  bool rejoining_ = false;
  int generation_ = 0;
  std::chrono::milliseconds ttl_{15000};
  std::chrono::milliseconds heartbeat_interval_{5000};
  Clock::time_point last_renewed_;
};

}  // namespace tern::agent

#endif  // TERN_WORKER_AGENT_AGENT_LEASE_H_
