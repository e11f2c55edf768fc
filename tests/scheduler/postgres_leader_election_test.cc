// PostgresLeaderElection on a real server (the ctest fixture "postgres"),
// and the fencing of a PostgresJobStore opened with the leader's epoch.
#include "scheduler/postgres_leader_election.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <thread>

#include "common/error_reasons.h"
#include "scheduler/postgres_job_store.h"
#include "tests/scheduler/postgres_test_util.h"
#include "tests/scheduler/test_util.h"

namespace tern::scheduler {
namespace {

using ::tern::scheduler::testing::PostgresTestDatabase;
using namespace std::chrono_literals;

class PostgresLeaderElectionTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(db_.ok()); }

  std::unique_ptr<PostgresLeaderElection> OpenElection() {
    auto election = PostgresLeaderElection::Open(db_.url());
    EXPECT_TRUE(election.ok()) << election.status();
    return election.ok() ? std::move(election).value() : nullptr;
  }

  static Job SampleJob(JobId id) {
    Job job;
    job.id = id;
    job.owner = "alice";
    job.world_size = 1;
    job.device_kind = kDeviceCpu;
    job.spec = "spec";
    return job;
  }

  PostgresTestDatabase db_;
};

TEST_F(PostgresLeaderElectionTest, FirstTakesEpochOneSecondSeesTheHolder) {
  auto a = OpenElection(), b = OpenElection();
  ASSERT_TRUE(a && b);
  StatusOr<Leadership> nobody = a->Current();
  ASSERT_TRUE(nobody.ok()) << nobody.status();
  EXPECT_EQ(nobody->epoch, 0);
  EXPECT_TRUE(nobody->expired);

  StatusOr<Leadership> first = a->TryAcquire("ternd-a", "10.0.0.1:7070", 30s);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->held);
  EXPECT_EQ(first->epoch, 1);
  StatusOr<Leadership> second = b->TryAcquire("ternd-b", "10.0.0.2:7070", 30s);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->held);
  EXPECT_EQ(second->epoch, 1);
  EXPECT_EQ(second->holder, "ternd-a");
  EXPECT_EQ(second->address, "10.0.0.1:7070");
  EXPECT_FALSE(second->expired);
  EXPECT_EQ(b->Current()->holder, "ternd-a");
}

TEST_F(PostgresLeaderElectionTest, AnotherTakesOverAfterTheLeaseRunsOut) {
  auto a = OpenElection(), b = OpenElection();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->TryAcquire("ternd-a", "a:1", 300ms)->held);
  std::this_thread::sleep_for(500ms);
  StatusOr<Leadership> current = b->Current();
  ASSERT_TRUE(current.ok());
  EXPECT_TRUE(current->expired);
  StatusOr<Leadership> taken = b->TryAcquire("ternd-b", "b:1", 30s);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_TRUE(taken->held);
  EXPECT_EQ(taken->epoch, 2);

  Status renew = a->Renew(1, 30s);
  EXPECT_EQ(renew.code(), StatusCode::kAborted) << renew;
  EXPECT_EQ(renew.reason(), error_reason::kLeadershipLost) << renew;
  EXPECT_NE(renew.message().find("ternd-b"), std::string::npos) << renew;
  EXPECT_TRUE(b->Renew(2, 30s).ok());
  EXPECT_TRUE(a->Release(1).ok()) << "releasing a lease no longer ours is OK";
  EXPECT_FALSE(b->Current()->expired) << "and does not end the new holder's";
}

TEST_F(PostgresLeaderElectionTest, RenewExtendsAnExpiredLeaseNobodyTook) {
  auto a = OpenElection(), b = OpenElection();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->TryAcquire("ternd-a", "a:1", 200ms)->held);
  std::this_thread::sleep_for(400ms);
  ASSERT_TRUE(a->Renew(1, 30s).ok());
  StatusOr<Leadership> b_try = b->TryAcquire("ternd-b", "b:1", 30s);
  ASSERT_TRUE(b_try.ok());
  EXPECT_FALSE(b_try->held);
  EXPECT_EQ(b_try->epoch, 1);
}

TEST_F(PostgresLeaderElectionTest, ReleaseLetsAnotherTakeAtOnce) {
  auto a = OpenElection(), b = OpenElection();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->TryAcquire("ternd-a", "a:1", 60s)->held);
  ASSERT_TRUE(a->Release(1).ok());
  StatusOr<Leadership> taken = b->TryAcquire("ternd-b", "b:1", 60s);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_TRUE(taken->held);
  EXPECT_EQ(taken->epoch, 2);
}

TEST_F(PostgresLeaderElectionTest, TheHolderRestartedTakesANewEpoch) {
  auto a = OpenElection();
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(a->TryAcquire("ternd-a", "a:1", 60s)->held);
  auto restarted = OpenElection();
  StatusOr<Leadership> again = restarted->TryAcquire("ternd-a", "a:2", 60s);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->held);
  EXPECT_EQ(again->epoch, 2);
}

