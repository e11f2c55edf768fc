#include "scheduler/agent_leases.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "scheduler/sqlite_job_store.h"
#include "tests/scheduler/test_util.h"

namespace tern::scheduler {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::tern::scheduler::testing::TempDir;

// AgentLeases over a scheduler on a fresh SQLite file and a FakeClock.
class AgentLeasesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SchedulerOptions options;
    options.agent_lease_ttl = seconds(10);
    options.restart_backoff = seconds(0);
    StatusOr<std::unique_ptr<SqliteJobStore>> store =
        SqliteJobStore::Open((dir_.path() / "jobs.db").string());
    ASSERT_TRUE(store.ok()) << store.status();
    StatusOr<std::unique_ptr<Scheduler>> scheduler =
        Scheduler::Create(options, std::move(store).value(), clock_);
    ASSERT_TRUE(scheduler.ok()) << scheduler.status();
    scheduler_ = std::move(scheduler).value();
    leases_ = std::make_unique<AgentLeases>(scheduler_.get(), clock_.get());
  }

  AgentLeases::Grant Register(const std::string& agent_id, std::vector<RankRef> running = {}) {
    AgentRegistration reg;
    reg.agent_id = agent_id;
    reg.host = agent_id + ".local";
    reg.slots = {{kDeviceCpu, 2}};
    reg.running = std::move(running);
    StatusOr<AgentLeases::Grant> grant = leases_->Register(reg);
    EXPECT_TRUE(grant.ok()) << grant.status();
    return grant.ok() ? *grant : AgentLeases::Grant();
  }

  JobId Submit(int world_size = 1) {
    JobRequest request;
    request.owner = "alice";
    request.world_size = world_size;
    request.spec = "{}";
    StatusOr<SubmitResult> submitted = scheduler_->SubmitJob(request);
    EXPECT_TRUE(submitted.ok()) << submitted.status();
    return submitted.ok() ? submitted->job.id : 0;
  }

  TempDir dir_;
  std::shared_ptr<FakeClock> clock_ = std::make_shared<FakeClock>();
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<AgentLeases> leases_;
};

TEST_F(AgentLeasesTest, RegisterGrantsTheOnlyCurrentLease) {
  const AgentLeases::Grant first = Register("a1");
  EXPECT_EQ(first.lease_id.size(), 32u);
  EXPECT_EQ(first.expires_at, clock_->Now() + seconds(10));
  EXPECT_FALSE(first.replaced_expired);
  EXPECT_TRUE(leases_->Check("a1", first.lease_id).ok());
  EXPECT_EQ(leases_->Check("a1", "nope").code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(leases_->Check("a2", first.lease_id).code(), StatusCode::kFailedPrecondition);

  const AgentLeases::Grant second = Register("a1");
  EXPECT_NE(second.lease_id, first.lease_id);
  EXPECT_FALSE(second.replaced_expired);
  EXPECT_EQ(leases_->Check("a1", first.lease_id).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(leases_->Check("a1", second.lease_id).ok());
}

TEST_F(AgentLeasesTest, ExpiredIsExpiredBeforeExpireCollectsIt) {
  const AgentLeases::Grant grant = Register("a1");
  clock_->Advance(seconds(10));
  const Status status = leases_->Check("a1", grant.lease_id);
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("unknown or expired lease"), std::string::npos) << status;
  // Not collected yet: registering again counts the old lease as expired.
  EXPECT_TRUE(Register("a1").replaced_expired);
}

TEST_F(AgentLeasesTest, ExpireForgetsOnlyExpiredLeases) {
  Register("a1");
  clock_->Advance(seconds(5));
  const AgentLeases::Grant later = Register("a2");
  clock_->Advance(seconds(5));
  EXPECT_EQ(leases_->Expire(clock_->Now()), 1);  // a1
  EXPECT_EQ(leases_->Expire(clock_->Now()), 0);
  EXPECT_TRUE(leases_->Check("a2", later.lease_id).ok());
  // Collected: registering again counts nothing more.
  EXPECT_FALSE(Register("a1").replaced_expired);
}

TEST_F(AgentLeasesTest, HeartbeatRenewsTheLease) {
  const AgentLeases::Grant grant = Register("a1");
  clock_->Advance(seconds(6));
  StatusOr<AgentLeases::Renewal> renewal = leases_->Heartbeat("a1", grant.lease_id, {});
  ASSERT_TRUE(renewal.ok()) << renewal.status();
  EXPECT_EQ(renewal->expires_at, clock_->Now() + seconds(10));
  EXPECT_TRUE(renewal->unexpected.empty());
  clock_->Advance(seconds(6));  // past the first deadline, not the renewed one
  EXPECT_TRUE(leases_->Check("a1", grant.lease_id).ok());
  EXPECT_EQ(leases_->Expire(clock_->Now()), 0);
}

TEST_F(AgentLeasesTest, HeartbeatStartsExpectedRanksAndNamesTheOthers) {
  const AgentLeases::Grant grant = Register("a1");
  const JobId id = Submit();
  StatusOr<std::vector<AgentLeases::PlacedRank>> placed = leases_->PlacedRanks("a1");
  ASSERT_TRUE(placed.ok()) << placed.status();
  ASSERT_EQ(placed->size(), 1u);
  const Assignment& a = placed->front().assignment;
  EXPECT_EQ(a.job_id, id);
  EXPECT_EQ(a.rank, 0);
  EXPECT_EQ(a.agent_id, "a1");
  EXPECT_EQ(placed->front().job.state, JobState::kAdmitted);

  const RankRef mine{id, a.attempt, 0, "a1"};
  const RankRef stale{id, a.attempt + 1, 0, "a1"};
  const RankRef unknown{id + 100, 1, 0, "a1"};
  StatusOr<AgentLeases::Renewal> renewal =
      leases_->Heartbeat("a1", grant.lease_id, {mine, stale, unknown});
  ASSERT_TRUE(renewal.ok()) << renewal.status();
  ASSERT_EQ(renewal->unexpected.size(), 2u);
  EXPECT_EQ(renewal->unexpected[0].attempt, stale.attempt);
  EXPECT_EQ(renewal->unexpected[1].job_id, unknown.job_id);
  StatusOr<Job> job = scheduler_->GetJob(id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state, JobState::kRunning);
  EXPECT_EQ(job->ranks[0].state, RankState::kRunning);

  // Placed on another agent: nothing for a2.
  Register("a2");
  placed = leases_->PlacedRanks("a2");
  ASSERT_TRUE(placed.ok()) << placed.status();
  EXPECT_TRUE(placed->empty());
}

TEST_F(AgentLeasesTest, OneHeartbeatStartsEveryExpectedRankItLists) {
  const AgentLeases::Grant grant = Register("a1");
  const JobId first = Submit();
  const JobId second = Submit();
  StatusOr<std::vector<AgentLeases::PlacedRank>> placed = leases_->PlacedRanks("a1");
  ASSERT_TRUE(placed.ok()) << placed.status();
  ASSERT_EQ(placed->size(), 2u);
  const int attempt = placed->front().assignment.attempt;
  // The second job's rank listed as if on another agent: not this agent's.
  const RankRef elsewhere{second, attempt, 0, "a2"};
  StatusOr<AgentLeases::Renewal> renewal = leases_->Heartbeat(
      "a1", grant.lease_id, {{first, attempt, 0, "a1"}, elsewhere, {second, attempt, 0, "a1"}});
  ASSERT_TRUE(renewal.ok()) << renewal.status();
  ASSERT_EQ(renewal->unexpected.size(), 1u);
  EXPECT_EQ(renewal->unexpected[0].agent_id, "a2");
  for (JobId id : {first, second}) {
    StatusOr<Job> job = scheduler_->GetJob(id);
    ASSERT_TRUE(job.ok()) << job.status();
    EXPECT_EQ(job->state, JobState::kRunning) << "job " << id;
  }
  // A repeat changes nothing and records no second start.
  StatusOr<std::vector<JobEvent>> before = scheduler_->ReadEvents(first, 0, 100);
  ASSERT_TRUE(before.ok()) << before.status();
  renewal = leases_->Heartbeat("a1", grant.lease_id, {{first, attempt, 0, "a1"}});
  ASSERT_TRUE(renewal.ok()) << renewal.status();
  EXPECT_TRUE(renewal->unexpected.empty());
  StatusOr<std::vector<JobEvent>> after = scheduler_->ReadEvents(first, 0, 100);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->size(), before->size());
}

