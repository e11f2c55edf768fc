// LeaderElection: which one of several ternd processes sharing one job store
// leads. The leader runs the scheduler and answers calls; the others are
// standbys that refuse calls (NOT_LEADER, naming the leader's address) and
// take over when the leader's lease runs out.
//
// The lease lives in the store itself and its expiry is judged by the
// store's clock, so the ternd hosts' clocks do not matter. Every change of
// holder raises `epoch`, the fencing token: a store opened for the leader
// with its epoch refuses every write once a later epoch exists (ABORTED,
// reason LEADERSHIP_LOST), so an old leader that was paused past its lease
// cannot write after a standby took over. Only a store shared by several
// processes needs this (PostgreSQL); the SQLite store has one process and no
// election. Implementations are thread-safe.
#ifndef TERN_SCHEDULER_LEADER_ELECTION_H_
#define TERN_SCHEDULER_LEADER_ELECTION_H_

#include <chrono>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace tern::scheduler {

struct Leadership {
  bool held = false;     // the caller holds the lease, with `epoch`
  int64_t epoch = 0;     // 0: nobody ever led
  std::string holder;    // the holder's id (the caller's when held)
  std::string address;   // the holder's advertised gRPC address
  bool expired = false;  // the holder's lease has run out (nobody leads)
};

class LeaderElection {
 public:
  virtual ~LeaderElection() = default;

  // Takes the lease for `ttl` when nobody holds it or its holder's lease has
  // expired (or the holder is `holder` itself, restarted), with an epoch one
  // higher than any before; held=false and the current holder otherwise.
  virtual StatusOr<Leadership> TryAcquire(const std::string& holder, const std::string& address,
                                          std::chrono::milliseconds ttl) = 0;

  // Extends the lease taken with `epoch` to `ttl` from now, even when it
  // had expired, as long as nobody took it since. ABORTED (reason
  // LEADERSHIP_LOST) when a later epoch exists.
  virtual Status Renew(int64_t epoch, std::chrono::milliseconds ttl) = 0;

  // Ends the lease taken with `epoch` now, so that a standby takes over at
  // once (a clean shutdown). OK when it is no longer ours.
  virtual Status Release(int64_t epoch) = 0;

  // Who leads, without taking anything (held is always false).
  virtual StatusOr<Leadership> Current() = 0;
};

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_LEADER_ELECTION_H_
