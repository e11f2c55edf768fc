// PostgresLeaderElection: LeaderElection (leader_election.h) over one row,
// leader_lease, in the PostgreSQL database of PostgresJobStore.
//
//   auto election = PostgresLeaderElection::Open(url);
//   StatusOr<Leadership> me = (*election)->TryAcquire("ternd-a", "10.0.0.5:7070", 15s);
//   if (me.ok() && me->held) { open the store with fence_epoch = me->epoch; Renew every ttl/3 }
//
// Each call is one statement, atomic on its own (a row lock orders
// concurrent ones); expiry is judged by the database's clock_timestamp(), so
// the ternd hosts' clocks do not matter. It opens its own connection (a
// renewal never waits behind the store's queries), creating the schema as
// PostgresJobStore::Open does. A lost connection makes that call
// UNAVAILABLE; the next one connects again. Thread-safe (one mutex).
#ifndef TERN_SCHEDULER_POSTGRES_LEADER_ELECTION_H_
#define TERN_SCHEDULER_POSTGRES_LEADER_ELECTION_H_

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "common/status.h"
#include "scheduler/leader_election.h"

namespace tern::scheduler {

namespace pg {
class Connection;  // postgres_connection.h
}

class PostgresLeaderElection final : public LeaderElection {
 public:
  // Connects and creates or checks the schema; errors as
  // PostgresJobStore::Open's.
  static StatusOr<std::unique_ptr<PostgresLeaderElection>> Open(const std::string& url);
  ~PostgresLeaderElection() override;

  StatusOr<Leadership> TryAcquire(const std::string& holder, const std::string& address,
                                  std::chrono::milliseconds ttl) override;
  Status Renew(int64_t epoch, std::chrono::milliseconds ttl) override;
  Status Release(int64_t epoch) override;
  StatusOr<Leadership> Current() override;

 private:
  explicit PostgresLeaderElection(std::unique_ptr<pg::Connection> connection);
  StatusOr<Leadership> CurrentLocked();

  std::mutex mu_;
  std::unique_ptr<pg::Connection> connection_;  // guarded by mu_
};

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_POSTGRES_LEADER_ELECTION_H_