TEST_F(AgentLeasesTest, CallsWithAStaleLeaseReachNoScheduler) {
  const AgentLeases::Grant grant = Register("a1");
  EXPECT_EQ(leases_->Heartbeat("a1", "stale", {}).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(leases_->TakeWork("a1", "stale", milliseconds(0)).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(leases_->Drain("a1", "stale").code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(leases_->Deregister("a1", "stale").code(), StatusCode::kFailedPrecondition);
  // Still registered and not draining.
  std::vector<AgentSummary> agents = scheduler_->ListAgents();
  ASSERT_EQ(agents.size(), 1u);
  EXPECT_TRUE(agents[0].live);
  EXPECT_FALSE(agents[0].draining);
  EXPECT_TRUE(leases_->Check("a1", grant.lease_id).ok());
}

TEST_F(AgentLeasesTest, LeaseIsLostWithTheSchedulersAgent) {
  const AgentLeases::Grant grant = Register("a1");
  ASSERT_TRUE(scheduler_->DeregisterAgent("a1").ok());  // e.g. lost meanwhile
  StatusOr<AgentWork> work = leases_->TakeWork("a1", grant.lease_id, milliseconds(0));
  EXPECT_EQ(work.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(work.status().message().find("lease ended; register again"), std::string::npos)
      << work.status();
  EXPECT_EQ(leases_->Check("a1", grant.lease_id).code(), StatusCode::kFailedPrecondition);
}

TEST_F(AgentLeasesTest, DrainAndHeartbeatOfALostAgentSayRegisterAgain) {
  const AgentLeases::Grant grant = Register("a1");
  ASSERT_TRUE(scheduler_->DeregisterAgent("a1").ok());
  Status drained = leases_->Drain("a1", grant.lease_id);
  EXPECT_EQ(drained.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(drained.message().find("lease expired; register again"), std::string::npos) << drained;

  const AgentLeases::Grant again = Register("a1");
  ASSERT_TRUE(scheduler_->DeregisterAgent("a1").ok());
  StatusOr<AgentLeases::Renewal> renewal = leases_->Heartbeat("a1", again.lease_id, {});
  EXPECT_EQ(renewal.status().code(), StatusCode::kFailedPrecondition);
}

TEST_F(AgentLeasesTest, DeregisterEndsTheLeaseWithoutAnExpiry) {
  const AgentLeases::Grant grant = Register("a1");
  ASSERT_TRUE(leases_->Drain("a1", grant.lease_id).ok());
  ASSERT_TRUE(leases_->Deregister("a1", grant.lease_id).ok());
  EXPECT_EQ(leases_->Check("a1", grant.lease_id).code(), StatusCode::kFailedPrecondition);
  clock_->Advance(seconds(60));
  EXPECT_EQ(leases_->Expire(clock_->Now()), 0);
  EXPECT_FALSE(Register("a1").replaced_expired);
}

}  // namespace
}  // namespace tern::scheduler