TEST_F(PostgresLeaderElectionTest, BadArgumentsAreInvalid) {
  auto a = OpenElection();
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->TryAcquire("", "a:1", 1s).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a->TryAcquire("a", "a:1", 0s).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a->Renew(1, -1s).code(), StatusCode::kInvalidArgument);
}

TEST_F(PostgresLeaderElectionTest, FencedStoreRefusesEveryWriteAfterATakeover) {
  auto a = OpenElection(), b = OpenElection();
  ASSERT_TRUE(a && b);
  ASSERT_EQ(a->TryAcquire("ternd-a", "a:1", 200ms)->epoch, 1);
  std::atomic<int> fenced{0};
  PostgresJobStore::Options options;
  options.fence_epoch = 1;
  options.on_fenced = [&] { ++fenced; };
  auto store = PostgresJobStore::Open(db_.url(), options);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->CreateJob(SampleJob(1), {}).ok()) << "epoch 1 is still the latest";

  std::this_thread::sleep_for(400ms);
  ASSERT_TRUE(b->TryAcquire("ternd-b", "b:1", 30s)->held);
  Status commit = (*store)->Commit({JobWrite{JobWrite::Kind::kCreate, SampleJob(2), {}}});
  EXPECT_EQ(commit.code(), StatusCode::kAborted) << commit;
  EXPECT_EQ(commit.reason(), error_reason::kLeadershipLost) << commit;
  EXPECT_EQ(fenced.load(), 1);
  Status create = (*store)->CreateJob(SampleJob(3), {});
  EXPECT_EQ(create.reason(), error_reason::kLeadershipLost) << create;
  Job update = SampleJob(1);
  update.state = JobState::kCancelled;
  Status updated = (*store)->UpdateJob(update, {});
  EXPECT_EQ(updated.reason(), error_reason::kLeadershipLost) << updated;
  EXPECT_EQ(fenced.load(), 1) << "on_fenced fires once";
  EXPECT_EQ(db_.Query("SELECT count(*) FROM jobs"), "1");
  EXPECT_EQ(db_.Query("SELECT state FROM jobs WHERE id = 1"), "QUEUED");
  EXPECT_TRUE((*store)->LoadJobs().ok()) << "reads go on";

  // The new leader's store writes.
  options.fence_epoch = 2;
  options.on_fenced = nullptr;
  auto leader_store = PostgresJobStore::Open(db_.url(), options);
  ASSERT_TRUE(leader_store.ok());
  EXPECT_TRUE((*leader_store)->CreateJob(SampleJob(2), {}).ok());
}

// The fence reads the lease row FOR SHARE: a write that starts while a
// takeover is under way waits for it and then sees the new epoch (a plain
// read would see the old one and write).
TEST_F(PostgresLeaderElectionTest, AWriteDuringATakeoverWaitsAndIsRefused) {
  auto a = OpenElection();
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->TryAcquire("ternd-a", "a:1", 60s)->epoch, 1);
  PostgresJobStore::Options options;
  options.fence_epoch = 1;
  auto store = PostgresJobStore::Open(db_.url(), options);
  ASSERT_TRUE(store.ok()) << store.status();

  PostgresTestDatabase::Session takeover(db_.url());
  takeover.Query("BEGIN");
  takeover.Query("UPDATE leader_lease SET epoch = epoch + 1, holder = 'ternd-b'");
  std::future<Status> write =
      std::async(std::launch::async, [&] { return (*store)->CreateJob(SampleJob(1), {}); });
  EXPECT_EQ(write.wait_for(500ms), std::future_status::timeout) << "the write did not wait";
  takeover.Query("COMMIT");
  Status status = write.get();
  EXPECT_EQ(status.reason(), error_reason::kLeadershipLost) << status;
  EXPECT_EQ(db_.Query("SELECT count(*) FROM jobs"), "0");
}

// And the other way round: a takeover waits for a fenced write in flight.
TEST_F(PostgresLeaderElectionTest, ATakeoverWaitsForAWriteInFlight) {
  auto a = OpenElection(), b = OpenElection();
  ASSERT_TRUE(a && b);
  ASSERT_EQ(a->TryAcquire("ternd-a", "a:1", 100ms)->epoch, 1);
  std::this_thread::sleep_for(300ms);
  PostgresTestDatabase::Session writer(db_.url());
  writer.Query("BEGIN");
  EXPECT_EQ(writer.Query("SELECT epoch FROM leader_lease FOR SHARE"), "1");
  std::future<StatusOr<Leadership>> take =
      std::async(std::launch::async, [&] { return b->TryAcquire("ternd-b", "b:1", 30s); });
  EXPECT_EQ(take.wait_for(500ms), std::future_status::timeout) << "the takeover did not wait";
  writer.Query("COMMIT");
  StatusOr<Leadership> taken = take.get();
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_TRUE(taken->held);
  EXPECT_EQ(taken->epoch, 2);
}

}  // namespace
}  // namespace tern::scheduler
