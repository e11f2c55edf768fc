// AgentLease: registration, renewal, loss and rejoin as state.
#include "worker/agent/agent_lease.h"

#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>

namespace tern::agent {
namespace {

using google::protobuf::util::TimeUtil;
using std::chrono::milliseconds;
using Clock = AgentLease::Clock;

v1::RegisterResponse Response(const std::string& id, int64_t ttl_ms, int64_t interval_ms) {
  v1::RegisterResponse r;
  r.set_lease_id(id);
  if (ttl_ms > 0) *r.mutable_lease_ttl() = TimeUtil::MillisecondsToDuration(ttl_ms);
  if (interval_ms > 0) {
    *r.mutable_heartbeat_interval() = TimeUtil::MillisecondsToDuration(interval_ms);
  }
  return r;
}

TEST(AgentLeaseTest, RegisteringMakesANewValidGeneration) {
  AgentLease lease;
  EXPECT_FALSE(lease.valid());
  EXPECT_EQ(lease.generation(), 0);
  const Clock::time_point now = Clock::now();
  EXPECT_FALSE(lease.Registered(Response("l1", 9000, 0), now));
  EXPECT_TRUE(lease.valid());
  EXPECT_EQ(lease.id(), "l1");
  EXPECT_EQ(lease.generation(), 1);
  EXPECT_EQ(lease.ttl(), milliseconds(9000));
  EXPECT_EQ(lease.heartbeat_interval(), milliseconds(3000));  // a third of the TTL
  EXPECT_EQ(lease.deadline(), now + milliseconds(9000));
  lease.Registered(Response("l2", 0, 0), now);  // unset: 15 s, 5 s
  EXPECT_EQ(lease.generation(), 2);
  EXPECT_EQ(lease.ttl(), milliseconds(15000));
  EXPECT_EQ(lease.heartbeat_interval(), milliseconds(5000));
}

TEST(AgentLeaseTest, RenewalMovesTheDeadlineAndKeepsUnsetDurations) {
  AgentLease lease;
  const Clock::time_point start = Clock::now();
  lease.Registered(Response("l1", 6000, 1000), start);
  v1::HeartbeatResponse renewal;
  lease.Renewed(renewal, start + milliseconds(500));
  EXPECT_EQ(lease.deadline(), start + milliseconds(6500));
  EXPECT_EQ(lease.heartbeat_interval(), milliseconds(1000));
  *renewal.mutable_lease_ttl() = TimeUtil::MillisecondsToDuration(3000);
  lease.Renewed(renewal, start + milliseconds(1000));
  EXPECT_EQ(lease.deadline(), start + milliseconds(4000));
}

TEST(AgentLeaseTest, OnlyTheCurrentLeaseIsLostAndARejoinEndsWithTheNextRegistration) {
  AgentLease lease;
  lease.Registered(Response("l1", 6000, 0), Clock::now());
  lease.Registered(Response("l2", 6000, 0), Clock::now());
  EXPECT_FALSE(lease.Lose(1, true));  // an old generation's loss
  EXPECT_TRUE(lease.valid());
  EXPECT_TRUE(lease.Lose(2, true));
  EXPECT_FALSE(lease.valid());
  EXPECT_TRUE(lease.rejoining());
  EXPECT_FALSE(lease.Lose(2, false));  // lost already
  EXPECT_TRUE(lease.rejoining());
  EXPECT_TRUE(lease.Registered(Response("l3", 6000, 0), Clock::now()));  // rejoined
  EXPECT_FALSE(lease.rejoining());
  EXPECT_TRUE(lease.Lose(3, false));
  EXPECT_FALSE(lease.rejoining());
  lease.Registered(Response("l4", 6000, 0), Clock::now());
  lease.End();
  EXPECT_FALSE(lease.valid());
}

}  // namespace
}  // namespace tern::agent
