#include "scheduler/postgres_leader_election.h"

#include <utility>

#include "common/error_reasons.h"
#include "scheduler/postgres_connection.h"

namespace tern::scheduler {
namespace {

Status CheckTtl(std::chrono::milliseconds ttl) {
  if (ttl.count() <= 0) return InvalidArgumentError("ttl: must be > 0");
  return OkStatus();
}

}  // namespace

PostgresLeaderElection::PostgresLeaderElection(std::unique_ptr<pg::Connection> connection)
    : connection_(std::move(connection)) {}

PostgresLeaderElection::~PostgresLeaderElection() = default;

StatusOr<std::unique_ptr<PostgresLeaderElection>> PostgresLeaderElection::Open(
    const std::string& url) {
  TERN_ASSIGN_OR_RETURN(std::unique_ptr<pg::Connection> connection, pg::Connection::Open(url));
  return std::unique_ptr<PostgresLeaderElection>(new PostgresLeaderElection(std::move(connection)));
}

StatusOr<Leadership> PostgresLeaderElection::TryAcquire(const std::string& holder,
                                                        const std::string& address,
                                                        std::chrono::milliseconds ttl) {
  if (holder.empty()) return InvalidArgumentError("holder: required");
  TERN_RETURN_IF_ERROR(CheckTtl(ttl));
  std::lock_guard<std::mutex> lock(mu_);
  // Free (nobody ever led, or the lease ran out) or ours from before a
  // restart: take it with the next epoch.
  TERN_ASSIGN_OR_RETURN(
      pg::Result taken,
      connection_->Exec("UPDATE leader_lease SET epoch = epoch + 1, holder = $1, address = $2, "
                        "expires_at = clock_timestamp() + $3::float8 * interval '1 millisecond' "
                        "WHERE epoch = 0 OR expires_at <= clock_timestamp() OR holder = $1 "
                        "RETURNING epoch",
                        pg::Params().Text(holder).Text(address).Int(ttl.count())));
  if (taken.rows() == 1) {
    Leadership l;
    l.held = true;
    l.epoch = taken.Int(0, 0);
    l.holder = holder;
    l.address = address;
    return l;
  }
  return CurrentLocked();
}

Status PostgresLeaderElection::Renew(int64_t epoch, std::chrono::milliseconds ttl) {
  TERN_RETURN_IF_ERROR(CheckTtl(ttl));
  std::lock_guard<std::mutex> lock(mu_);
  TERN_ASSIGN_OR_RETURN(
      pg::Result renewed,
      connection_->Exec("UPDATE leader_lease SET expires_at = clock_timestamp() + "
                        "$2::float8 * interval '1 millisecond' WHERE epoch = $1",
                        pg::Params().Int(epoch).Int(ttl.count())));
  if (renewed.affected() == 1) return OkStatus();
  TERN_ASSIGN_OR_RETURN(Leadership now, CurrentLocked());
  return AbortedError("leadership lost: epoch " + std::to_string(epoch) + " was replaced by " +
                      std::to_string(now.epoch) + " (holder \"" + now.holder + "\" at \"" +
                      now.address + "\")")
      .WithReason(error_reason::kLeadershipLost)
      .WithMetadata("leader_address", now.expired ? "" : now.address);
}

Status PostgresLeaderElection::Release(int64_t epoch) {
  std::lock_guard<std::mutex> lock(mu_);
  return connection_
      ->Exec(
          "UPDATE leader_lease SET expires_at = least(expires_at, clock_timestamp()) "
          "WHERE epoch = $1",
          pg::Params().Int(epoch))
      .status();
}

StatusOr<Leadership> PostgresLeaderElection::Current() {
  std::lock_guard<std::mutex> lock(mu_);
  return CurrentLocked();
}

StatusOr<Leadership> PostgresLeaderElection::CurrentLocked() {
  TERN_ASSIGN_OR_RETURN(pg::Result r,
                        connection_->Exec("SELECT epoch, holder, address, "
                                          "epoch = 0 OR expires_at <= clock_timestamp() "
                                          "FROM leader_lease"));
  if (r.rows() != 1) {
    return FailedPreconditionError("leader_lease holds " + std::to_string(r.rows()) +
                                   " rows, not 1");
  }
  Leadership l;
  l.epoch = r.Int(0, 0);
  l.holder = r.Text(0, 1);
  l.address = r.Text(0, 2);
  l.expired = r.Text(0, 3) == "t";
  return l;
}

}  // namespace tern::scheduler
