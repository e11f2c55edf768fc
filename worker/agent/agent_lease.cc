#include "worker/agent/agent_lease.h"

#include <google/protobuf/util/time_util.h>

namespace tern::agent {
namespace {

using std::chrono::milliseconds;

milliseconds FromDuration(const google::protobuf::Duration& d, milliseconds fallback) {
  const int64_t ms = google::protobuf::util::TimeUtil::DurationToMilliseconds(d);
  return ms > 0 ? milliseconds(ms) : fallback;
}

}  // namespace

bool AgentLease::Registered(const v1::RegisterResponse& response, Clock::time_point now) {
  id_ = response.lease_id();
  ttl_ = FromDuration(response.lease_ttl(), milliseconds(15000));
  heartbeat_interval_ = FromDuration(response.heartbeat_interval(), ttl_ / 3);
  last_renewed_ = now;
  valid_ = true;
  ++generation_;
  const bool rejoined = rejoining_;
  rejoining_ = false;
  return rejoined;
}

void AgentLease::Renewed(const v1::HeartbeatResponse& response, Clock::time_point sent) {
  last_renewed_ = sent;
  ttl_ = FromDuration(response.lease_ttl(), ttl_);
  heartbeat_interval_ = FromDuration(response.heartbeat_interval(), heartbeat_interval_);
}

bool AgentLease::Lose(int generation, bool keep_trainers) {
  if (generation != generation_ || !valid_) return false;
  valid_ = false;
  rejoining_ = keep_trainers;
  return true;
}

}  // namespace tern::agent
