#include "scheduler/scheduler.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "scheduler/sqlite_job_store.h"
#include "tests/scheduler/test_util.h"

namespace tern::scheduler {
namespace {

using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using ::tern::scheduler::testing::FaultyJobStore;
using ::tern::scheduler::testing::GatedJobStore;
using ::tern::scheduler::testing::TempDir;

// A scheduler over a fresh SQLite file and a FakeClock. Open() again to
// simulate a ternd restart over the same file.
class SchedulerTest : public ::testing::Test {
 protected:
  SchedulerTest() {
    options_.aging_per_minute = 0;  // tests about aging turn it on
    options_.backfill_window = minutes(5);
    options_.agent_lease_ttl = seconds(10);
    options_.restart_backoff = seconds(0);
    options_.max_restart_backoff = seconds(60);
    // ctest runs this binary twice: group commit (the default) and, with
    // TERN_TEST_COMMIT_MODE=per-call, one transaction per change.
    if (const char* mode = getenv("TERN_TEST_COMMIT_MODE")) {
      StatusOr<CommitMode> parsed = ParseCommitMode(mode);
      EXPECT_TRUE(parsed.ok()) << parsed.status();
      if (parsed.ok()) options_.commit_mode = *parsed;
    }
  }

  bool GroupCommit() const { return options_.commit_mode == CommitMode::kGroup; }

  void SetUp() override { Open(); }

  std::string DbPath() const { return (dir_.path() / "jobs.db").string(); }

  void Open() {
    scheduler_.reset();
    StatusOr<std::unique_ptr<SqliteJobStore>> store =
        SqliteJobStore::Open(DbPath());
    ASSERT_TRUE(store.ok()) << store.status();
    OpenWith(std::move(store).value());
  }

  void OpenWith(std::unique_ptr<JobStore> store) {
    scheduler_.reset();
    StatusOr<std::unique_ptr<Scheduler>> scheduler =
        Scheduler::Create(options_, std::move(store), clock_);
    ASSERT_TRUE(scheduler.ok()) << scheduler.status();
    scheduler_ = std::move(scheduler).value();
  }

  static JobRequest Request(int priority, int world_size = 1,
                            const std::string& kind = kDeviceCpu,
                            int max_restarts = 0) {
    JobRequest r;
    r.owner = "alice";
    r.priority = priority;
    r.world_size = world_size;
    r.device_kind = kind;
    r.max_restarts = max_restarts;
    r.spec = "spec of a " + std::to_string(world_size) + "-rank job";
    return r;
  }

  JobId Submit(const JobRequest& request) {
    StatusOr<SubmitResult> result = scheduler_->SubmitJob(request);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? result->job.id : 0;
  }
  JobId Submit(int priority, int world_size = 1,
               const std::string& kind = kDeviceCpu, int max_restarts = 0) {
    return Submit(Request(priority, world_size, kind, max_restarts));
  }

  void Register(const std::string& agent, int slots,
                const std::string& kind = kDeviceCpu,
                std::vector<RankRef> running = {}) {
    AgentRegistration reg;
    reg.agent_id = agent;
    reg.host = agent + ".example";
    reg.slots = {{kind, slots}};
    reg.running = std::move(running);
    StatusOr<Lease> lease = scheduler_->RegisterAgent(reg);
    ASSERT_TRUE(lease.ok()) << lease.status();
  }

  Job Get(JobId id) {
    StatusOr<Job> job = scheduler_->GetJob(id);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : Job();
  }
  JobState State(JobId id) { return Get(id).state; }
  std::string WaitReason(JobId id) {
    StatusOr<std::string> reason = scheduler_->WaitReason(id);
    EXPECT_TRUE(reason.ok()) << reason.status();
    return reason.ok() ? *reason : "";
  }
  std::vector<std::string> Reasons(JobId id) {
    std::vector<std::string> out;
    for (const JobEvent& e : Get(id).history) out.push_back(e.reason);
    return out;
  }

  AgentWork Work(const std::string& agent) {
    StatusOr<AgentWork> work = scheduler_->TakeAgentWork(agent);
    EXPECT_TRUE(work.ok()) << work.status();
    return work.ok() ? *work : AgentWork();
  }

  RankRef Ref(JobId id, int rank) {
    Job job = Get(id);
    return RankRef{id, job.attempt, rank, job.ranks.at(rank).agent_id};
  }
  void StartAll(JobId id) {
    for (int r = 0; r < Get(id).world_size; ++r) {
      ASSERT_TRUE(scheduler_->ReportRankStarted(Ref(id, r)).ok());
    }
  }
  void Exit(JobId id, int rank, int code) {
    RankExit exit;
    exit.rank = Ref(id, rank);
    exit.exit_code = code;
    Status status = scheduler_->ReportRankExit(exit);
    ASSERT_TRUE(status.ok()) << status;
  }
  // What an agent does with kill orders: each killed rank exits (SIGTERM)
  // and the agent reports it.
  void ExitKilled(const std::vector<KillOrder>& kills) {
    for (const KillOrder& k : kills) {
      RankExit exit;
      exit.rank = RankRef{k.job_id, k.attempt, k.rank, k.agent_id};
      exit.exit_code = -15;
      Status status = scheduler_->ReportRankExit(exit);
      ASSERT_TRUE(status.ok()) << status;
    }
  }
  // Every rank starts and exits 0.
  void Finish(JobId id) {
    StartAll(id);
    for (int r = 0; r < Get(id).world_size; ++r) Exit(id, r, 0);
    ASSERT_EQ(State(id), JobState::kSucceeded);
  }

  std::vector<JobId> Ids(const ListJobsQuery& query) {
    StatusOr<ListJobsResult> result = scheduler_->ListJobs(query);
    EXPECT_TRUE(result.ok()) << result.status();
    std::vector<JobId> ids;
    if (result.ok()) {
      for (const Job& job : result->jobs) ids.push_back(job.id);
    }
    return ids;
  }
  std::vector<JobId> InState(JobState state) {
    ListJobsQuery query;
    query.states = {state};
    query.page_size = 500;
    return Ids(query);
  }

  TempDir dir_;
  std::shared_ptr<FakeClock> clock_ = std::make_shared<FakeClock>();
  SchedulerOptions options_;
  std::unique_ptr<Scheduler> scheduler_;
};

// --- Order and aging ---------------------------------------------------------

class QueueOrderTest : public SchedulerTest {};

TEST_F(QueueOrderTest, HigherPriorityFirstAndFifoWithinPriority) {
  JobId a = Submit(1);
  JobId b = Submit(5);
  clock_->Advance(seconds(1));
  JobId c = Submit(5);
  JobId d = Submit(3);
  EXPECT_EQ(scheduler_->QueueOrder(), (std::vector<JobId>{b, c, d, a}));

  Register("n1", 1);
  std::vector<JobId> admitted;
  for (int i = 0; i < 4; ++i) {
    std::vector<JobId> now = InState(JobState::kAdmitted);
    ASSERT_EQ(now.size(), 1u);
    admitted.push_back(now[0]);
    Finish(now[0]);
  }
  EXPECT_EQ(admitted, (std::vector<JobId>{b, c, d, a}));
}

class AgingTest : public SchedulerTest {
 protected:
  // One slot; every minute a priority-10 job arrives and the running job ends.
  // Returns how many minutes the priority-0 job waited (or `limit`).
  int MinutesUntilLowPriorityRuns(int limit) {
    Register("n1", 1);
    JobId running = Submit(10);
    JobId low = Submit(0);
    int minute = 0;
    while (State(low) == JobState::kQueued && minute < limit) {
      clock_->Advance(minutes(1));
      ++minute;
      Submit(10);
      Finish(running);
      std::vector<JobId> admitted = InState(JobState::kAdmitted);
      EXPECT_EQ(admitted.size(), 1u);
      running = admitted.at(0);
    }
    return minute;
  }
};

TEST_F(AgingTest, LowPriorityJobEventuallyRunsAheadOfHighPriorityStream) {
  options_.aging_per_minute = 1.0;
  Open();
  // After 10 minutes it has aged to 10, ties the newest priority-10 job and
  // wins the tie as the older one.
  EXPECT_EQ(MinutesUntilLowPriorityRuns(60), 10);
}

TEST_F(AgingTest, WithoutAgingHighPriorityStreamStarvesLowPriority) {
  EXPECT_EQ(MinutesUntilLowPriorityRuns(30), 30);
}

// --- Gang admission ----------------------------------------------------------

class GangAdmissionTest : public SchedulerTest {};

TEST_F(GangAdmissionTest, WaitsUntilAllRanksFit) {
  Register("a", 2, kDeviceCuda);
  Register("b", 2, kDeviceCuda);
  JobId first = Submit(0, 2, kDeviceCuda);
  ASSERT_EQ(State(first), JobState::kAdmitted);
  EXPECT_EQ(Work("a").assignments.size(), 2u);  // packed onto one agent

  JobId gang = Submit(0, 3, kDeviceCuda);
  EXPECT_EQ(State(gang), JobState::kQueued);
  // All or nothing: b's two free slots are not held, nothing went to b.
  EXPECT_EQ(scheduler_->Stats().free_slots.at(kDeviceCuda), 2);
  EXPECT_TRUE(Work("b").empty());

  Finish(first);
  ASSERT_EQ(State(gang), JobState::kAdmitted);
  AgentWork wa = Work("a"), wb = Work("b");
  ASSERT_EQ(wa.assignments.size(), 2u);
  ASSERT_EQ(wb.assignments.size(), 1u);
  EXPECT_EQ(wa.assignments[0].rank, 0);
  EXPECT_EQ(wa.assignments[1].rank, 1);
  EXPECT_EQ(wb.assignments[0].rank, 2);
  for (const Assignment& a : {wa.assignments[0], wb.assignments[0]}) {
    EXPECT_EQ(a.world_size, 3);
    EXPECT_EQ(a.rendezvous_host, "a.example");
  }
  EXPECT_EQ(scheduler_->Stats().free_slots.at(kDeviceCuda), 1);
}

TEST_F(GangAdmissionTest, AssignmentsCarryRendezvousSpecAndAttempt) {
  Register("a", 1);
  Register("b", 2);
  JobId id = Submit(0, 3);
  ASSERT_EQ(State(id), JobState::kAdmitted);
  Job job = Get(id);
  // The agent with the most free slots takes rank 0 and the rendezvous.
  EXPECT_EQ(job.ranks[0].agent_id, "b");
  EXPECT_EQ(job.ranks[1].agent_id, "b");
  EXPECT_EQ(job.ranks[2].agent_id, "a");
  EXPECT_EQ(job.rendezvous_host, "b.example");
  EXPECT_EQ(job.rendezvous_port, options_.rendezvous_port_min);
  EXPECT_EQ(job.attempt, 1);

  AgentWork wa = Work("a");
  ASSERT_EQ(wa.assignments.size(), 1u);
  const Assignment& a = wa.assignments[0];
  EXPECT_EQ(a.job_id, id);
  EXPECT_EQ(a.attempt, 1);
  EXPECT_EQ(a.rank, 2);
  EXPECT_EQ(a.world_size, 3);
  EXPECT_EQ(a.agent_id, "a");
  EXPECT_EQ(a.device_kind, "cpu");
  EXPECT_EQ(a.rendezvous_host, "b.example");
  EXPECT_EQ(a.rendezvous_port, options_.rendezvous_port_min);
  EXPECT_FALSE(a.resume_from_step.has_value());
  EXPECT_EQ(a.spec, "spec of a 3-rank job");

  // Two jobs whose rank 0 shares an agent get different ports.
  Register("c", 4);
  JobId one = Submit(0, 1), two = Submit(0, 1);
  EXPECT_EQ(Get(one).ranks[0].agent_id, "c");
  EXPECT_EQ(Get(two).ranks[0].agent_id, "c");
  EXPECT_EQ(Get(one).rendezvous_port, options_.rendezvous_port_min);
  EXPECT_EQ(Get(two).rendezvous_port, options_.rendezvous_port_min + 1);
}

TEST_F(GangAdmissionTest, DeviceKindsDoNotMix) {
  Register("cpu-node", 4, kDeviceCpu);
  Register("gpu-node", 2, kDeviceCuda);
  JobId gpu = Submit(0, 3, kDeviceCuda);
  JobId cpu = Submit(0, 4, kDeviceCpu);
  EXPECT_EQ(State(gpu), JobState::kQueued);
  EXPECT_EQ(State(cpu), JobState::kAdmitted);
  for (const RankPlacement& r : Get(cpu).ranks)
    EXPECT_EQ(r.agent_id, "cpu-node");
}

// --- Wait reasons and backfill -----------------------------------------------

class WaitReasonTest : public SchedulerTest {};

TEST_F(WaitReasonTest, SaysWhatIsMissing) {
  Register("a", 2, kDeviceCuda);
  Register("b", 2, kDeviceCuda);
  JobId running = Submit(0, 2, kDeviceCuda);
  JobId waiting = Submit(0, 4, kDeviceCuda);
  JobId huge = Submit(0, 8, kDeviceCuda);
  EXPECT_EQ(WaitReason(waiting), "needs 4 cuda slots, 2 free");
  EXPECT_EQ(WaitReason(huge), "needs 8 cuda slots, only 4 registered");
  EXPECT_EQ(WaitReason(running), "");
  EXPECT_EQ(scheduler_->WaitReason(999).status().code(), StatusCode::kNotFound);
}

class BackfillTest : public SchedulerTest {};

TEST_F(BackfillTest, SmallJobRunsAheadOfBlockedHead) {
  Register("a", 4);
  JobId first = Submit(0, 2);
  JobId head = Submit(10, 4);
  JobId small = Submit(0, 2);
  EXPECT_EQ(State(first), JobState::kAdmitted);
  EXPECT_EQ(State(head), JobState::kQueued);
  EXPECT_EQ(State(small), JobState::kAdmitted);
}

TEST_F(BackfillTest, HeadReservesSlotsAfterWindow) {
  Register("a", 4);
  JobId first = Submit(0, 2);
  JobId head = Submit(10, 4);
  JobId small = Submit(0, 2);  // backfilled while the window is open
  ASSERT_EQ(State(small), JobState::kAdmitted);

  clock_->Advance(options_.backfill_window);
  JobId late = Submit(0, 2);
  Finish(first);  // 2 slots free: enough for `late`, not for `head`
  EXPECT_EQ(State(late), JobState::kQueued);
  EXPECT_EQ(WaitReason(late),
            "needs 2 cpu slots, 2 free, but they are held for job " +
                std::to_string(head) +
                " (ahead in the queue, needs 4 cpu slots)");
  Finish(small);
  EXPECT_EQ(State(head), JobState::kAdmitted);
  EXPECT_EQ(State(late), JobState::kQueued);
  EXPECT_EQ(WaitReason(late), "needs 2 cpu slots, 0 free");
}

TEST_F(BackfillTest, ZeroWindowMeansStrictOrder) {
  options_.backfill_window = milliseconds(0);
  Open();
  Register("a", 4);
  Submit(0, 2);
  JobId head = Submit(10, 4);
  JobId small = Submit(0, 2);
  EXPECT_EQ(State(head), JobState::kQueued);
  EXPECT_EQ(State(small), JobState::kQueued);
}

TEST_F(BackfillTest, JobThatCanNeverFitDoesNotBlock) {
  options_.backfill_window = milliseconds(0);
  Open();
  Register("a", 4);
  JobId huge = Submit(10, 8);
  JobId small = Submit(0, 1);
  EXPECT_EQ(State(huge), JobState::kQueued);
  EXPECT_EQ(State(small), JobState::kAdmitted);
}

// --- Leases and restarts -----------------------------------------------------

class LeaseTest : public SchedulerTest {};

TEST_F(LeaseTest, ExpiryRestartsJobAndKillsSurvivingRanks) {
  options_.restart_backoff = seconds(2);
  Open();
  Register("a", 2);
  Register("b", 2);
  JobId id = Submit(0, 4, kDeviceCpu, /*max_restarts=*/2);
  StartAll(id);
  ASSERT_EQ(State(id), JobState::kRunning);
  ASSERT_TRUE(scheduler_->ReportCheckpoint(Ref(id, 0), 100).ok());
  Work("a");
  Work("b");

  clock_->Advance(seconds(6));
  ASSERT_TRUE(scheduler_->Heartbeat("a").ok());
  clock_->Advance(seconds(5));  // b's lease (10s) has expired, a's has not
  ASSERT_TRUE(scheduler_->Tick().ok());

  Job job = Get(id);
  EXPECT_EQ(job.state, JobState::kRestarting);
  EXPECT_EQ(job.history.back().from, JobState::kRunning);
  EXPECT_EQ(job.history.back().reason, "AGENT_LEASE_EXPIRED");
  EXPECT_NE(job.history.back().message.find("ranks 2-3 on b"),
            std::string::npos)
      << job.history.back().message;
  EXPECT_EQ(job.restarts_used, 1);
  EXPECT_EQ(WaitReason(id),
            "restarting: back in the queue in 2s (restart 1 of 2)");
  AgentWork wa = Work("a");
  ASSERT_EQ(wa.kills.size(), 2u);
  EXPECT_EQ(wa.kills[0].job_id, id);
  EXPECT_EQ(wa.kills[0].attempt, 1);
  EXPECT_EQ(wa.kills[0].rank, 0);
  EXPECT_EQ(wa.kills[1].rank, 1);
  EXPECT_EQ(wa.kills[0].reason, "AGENT_LEASE_EXPIRED");
  ExitKilled(wa.kills);
  EXPECT_EQ(scheduler_->Heartbeat("b").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(scheduler_->TakeAgentWork("b").status().code(),
            StatusCode::kNotFound);

  Register("c", 2);
  EXPECT_EQ(State(id), JobState::kRestarting);  // still in its backoff
  clock_->Advance(seconds(2));
  ASSERT_TRUE(scheduler_->Tick().ok());
  job = Get(id);
  ASSERT_EQ(job.state, JobState::kAdmitted);
  EXPECT_EQ(job.attempt, 2);
  std::vector<Assignment> assignments = Work("a").assignments;
  for (const Assignment& a : Work("c").assignments) assignments.push_back(a);
  ASSERT_EQ(assignments.size(), 4u);
  for (const Assignment& a : assignments) {
    EXPECT_EQ(a.attempt, 2);
    ASSERT_TRUE(a.resume_from_step.has_value());
    EXPECT_EQ(*a.resume_from_step, 100);
  }
  EXPECT_EQ(Reasons(id), (std::vector<std::string>{
                             "SUBMITTED", "ADMITTED", "ALL_RANKS_STARTED",
                             "AGENT_LEASE_EXPIRED", "REQUEUED", "ADMITTED"}));
}

TEST_F(LeaseTest, HeartbeatsKeepAgentAlive) {
  Register("a", 1);
  JobId id = Submit(0);
  StartAll(id);
  for (int i = 0; i < 10; ++i) {
    clock_->Advance(seconds(5));
    ASSERT_TRUE(scheduler_->Heartbeat("a").ok());
    ASSERT_TRUE(scheduler_->Tick().ok());
  }
  EXPECT_EQ(State(id), JobState::kRunning);
  clock_->Advance(options_.agent_lease_ttl);
  ASSERT_TRUE(scheduler_->Tick().ok());
  EXPECT_EQ(State(id), JobState::kFailed);  // max_restarts 0
}

class RestartTest : public SchedulerTest {};

TEST_F(RestartTest, RankFailureKillsOtherRanksAndResumesFromCheckpoint) {
  Register("a", 2);
  JobId id = Submit(0, 2, kDeviceCpu, /*max_restarts=*/1);
  StartAll(id);
  ASSERT_TRUE(scheduler_->ReportCheckpoint(Ref(id, 1), 50).ok());
  Work("a");
  RankExit exit;
  exit.rank = Ref(id, 1);
  exit.exit_code = 3;
  exit.message = "loss is NaN";
  ASSERT_TRUE(scheduler_->ReportRankExit(exit).ok());

  // Backoff 0: straight back in the queue, but rank 0 of attempt 1 still
  // runs in its slot until it has exited.
  Job job = Get(id);
  EXPECT_EQ(job.state, JobState::kQueued);
  EXPECT_EQ(job.attempt, 1);
  const JobEvent& failure = job.history[job.history.size() - 2];
  EXPECT_EQ(failure.reason, "TRAINER_FAILED");
  EXPECT_EQ(failure.to, JobState::kRestarting);
  EXPECT_EQ(failure.message,
            "rank 1 on agent a exited with code 3: loss is NaN");
  EXPECT_EQ(WaitReason(id), "needs 2 cpu slots, 1 free");
  AgentWork work = Work("a");
  ASSERT_EQ(work.kills.size(),
            1u);  // rank 0 of attempt 1; rank 1 already exited
  EXPECT_EQ(work.kills[0].rank, 0);
  EXPECT_EQ(work.kills[0].attempt, 1);
  EXPECT_TRUE(work.assignments.empty());
  ExitKilled(work.kills);
  EXPECT_EQ(State(id), JobState::kAdmitted);
  EXPECT_EQ(Get(id).attempt, 2);
  work = Work("a");
  ASSERT_EQ(work.assignments.size(), 2u);
  EXPECT_EQ(work.assignments[0].attempt, 2);
  EXPECT_EQ(*work.assignments[0].resume_from_step, 50);
}

TEST_F(RestartTest, SignalIsRankLost) {
  Register("a", 1);
  JobId id = Submit(0, 1, kDeviceCpu, 1);
  StartAll(id);
  Exit(id, 0, -9);
  Job job = Get(id);
  const JobEvent& failure = job.history[job.history.size() - 3];
  EXPECT_EQ(failure.reason, "RANK_LOST");
  EXPECT_EQ(failure.message, "rank 0 on agent a was killed by signal 9");
}

TEST_F(RestartTest, BudgetExhaustedFailsJob) {
  Register("a", 1);
  JobId id = Submit(0, 1, kDeviceCpu, /*max_restarts=*/2);
  for (int attempt = 1; attempt <= 3; ++attempt) {
    ASSERT_EQ(Get(id).attempt, attempt);
    StartAll(id);
    Exit(id, 0, 1);
  }
  Job job = Get(id);
  EXPECT_EQ(job.state, JobState::kFailed);
  EXPECT_EQ(job.restarts_used, 2);
  ASSERT_GE(job.history.size(), 2u);
  const JobEvent& restarting = job.history[job.history.size() - 2];
  EXPECT_EQ(restarting.to, JobState::kRestarting);
  EXPECT_EQ(restarting.reason, "TRAINER_FAILED");
  EXPECT_EQ(job.history.back().from, JobState::kRestarting);
  EXPECT_EQ(job.history.back().to, JobState::kFailed);
  EXPECT_EQ(job.history.back().reason, "RESTART_BUDGET_EXHAUSTED");
  EXPECT_EQ(scheduler_->Stats().free_slots.at(kDeviceCpu), 1);
}

TEST_F(RestartTest, EachAttemptGetsTheAgentsNextPort) {
  options_.rendezvous_port_min = 26400;
  options_.rendezvous_port_max = 26402;
  Open();
  Register("a", 1);
  JobId id = Submit(0, 1, kDeviceCpu, /*max_restarts=*/5);
  std::vector<int> ports;
  for (int attempt = 1; attempt <= 4; ++attempt) {
    ASSERT_EQ(Get(id).attempt, attempt);
    ports.push_back(Get(id).rendezvous_port);
    StartAll(id);
    Exit(id, 0, 1);  // a failed rank: restarted at once (no back-off here)
  }
  // Round the range, not the same port again: a port some other process
  // took cannot fail every attempt.
  EXPECT_EQ(ports, (std::vector<int>{26400, 26401, 26402, 26400}));
}

TEST_F(RestartTest, ARendezvousPortInUseIsQuarantinedAndCostsNoRestart) {
  options_.rendezvous_port_min = 26400;
  options_.rendezvous_port_max = 26401;
  options_.port_quarantine = seconds(5);  // shorter than the agent's lease TTL
  options_.restart_backoff = seconds(2);  // a charged restart would wait
  Open();
  Register("a", 2);
  JobId id = Submit(0, 1, kDeviceCpu, /*max_restarts=*/0);
  ASSERT_EQ(Get(id).rendezvous_port, 26400);
  StartAll(id);
  RankExit exit;
  exit.rank = Ref(id, 0);
  exit.exit_code = 5;
  exit.rendezvous_port_in_use = true;
  exit.message = "failed to bind to [::]:26400 (errno: 98 - Address already in use)";
  ASSERT_TRUE(scheduler_->ReportRankExit(exit).ok());
  Job job = Get(id);
  EXPECT_EQ(job.restarts_used, 0);
  EXPECT_EQ(job.state, JobState::kAdmitted);  // at once, with max_restarts 0
  EXPECT_EQ(job.attempt, 2);
  EXPECT_EQ(job.rendezvous_port, 26401);
  const JobEvent& lost = job.history[job.history.size() - 3];
  EXPECT_EQ(lost.reason, "RENDEZVOUS_PORT_IN_USE");
  EXPECT_EQ(lost.message,
            "rank 0 on agent a could not listen on rendezvous port 26400: another process holds "
            "it; the port is not used there for 5s, the next attempt gets another: "
            "failed to bind to [::]:26400 (errno: 98 - Address already in use)");
  EXPECT_EQ(job.history[job.history.size() - 2].message,
            "no restart used (RENDEZVOUS_PORT_IN_USE; 0 of 0 used so far), resuming from the "
            "start (no committed checkpoint)");

  // While 26400 is quarantined (and 26401 held) a second job finds no port.
  JobId other = Submit(0, 1);
  EXPECT_EQ(State(other), JobState::kQueued);
  EXPECT_NE(WaitReason(other).find("no rendezvous port is free in [26400, 26401]"),
            std::string::npos)
      << WaitReason(other);
  // After the quarantine the port is handed out again.
  clock_->Advance(seconds(6));
  ASSERT_TRUE(scheduler_->Tick().ok());
  EXPECT_EQ(State(other), JobState::kAdmitted);
  EXPECT_EQ(Get(other).rendezvous_port, 26400);
}

TEST_F(RestartTest, OnlyRankZerosPortInUseIsFree) {
  Register("a", 2);
  JobId id = Submit(0, 2, kDeviceCpu, /*max_restarts=*/0);
  StartAll(id);
  RankExit exit;
  exit.rank = Ref(id, 1);  // rank 1 listens on no rendezvous port
  exit.exit_code = 5;
  exit.rendezvous_port_in_use = true;
  ASSERT_TRUE(scheduler_->ReportRankExit(exit).ok());
  EXPECT_EQ(State(id), JobState::kFailed);
  EXPECT_EQ(Reasons(id)[Reasons(id).size() - 2], "TRAINER_FAILED");
}

TEST_F(RestartTest, APreemptedRankRestartsTheJobAtOnceWithoutUsingARestart) {
  options_.restart_backoff = seconds(2);  // a charged restart would wait
  Open();
  Register("a", 1);
  JobId id = Submit(0, 1, kDeviceCpu, /*max_restarts=*/0);
  StartAll(id);
  RankExit exit;
  exit.rank = Ref(id, 0);
  exit.exit_code = 3;
  exit.preempted = true;
  ASSERT_TRUE(scheduler_->ReportRankExit(exit).ok());
  Job job = Get(id);
  EXPECT_EQ(job.restarts_used, 0);
  EXPECT_EQ(job.attempt, 2);  // admitted again at once, on the same free slot
  EXPECT_EQ(job.state, JobState::kAdmitted);
  std::vector<std::string> reasons = Reasons(id);
  ASSERT_GE(reasons.size(), 3u);
  EXPECT_EQ(reasons[reasons.size() - 3], "RANK_PREEMPTED");
  EXPECT_EQ(reasons[reasons.size() - 2], "REQUEUED");
  const JobEvent& preempted = job.history[job.history.size() - 3];
  EXPECT_EQ(preempted.message, "rank 0 on agent a stopped on request at a committed checkpoint");
  EXPECT_EQ(job.history[job.history.size() - 2].message,
            "no restart used (RANK_PREEMPTED; 0 of 0 used so far), resuming from the start (no "
            "committed checkpoint)");
  // The same exit without the flag is a failure that spends the budget.
  StartAll(id);
  Exit(id, 0, 3);
  EXPECT_EQ(State(id), JobState::kFailed);
}

TEST_F(RestartTest, ATrainerThatFencedItselfWasLostNotFailed) {
  Register("a", 1);
  JobId id = Submit(0, 1, kDeviceCpu, /*max_restarts=*/1);
  StartAll(id);
  RankExit fenced;
  fenced.rank = Ref(id, 0);
  fenced.exit_code = 4;
  fenced.lease_lost = true;
  ASSERT_TRUE(scheduler_->ReportRankExit(fenced).ok());
  const Job job = Get(id);
  EXPECT_EQ(job.restarts_used, 1);  // a lost lease is charged, as before
  const JobEvent& lost = job.history[job.history.size() - 3];
  EXPECT_EQ(lost.reason, "RANK_LOST");
  EXPECT_EQ(lost.message, "rank 0 on agent a stopped itself: its agent's lease ran out");
}

TEST_F(RestartTest, AFailureThatWouldRecurFailsTheJobAtOnce) {
  Register("a", 1);
  JobId id = Submit(0, 1, kDeviceCpu, /*max_restarts=*/3);
  StartAll(id);
  RankExit exit;
  exit.rank = Ref(id, 0);
  exit.exit_code = 1;
  exit.message = "INVALID_ARGUMENT: bad data";
  exit.retryable = false;
  ASSERT_TRUE(scheduler_->ReportRankExit(exit).ok());
  Job job = Get(id);
  EXPECT_EQ(job.state, JobState::kFailed);
  EXPECT_EQ(job.restarts_used, 0);
  EXPECT_EQ(job.history[job.history.size() - 2].reason, "TRAINER_FAILED");
  EXPECT_EQ(job.history.back().reason, "FAILURE_NOT_RETRYABLE");
  EXPECT_EQ(job.history.back().message,
            "not restarted: the failure would recur on every attempt (3 restarts left unused); "
            "failure: rank 0 on agent a exited with code 1: INVALID_ARGUMENT: bad data");
  EXPECT_EQ(scheduler_->Stats().free_slots.at(kDeviceCpu), 1);
}

TEST_F(RestartTest, BackoffDoublesAndIsCapped) {
  options_.restart_backoff = seconds(2);
  options_.max_restart_backoff = seconds(5);
  Open();
  Register("a", 1);
  JobId id = Submit(0, 1, kDeviceCpu, 5);
  for (int wait : {2, 4, 5, 5}) {
    StartAll(id);
    Exit(id, 0, 1);
    ASSERT_EQ(State(id), JobState::kRestarting);
    EXPECT_EQ(Get(id).restart_not_before - clock_->Now(), seconds(wait));
    clock_->Advance(seconds(wait) - milliseconds(1));
    ASSERT_TRUE(scheduler_->Heartbeat("a").ok());
    ASSERT_TRUE(scheduler_->Tick().ok());
    EXPECT_EQ(State(id), JobState::kRestarting);
    clock_->Advance(milliseconds(1));
    ASSERT_TRUE(scheduler_->Tick().ok());
    ASSERT_EQ(State(id), JobState::kAdmitted);
  }
}

// A rank whose collective failed (trainer exit 6) is a symptom; the rank
// that died is the cause, even when its report comes second.
class CollectiveFailureTest : public RestartTest {
 protected:
  void CollectiveFailed(JobId id, int rank) {
    RankExit exit;
    exit.rank = Ref(id, rank);
    exit.exit_code = 6;
    exit.collective_failed = true;
    exit.failure_code = "UNAVAILABLE";
    exit.message = "UNAVAILABLE: gradient all-reduce failed on rank " + std::to_string(rank) +
                   ": Connection reset by peer";
    Status status = scheduler_->ReportRankExit(exit);
    ASSERT_TRUE(status.ok()) << status;
  }
  // The state change that ended attempt 1.
  JobEvent Restart(JobId id) {
    for (const JobEvent& e : Get(id).history) {
      if (e.to == JobState::kRestarting) return e;
    }
    ADD_FAILURE() << "job " << id << " never restarted";
    return JobEvent();
  }
};

TEST_F(CollectiveFailureTest, TheRankThatDiedIsTheCauseEvenWhenItsReportComesLast) {
  Register("a", 3);
  JobId id = Submit(0, 3, kDeviceCpu, /*max_restarts=*/1);
  StartAll(id);
  Work("a");
  CollectiveFailed(id, 1);
  CollectiveFailed(id, 2);
  // Waiting for rank 0: no restart, no kill order yet.
  Job job = Get(id);
  EXPECT_EQ(job.state, JobState::kRunning);
  ASSERT_TRUE(job.last_failure.has_value());
  EXPECT_EQ(job.last_failure->reason, "COLLECTIVE_FAILED");
  EXPECT_EQ(job.last_failure->rank, 1);  // the first report is kept
  EXPECT_TRUE(Work("a").empty());

  Exit(id, 0, -9);  // say, the OOM killer
  job = Get(id);
  EXPECT_EQ(job.restarts_used, 1);
  const JobEvent restart = Restart(id);
  EXPECT_EQ(restart.reason, "RANK_LOST");
  EXPECT_EQ(restart.message, "rank 0 on agent a was killed by signal 9");
  ASSERT_TRUE(job.last_failure.has_value());
  EXPECT_EQ(job.last_failure->rank, 0);
  EXPECT_EQ(job.last_failure->signal, 9);
  EXPECT_EQ(job.last_failure->reason, "RANK_LOST");
  EXPECT_EQ(job.state, JobState::kAdmitted);  // attempt 2, at once (no back-off)
  EXPECT_EQ(job.attempt, 2);
}

TEST_F(CollectiveFailureTest, EveryRanksCollectiveFailedRestartsAtOnce) {
  Register("a", 2);
  JobId id = Submit(0, 2, kDeviceCpu, /*max_restarts=*/1);
  StartAll(id);
  CollectiveFailed(id, 0);
  EXPECT_EQ(State(id), JobState::kRunning);
  CollectiveFailed(id, 1);  // nobody left to wait for: ranks cut off from each other
  const JobEvent restart = Restart(id);
  EXPECT_EQ(restart.reason, "COLLECTIVE_FAILED");
  EXPECT_EQ(restart.message,
            "rank 0 on agent a: a collective with the other ranks failed: UNAVAILABLE: gradient "
            "all-reduce failed on rank 0: Connection reset by peer");
  Job job = Get(id);
  EXPECT_EQ(job.restarts_used, 1);
  ASSERT_TRUE(job.last_failure.has_value());
  EXPECT_EQ(job.last_failure->rank, 0);
  EXPECT_EQ(job.last_failure->exit_code, 6);
  EXPECT_EQ(job.last_failure->trainer_code, "UNAVAILABLE");
}

TEST_F(CollectiveFailureTest, WithoutTheCauseTheGraceEndsInACollectiveFailure) {
  Register("a", 2);
  JobId id = Submit(0, 2, kDeviceCpu, /*max_restarts=*/1);
  StartAll(id);
  Work("a");
  CollectiveFailed(id, 1);
  clock_->Advance(options_.collective_failure_grace - milliseconds(1));
  ASSERT_TRUE(scheduler_->Tick().ok());
  EXPECT_EQ(State(id), JobState::kRunning);
  clock_->Advance(milliseconds(1));
  ASSERT_TRUE(scheduler_->Tick().ok());
  const JobEvent restart = Restart(id);
  EXPECT_EQ(restart.reason, "COLLECTIVE_FAILED");
  EXPECT_EQ(restart.message,
            "rank 1 on agent a: a collective with the other ranks failed: UNAVAILABLE: gradient "
            "all-reduce failed on rank 1: Connection reset by peer (no rank reported a failure "
            "of its own within 5s)");
  // Rank 0 still ran (hung in the collective, or cut off): it is killed.
  AgentWork work = Work("a");
  ASSERT_EQ(work.kills.size(), 1u);
  EXPECT_EQ(work.kills[0].rank, 0);
  EXPECT_EQ(work.kills[0].reason, "COLLECTIVE_FAILED");
}

TEST_F(CollectiveFailureTest, ARankThatSucceedsAfterAPeersCollectiveFailedDoesNotFinishTheJob) {
  Register("a", 2);
  JobId id = Submit(0, 2, kDeviceCpu, /*max_restarts=*/1);
  StartAll(id);
  CollectiveFailed(id, 1);
  Exit(id, 0, 0);
  EXPECT_NE(State(id), JobState::kSucceeded);
  EXPECT_EQ(Restart(id).reason, "COLLECTIVE_FAILED");
  EXPECT_EQ(Get(id).restarts_used, 1);
}

TEST_F(CollectiveFailureTest, AReloadedSchedulerWaitsOneMoreGrace) {
  Register("a", 2);
  JobId id = Submit(0, 2, kDeviceCpu, /*max_restarts=*/1);
  StartAll(id);
  CollectiveFailed(id, 1);
  Open();  // ternd restarts; rank 0 still runs
  Register("a", 2, kDeviceCpu, {Ref(id, 0)});
  EXPECT_EQ(State(id), JobState::kRunning);
  clock_->Advance(options_.collective_failure_grace);
  ASSERT_TRUE(scheduler_->Tick().ok());
  EXPECT_EQ(Restart(id).reason, "COLLECTIVE_FAILED");
  EXPECT_EQ(Get(id).last_failure->rank, 1);
}

TEST_F(CollectiveFailureTest, NoGraceRestartsAtTheFirstReport) {
  options_.collective_failure_grace = milliseconds(0);
  Open();
  Register("a", 2);
  JobId id = Submit(0, 2, kDeviceCpu, /*max_restarts=*/1);
  StartAll(id);
  CollectiveFailed(id, 1);
  EXPECT_EQ(Restart(id).reason, "COLLECTIVE_FAILED");
  EXPECT_EQ(Restart(id).message.find("no rank reported"), std::string::npos);
}

TEST_F(RestartTest, ReportsAboutOldAttemptsAreIgnored) {
  Register("a", 2);
  JobId id = Submit(0, 2, kDeviceCpu, 1);
  StartAll(id);
  const RankRef old0 = Ref(id, 0);
  Exit(id, 1, 1);
  RankExit killed;
  killed.rank = old0;
  killed.exit_code = -15;  // the kill order did its job: attempt 2 is admitted
  EXPECT_TRUE(scheduler_->ReportRankExit(killed).ok());
  ASSERT_EQ(Get(id).attempt, 2);
  const int64_t seq = Get(id).last_event_seq;

  EXPECT_TRUE(scheduler_->ReportRankExit(killed).ok());
  EXPECT_TRUE(scheduler_->ReportRankStarted(old0).ok());
  EXPECT_TRUE(scheduler_->ReportProgress(old0, "{}").ok());
  EXPECT_TRUE(scheduler_->ReportCheckpoint(old0, 7).ok());
  Job job = Get(id);
  EXPECT_EQ(job.state, JobState::kAdmitted);
  EXPECT_EQ(job.restarts_used, 1);
  EXPECT_EQ(job.last_event_seq, seq);
  EXPECT_FALSE(job.last_checkpoint_step.has_value());

  RankRef future = Ref(id, 0);
  future.attempt = 3;
  EXPECT_EQ(scheduler_->ReportRankStarted(future).code(),
            StatusCode::kFailedPrecondition);
  RankRef wrong_agent = Ref(id, 0);
  wrong_agent.agent_id = "impostor";
  EXPECT_EQ(scheduler_->ReportRankStarted(wrong_agent).code(),
            StatusCode::kFailedPrecondition);
  RankRef bad_rank = Ref(id, 0);
  bad_rank.rank = 2;
  EXPECT_EQ(scheduler_->ReportRankStarted(bad_rank).code(),
            StatusCode::kInvalidArgument);
  RankRef no_job = Ref(id, 0);
  no_job.job_id = 999;
  EXPECT_EQ(scheduler_->ReportRankStarted(no_job).code(),
            StatusCode::kNotFound);
}

TEST_F(RestartTest, KilledRanksKeepTheirSlotsUntilTheyAreSeenToExit) {
  Register("a", 1);
  Register("b", 1);
  JobId id = Submit(0, 2, kDeviceCpu, /*max_restarts=*/1);
  StartAll(id);
  const RankRef stopping = Ref(id, 0);
  Work(stopping.agent_id);
  Exit(id, 1, 1);  // rank 1 fails; rank 0 is told to stop
  ASSERT_EQ(Work(stopping.agent_id).kills.size(), 1u);

  // Rank 0's trainer still runs (its SIGTERM grace): one slot is free, not
  // two, so attempt 2 must not be placed over it.
  EXPECT_EQ(State(id), JobState::kQueued);
  EXPECT_EQ(scheduler_->Stats().free_slots.at(kDeviceCpu), 1);
  for (const AgentSummary& agent : scheduler_->ListAgents()) {
    EXPECT_EQ(agent.used.count(kDeviceCpu) != 0 ? agent.used.at(kDeviceCpu) : 0,
              agent.id == stopping.agent_id ? 1 : 0)
        << agent.id;
  }
  // A heartbeat that still lists it changes nothing (and says to kill it).
  StatusOr<std::vector<RankRef>> unexpected =
      scheduler_->ReconcileRunningRanks(stopping.agent_id, {stopping});
  ASSERT_TRUE(unexpected.ok()) << unexpected.status();
  EXPECT_EQ(unexpected->size(), 1u);
  EXPECT_EQ(State(id), JobState::kQueued);
  // One that no longer lists it shows it exited (its report was lost).
  ASSERT_TRUE(scheduler_->ReconcileRunningRanks(stopping.agent_id, {}).ok());
  EXPECT_EQ(State(id), JobState::kAdmitted);
  EXPECT_EQ(Get(id).attempt, 2);
}

TEST_F(RestartTest, ALostAgentsStoppingRanksHoldNothing) {
  Register("a", 2);
  JobId id = Submit(0, 2, kDeviceCpu, /*max_restarts=*/1);
  StartAll(id);
  Work("a");
  Exit(id, 1, 1);  // rank 0 is told to stop, and its agent is never heard of again
  ASSERT_EQ(State(id), JobState::kQueued);
  clock_->Advance(seconds(11));
  ASSERT_TRUE(scheduler_->Tick().ok());
  Register("a", 2);  // back, running nothing
  EXPECT_EQ(State(id), JobState::kAdmitted);
}

// --- State machine, cancel, success ------------------------------------------

class StateMachineTest : public SchedulerTest {};

TEST_F(StateMachineTest, IllegalRequestsAreRejectedAndChangeNothing) {
  Register("a", 1);
  JobId done = Submit(0);
  Finish(done);
  const int64_t seq = Get(done).last_event_seq;
  StatusOr<std::vector<KillOrder>> cancel = scheduler_->CancelJob(done, "");
  EXPECT_EQ(cancel.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(cancel.status().message().find("SUCCEEDED"), std::string::npos);
  EXPECT_EQ(State(done), JobState::kSucceeded);
  EXPECT_EQ(Get(done).last_event_seq, seq);

  JobId queued = Submit(0, 2);  // cannot fit: never admitted
  ASSERT_EQ(State(queued), JobState::kQueued);
  EXPECT_EQ(scheduler_->ReportRankStarted(RankRef{queued, 1, 0, "a"}).code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(State(queued), JobState::kQueued);
  EXPECT_EQ(scheduler_->CancelJob(999, "").status().code(),
            StatusCode::kNotFound);
}

class CancelTest : public SchedulerTest {};

TEST_F(CancelTest, QueuedJobIsCancelledWithoutKillOrders) {
  JobId id = Submit(0);
  StatusOr<std::vector<KillOrder>> kills =
      scheduler_->CancelJob(id, "changed my mind");
  ASSERT_TRUE(kills.ok()) << kills.status();
  EXPECT_TRUE(kills->empty());
  Job job = Get(id);
  EXPECT_EQ(job.state, JobState::kCancelled);
  EXPECT_EQ(job.history.back().from, JobState::kQueued);
  EXPECT_EQ(job.history.back().reason, "CANCELLED_BY_USER");
  EXPECT_EQ(job.history.back().message, "changed my mind");
  EXPECT_TRUE(scheduler_->QueueOrder().empty());
}

TEST_F(CancelTest, RunningJobIsCancellingAndHoldsItsSlotsUntilEveryRankExited) {
  Register("a", 1);
  Register("b", 1);
  JobId id = Submit(0, 2);
  StartAll(id);
  Work("a");
  Work("b");
  JobId next = Submit(0, 2);
  ASSERT_EQ(State(next), JobState::kQueued);

  StatusOr<std::vector<KillOrder>> kills =
      scheduler_->CancelJob(id, "user asked");
  ASSERT_TRUE(kills.ok()) << kills.status();
  ASSERT_EQ(kills->size(), 2u);
  EXPECT_EQ((*kills)[0].agent_id, "a");
  EXPECT_EQ((*kills)[0].rank, 0);
  EXPECT_EQ((*kills)[1].agent_id, "b");
  EXPECT_EQ((*kills)[1].rank, 1);
  EXPECT_EQ((*kills)[0].reason, "CANCELLED_BY_USER");
  EXPECT_EQ((*kills)[0].attempt, 1);
  EXPECT_EQ(State(id), JobState::kCancelling);
  EXPECT_EQ(Get(id).history.back().from, JobState::kRunning);
  EXPECT_EQ(Get(id).history.back().reason, "CANCELLED_BY_USER");
  EXPECT_EQ(Get(id).history.back().message, "user asked");

  AgentWork wa = Work("a");
  ASSERT_EQ(wa.kills.size(), 1u);
  EXPECT_EQ(wa.kills[0].job_id, id);
  EXPECT_TRUE(wa.assignments.empty());
  // The ranks are in their grace period: their slots are not handed out.
  ASSERT_TRUE(scheduler_->Tick().ok());
  EXPECT_EQ(State(next), JobState::kQueued);
  EXPECT_EQ(scheduler_->Stats().free_slots[kDeviceCpu], 0);
  EXPECT_EQ(scheduler_->WaitReasonOf(next)->code, reason::kInsufficientSlots);

  // Cancelling again changes nothing and sends nothing.
  const int64_t seq = Get(id).last_event_seq;
  StatusOr<std::vector<KillOrder>> again = scheduler_->CancelJob(id, "twice");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->empty());
  EXPECT_EQ(Get(id).last_event_seq, seq);

  RankExit exit;
  exit.rank = RankRef{id, 1, 0, "a"};
  exit.exit_code = -15;
  ASSERT_TRUE(scheduler_->ReportRankExit(exit).ok());
  EXPECT_EQ(State(id), JobState::kCancelling);  // rank 1 still runs
  EXPECT_EQ(State(next), JobState::kQueued);
  exit.rank = RankRef{id, 1, 1, "b"};
  exit.exit_code = 1;
  ASSERT_TRUE(scheduler_->ReportRankExit(exit).ok());
  Job job = Get(id);
  EXPECT_EQ(job.state, JobState::kCancelled);
  EXPECT_EQ(job.history.back().from, JobState::kCancelling);
  EXPECT_EQ(job.history.back().reason, "CANCELLED_BY_USER");
  EXPECT_EQ(job.history.back().message, "user asked");
  EXPECT_FALSE(job.last_failure.has_value()) << "a cancelled rank is not a failure";
  EXPECT_EQ(State(next), JobState::kAdmitted);  // now the slots are free
  // A late repeat changes nothing.
  EXPECT_TRUE(scheduler_->ReportRankExit(exit).ok());
  EXPECT_EQ(State(id), JobState::kCancelled);
}

TEST_F(CancelTest, CancellingEndsWhenTheRanksAgentLeaseExpires) {
  Register("a", 1);
  Register("b", 1);
  JobId id = Submit(0, 2);
  StartAll(id);
  ASSERT_TRUE(scheduler_->CancelJob(id, "stop").ok());
  ASSERT_EQ(State(id), JobState::kCancelling);
  // Rank 0 exits; rank 1's agent goes silent while a keeps its lease.
  Exit(id, 0, -15);
  clock_->Advance(seconds(6));
  ASSERT_TRUE(scheduler_->Heartbeat("a").ok());
  clock_->Advance(seconds(6));
  ASSERT_TRUE(scheduler_->Tick().ok());
  Job job = Get(id);
  EXPECT_EQ(job.state, JobState::kCancelled);
  EXPECT_EQ(job.history.back().message, "stop");
  EXPECT_EQ(job.restarts_used, 0);
}

TEST_F(CancelTest, CancellingKeepsOnlyItsRunningRanksSlotsWhenOneAgentIsLost) {
  Register("a", 1);
  Register("b", 1);
  JobId id = Submit(0, 2);
  StartAll(id);
  ASSERT_TRUE(scheduler_->CancelJob(id, "").ok());
  // b's lease ends while its rank runs; a's rank is still in its grace.
  clock_->Advance(seconds(6));
  ASSERT_TRUE(scheduler_->Heartbeat("a").ok());
  clock_->Advance(seconds(6));
  ASSERT_TRUE(scheduler_->Tick().ok());
  EXPECT_EQ(State(id), JobState::kCancelling);
  EXPECT_EQ(scheduler_->Stats().free_slots[kDeviceCpu], 0);  // a's slot is held
  JobId next = Submit(0, 1);
  EXPECT_EQ(State(next), JobState::kQueued);
  Register("b", 1);
  EXPECT_EQ(State(next), JobState::kAdmitted);  // on b, free again
  Exit(id, 0, -15);
  EXPECT_EQ(State(id), JobState::kCancelled);
  EXPECT_EQ(scheduler_->Stats().free_slots[kDeviceCpu], 1);
}

TEST_F(CancelTest, RecoveredCancellingJobStopsItsRanksAfterARestart) {
  Register("a", 2);
  JobId id = Submit(0, 2);
  StartAll(id);
  ASSERT_TRUE(scheduler_->CancelJob(id, "restart me").ok());
  Open();  // ternd restarts before the ranks have exited
  ASSERT_EQ(State(id), JobState::kCancelling);
  // The agent comes back still running rank 1 only: it is told to stop it
  // again, rank 0 is gone.
  Register("a", 2, kDeviceCpu, {RankRef{id, 1, 1, "a"}});
  EXPECT_EQ(State(id), JobState::kCancelling);
  AgentWork work = Work("a");
  ASSERT_EQ(work.kills.size(), 1u);
  EXPECT_EQ(work.kills[0].rank, 1);
  EXPECT_EQ(work.kills[0].reason, "CANCELLED_BY_USER");
  EXPECT_TRUE(work.assignments.empty());
  EXPECT_EQ(scheduler_->Stats().free_slots[kDeviceCpu], 1);
  Exit(id, 1, -15);
  EXPECT_EQ(State(id), JobState::kCancelled);
  EXPECT_EQ(Get(id).history.back().message, "restart me");
}

TEST_F(CancelTest, RecoveredCancellingJobEndsWhenItsAgentNeverReturns) {
  Register("a", 1);
  JobId id = Submit(0, 1);
  StartAll(id);
  ASSERT_TRUE(scheduler_->CancelJob(id, "").ok());
  Open();
  ASSERT_EQ(State(id), JobState::kCancelling);
  ASSERT_TRUE(scheduler_->Tick().ok());
  EXPECT_EQ(State(id), JobState::kCancelling);
  clock_->Advance(seconds(11));
  ASSERT_TRUE(scheduler_->Tick().ok());
  EXPECT_EQ(State(id), JobState::kCancelled);
}

TEST_F(CancelTest, RankThatStartsWhileCancellingIsWaitedForAndToldToStop) {
  Register("a", 2);
  JobId id = Submit(0, 2);
  ASSERT_TRUE(scheduler_->ReportRankStarted(Ref(id, 0)).ok());
  Work("a");
  ASSERT_TRUE(scheduler_->CancelJob(id, "").ok());
  ASSERT_EQ(State(id), JobState::kCancelling);
  EXPECT_EQ(Work("a").kills.size(), 2u);
  ASSERT_TRUE(scheduler_->ReportRankStarted(Ref(id, 1)).ok());  // raced the kill
  AgentWork work = Work("a");
  ASSERT_EQ(work.kills.size(), 1u);
  EXPECT_EQ(work.kills[0].rank, 1);
  Exit(id, 0, -15);
  EXPECT_EQ(State(id), JobState::kCancelling);
  Exit(id, 1, -15);
  EXPECT_EQ(State(id), JobState::kCancelled);
}

TEST_F(CancelTest, WithdrawsAssignmentsNotYetTaken) {
  Register("a", 2);
  JobId id = Submit(0, 2);
  ASSERT_EQ(State(id), JobState::kAdmitted);
  ASSERT_TRUE(scheduler_->CancelJob(id, "").ok());
  EXPECT_EQ(State(id), JobState::kCancelled);  // no rank had started
  AgentWork work = Work("a");
  EXPECT_TRUE(work.assignments.empty());
  EXPECT_EQ(work.kills.size(), 2u);
}

// --- Failures as data ----------------------------------------------------------

class LastFailureTest : public SchedulerTest {};

TEST_F(LastFailureTest, EveryRankFailureIsRecordedAndStored) {
  Register("a", 2);
  JobId id = Submit(0, 2, kDeviceCpu, /*max_restarts=*/1);
  StartAll(id);
  EXPECT_FALSE(Get(id).last_failure.has_value());
  RankExit exit;
  exit.rank = Ref(id, 1);
  exit.exit_code = 1;
  exit.failure_code = "RESOURCE_EXHAUSTED";
  exit.message = "out of memory";
  ASSERT_TRUE(scheduler_->ReportRankExit(exit).ok());
  Job job = Get(id);
  ASSERT_NE(job.state, JobState::kFailed);  // restarted
  ASSERT_TRUE(job.last_failure.has_value());
  EXPECT_EQ(job.last_failure->attempt, 1);
  EXPECT_EQ(job.last_failure->rank, 1);
  EXPECT_EQ(job.last_failure->agent_id, "a");
  EXPECT_EQ(job.last_failure->exit_code, 1);
  EXPECT_EQ(job.last_failure->signal, 0);
  EXPECT_EQ(job.last_failure->trainer_code, "RESOURCE_EXHAUSTED");
  EXPECT_EQ(job.last_failure->reason, reason::kTrainerFailed);
  EXPECT_NE(job.last_failure->message.find("out of memory"), std::string::npos);
  EXPECT_EQ(job.last_failure->time, clock_->Now());

  // Attempt 2: rank 0 is killed by a signal; the budget is spent: FAILED.
  ASSERT_TRUE(scheduler_->Tick().ok());
  ASSERT_EQ(State(id), JobState::kAdmitted);
  StartAll(id);
  Exit(id, 0, -9);
  job = Get(id);
  ASSERT_EQ(job.state, JobState::kFailed);
  EXPECT_EQ(job.history.back().reason, reason::kRestartBudgetExhausted);
  ASSERT_TRUE(job.last_failure.has_value());
  EXPECT_EQ(job.last_failure->attempt, 2);
  EXPECT_EQ(job.last_failure->rank, 0);
  EXPECT_EQ(job.last_failure->exit_code, 0);
  EXPECT_EQ(job.last_failure->signal, 9);
  EXPECT_EQ(job.last_failure->trainer_code, "");
  EXPECT_EQ(job.last_failure->reason, reason::kRankLost);

  Open();  // stored
  Job reloaded = Get(id);
  ASSERT_TRUE(reloaded.last_failure.has_value());
  EXPECT_EQ(reloaded.last_failure->attempt, 2);
  EXPECT_EQ(reloaded.last_failure->signal, 9);
  EXPECT_EQ(reloaded.last_failure->reason, reason::kRankLost);
  EXPECT_EQ(reloaded.last_failure->message, job.last_failure->message);
  EXPECT_EQ(reloaded.last_failure->time, job.last_failure->time);
}

TEST_F(LastFailureTest, AnExpiredLeaseIsRecordedAgainstTheAgentsFirstRank) {
  Register("a", 1);
  Register("b", 1);
  JobId id = Submit(0, 2, kDeviceCpu, /*max_restarts=*/3);
  StartAll(id);
  clock_->Advance(seconds(6));
  ASSERT_TRUE(scheduler_->Heartbeat("a").ok());
  clock_->Advance(seconds(6));
  ASSERT_TRUE(scheduler_->Tick().ok());
  Job job = Get(id);
  ASSERT_TRUE(job.last_failure.has_value());
  EXPECT_EQ(job.last_failure->agent_id, "b");
  EXPECT_EQ(job.last_failure->rank, 1);
  EXPECT_EQ(job.last_failure->reason, reason::kAgentLeaseExpired);
  EXPECT_EQ(job.restarts_used, 1);
}

TEST_F(LastFailureTest, WaitReasonsCarryTheirCode) {
  Register("a", 2);
  JobId big = Submit(0, 4);
  StatusOr<WaitReasonInfo> wait = scheduler_->WaitReasonOf(big);
  ASSERT_TRUE(wait.ok()) << wait.status();
  EXPECT_EQ(wait->code, reason::kInsufficientSlots);
  EXPECT_EQ(wait->message, "needs 4 cpu slots, only 2 registered");
  JobId running = Submit(0, 2);
  ASSERT_EQ(State(running), JobState::kAdmitted);
  EXPECT_EQ(scheduler_->WaitReasonOf(running)->code, "");
  EXPECT_EQ(scheduler_->WaitReasonOf(999).status().code(), StatusCode::kNotFound);
}

class SuccessTest : public SchedulerTest {};

TEST_F(SuccessTest, JobSucceedsWhenEveryRankExitsZero) {
  Register("a", 2);
  JobId id = Submit(0, 2);
  StartAll(id);
  RankExit exit;
  exit.rank = Ref(id, 0);
  exit.artifact_path = "/ckpt/job-1/model.tern";
  exit.metrics_json = R"({"top1": 0.91})";
  ASSERT_TRUE(scheduler_->ReportRankExit(exit).ok());
  EXPECT_EQ(State(id), JobState::kRunning);  // rank 1 still runs
  Exit(id, 1, 0);
  Job job = Get(id);
  EXPECT_EQ(job.state, JobState::kSucceeded);
  EXPECT_EQ(job.artifact_path, "/ckpt/job-1/model.tern");
  EXPECT_EQ(job.metrics_json, R"({"top1": 0.91})");
  EXPECT_EQ(job.history.back().reason, "ALL_RANKS_SUCCEEDED");
  EXPECT_EQ(scheduler_->Stats().free_slots.at(kDeviceCpu), 2);
}

TEST_F(SuccessTest, ExitBeforeStartReportStillPassesThroughRunning) {
  Register("a", 2);
  JobId id = Submit(0, 2);
  Exit(id, 1, 0);  // its start report was never seen
  EXPECT_EQ(State(id), JobState::kAdmitted);
  ASSERT_TRUE(scheduler_->ReportRankStarted(Ref(id, 0)).ok());
  EXPECT_EQ(State(id), JobState::kRunning);
  Exit(id, 0, 0);
  EXPECT_EQ(Reasons(id), (std::vector<std::string>{"SUBMITTED", "ADMITTED",
                                                   "ALL_RANKS_STARTED",
                                                   "ALL_RANKS_SUCCEEDED"}));
}

// --- Idempotency and persistence ---------------------------------------------

class IdempotencyTest : public SchedulerTest {};

TEST_F(IdempotencyTest, SameOwnerAndKeyReturnsExistingJob) {
  JobRequest request = Request(0);
  request.idempotency_key = "retry-me";
  StatusOr<SubmitResult> first = scheduler_->SubmitJob(request);
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(first->created);
  request.priority = 9;  // a retry is not a new job, whatever it says
  StatusOr<SubmitResult> again = scheduler_->SubmitJob(request);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->job.id, first->job.id);
  EXPECT_EQ(again->job.priority, 0);

  request.owner = "bob";
  StatusOr<SubmitResult> bob = scheduler_->SubmitJob(request);
  ASSERT_TRUE(bob.ok());
  EXPECT_TRUE(bob->created);
  EXPECT_NE(bob->job.id, first->job.id);

  Open();  // the key survives a restart
  request.owner = "alice";
  StatusOr<SubmitResult> after = scheduler_->SubmitJob(request);
  ASSERT_TRUE(after.ok());
  EXPECT_FALSE(after->created);
  EXPECT_EQ(after->job.id, first->job.id);
  EXPECT_EQ(InState(JobState::kQueued).size(), 2u);
}

class PersistenceTest : public SchedulerTest {};

TEST_F(PersistenceTest, ReopenKeepsJobsEventsAndKeys) {
  Register("a", 2);
  JobRequest request = Request(0, 2);
  request.labels = {{"team", "vision"}};
  request.idempotency_key = "k-run";
  request.spec = std::string("binary\0spec", 11);
  JobId running = Submit(request);
  StartAll(running);
  ASSERT_TRUE(
      scheduler_->ReportProgress(Ref(running, 0), R"({"epoch":1})").ok());
  ASSERT_TRUE(scheduler_->ReportCheckpoint(Ref(running, 0), 10).ok());
  JobId high = Submit(5, 4);
  clock_->Advance(seconds(1));
  JobId low = Submit(1, 4);
  JobId cancelled = Submit(0, 4);
  ASSERT_TRUE(scheduler_->CancelJob(cancelled, "no").ok());

  std::vector<Job> before;
  std::vector<std::vector<JobEvent>> events_before;
  for (JobId id : {running, high, low, cancelled}) {
    before.push_back(Get(id));
    events_before.push_back(*scheduler_->ReadEvents(id, 0, 0));
  }
  const std::vector<JobId> order = scheduler_->QueueOrder();

  Open();
  for (size_t i = 0; i < before.size(); ++i) {
    const Job& want = before[i];
    Job got = Get(want.id);
    EXPECT_EQ(got.state, want.state);
    EXPECT_EQ(got.owner, want.owner);
    EXPECT_EQ(got.labels, want.labels);
    EXPECT_EQ(got.priority, want.priority);
    EXPECT_EQ(got.spec, want.spec);
    EXPECT_EQ(got.submit_time, want.submit_time);
    EXPECT_EQ(got.attempt, want.attempt);
    EXPECT_EQ(got.last_checkpoint_step, want.last_checkpoint_step);
    EXPECT_EQ(got.last_event_seq, want.last_event_seq);
    EXPECT_EQ(got.rendezvous_port, want.rendezvous_port);
    ASSERT_EQ(got.ranks.size(), want.ranks.size());
    for (size_t r = 0; r < got.ranks.size(); ++r) {
      EXPECT_EQ(got.ranks[r].agent_id, want.ranks[r].agent_id);
      EXPECT_EQ(got.ranks[r].state, want.ranks[r].state);
    }
    ASSERT_EQ(got.history.size(), want.history.size());
    for (size_t e = 0; e < got.history.size(); ++e) {
      EXPECT_EQ(got.history[e].seq, want.history[e].seq);
      EXPECT_EQ(got.history[e].reason, want.history[e].reason);
    }
    std::vector<JobEvent> events = *scheduler_->ReadEvents(want.id, 0, 0);
    ASSERT_EQ(events.size(), events_before[i].size());
    for (size_t e = 0; e < events.size(); ++e) {
      EXPECT_EQ(events[e].seq, static_cast<int64_t>(e + 1));
      EXPECT_EQ(events[e].type, events_before[i][e].type);
      EXPECT_EQ(events[e].reason, events_before[i][e].reason);
      EXPECT_EQ(events[e].payload, events_before[i][e].payload);
      EXPECT_EQ(events[e].time, events_before[i][e].time);
    }
  }
  EXPECT_EQ(Get(running).state, JobState::kRunning);
  EXPECT_EQ(scheduler_->ReadEvents(running, 0, 0)->at(3).payload,
            R"({"epoch":1})");
  EXPECT_EQ(scheduler_->QueueOrder(), order);
  EXPECT_EQ(order, (std::vector<JobId>{high, low}));
  StatusOr<SubmitResult> retry = scheduler_->SubmitJob(request);
  ASSERT_TRUE(retry.ok());
  EXPECT_FALSE(retry->created);
  EXPECT_EQ(retry->job.id, running);
  EXPECT_EQ(Submit(0), cancelled + 1);  // ids are never reused
}

TEST_F(PersistenceTest, RunningJobContinuesWhenItsAgentReregisters) {
  Register("a", 2);
  JobId id = Submit(0, 2);
  StartAll(id);
  const std::vector<RankRef> running = {Ref(id, 0), Ref(id, 1)};
  Open();
  EXPECT_EQ(State(id), JobState::kRunning);
  EXPECT_EQ(scheduler_->Heartbeat("a").status().code(), StatusCode::kNotFound);
  Register("a", 2, kDeviceCpu, running);
  EXPECT_EQ(State(id), JobState::kRunning);
  EXPECT_EQ(Get(id).attempt, 1);
  EXPECT_TRUE(Work("a").empty());
  EXPECT_EQ(scheduler_->Stats().free_slots.at(kDeviceCpu), 0);
  Exit(id, 0, 0);
  Exit(id, 1, 0);
  EXPECT_EQ(State(id), JobState::kSucceeded);
}

TEST_F(PersistenceTest, UnstartedRanksAreAssignedAgainAfterRestart) {
  Register("a", 2);
  JobId id = Submit(0, 2);
  ASSERT_TRUE(scheduler_->ReportRankStarted(Ref(id, 0)).ok());
  const RankRef rank0 = Ref(id, 0);
  Open();
  Register("a", 2, kDeviceCpu, {rank0});
  AgentWork work = Work("a");
  EXPECT_TRUE(work.kills.empty());
  ASSERT_EQ(work.assignments.size(), 1u);
  EXPECT_EQ(work.assignments[0].rank, 1);
  EXPECT_EQ(work.assignments[0].attempt, 1);
  EXPECT_EQ(State(id), JobState::kAdmitted);
}

TEST_F(PersistenceTest, AgentThatDoesNotReturnRestartsItsJobs) {
  Register("a", 2);
  JobId id = Submit(0, 2, kDeviceCpu, /*max_restarts=*/1);
  StartAll(id);
  Open();
  clock_->Advance(options_.agent_lease_ttl);
  ASSERT_TRUE(scheduler_->Tick().ok());
  Job job = Get(id);
  EXPECT_EQ(job.state, JobState::kQueued);
  const JobEvent& lost = job.history[job.history.size() - 2];
  EXPECT_EQ(lost.reason, "AGENT_LEASE_EXPIRED");
  EXPECT_NE(lost.message.find("did not re-register"), std::string::npos)
      << lost.message;
}

TEST_F(PersistenceTest, StartedRankMissingFromReregistrationRestartsJob) {
  Register("a", 2);
  JobId id = Submit(0, 2, kDeviceCpu, /*max_restarts=*/1);
  StartAll(id);
  const RankRef rank0 = Ref(id, 0);
  Open();
  Register("a", 2, kDeviceCpu, {rank0});  // rank 1 died while ternd was down
  Job job = Get(id);
  EXPECT_EQ(job.state, JobState::kQueued);  // rank 0 still runs in its slot
  const JobEvent& lost = job.history[job.history.size() - 2];
  EXPECT_EQ(lost.reason, "RANK_LOST");
  EXPECT_EQ(lost.message, "agent a re-registered without rank(s) 1");
  AgentWork work = Work("a");
  ASSERT_EQ(work.kills.size(), 1u);
  EXPECT_EQ(work.kills[0].rank, 0);
  EXPECT_EQ(work.kills[0].attempt, 1);
  ExitKilled(work.kills);
  EXPECT_EQ(Get(id).attempt, 2);
  EXPECT_EQ(Work("a").assignments.size(), 2u);
}

TEST_F(PersistenceTest, GarbageDbFileIsAnError) {
  const std::string path = (dir_.path() / "garbage.db").string();
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    for (int i = 0; i < 4096; ++i) std::fputc((i * 7919) & 0xff, f);
    std::fclose(f);
  }
  StatusOr<std::unique_ptr<SqliteJobStore>> store = SqliteJobStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kDataLoss) << store.status();
}

// --- Agents ------------------------------------------------------------------

class AgentTest : public SchedulerTest {};

TEST_F(AgentTest, RanksTheSchedulerDoesNotKnowAreKilled) {
  Register("a", 1, kDeviceCpu, {RankRef{42, 1, 0, "a"}});
  AgentWork work = Work("a");
  ASSERT_EQ(work.kills.size(), 1u);
  EXPECT_EQ(work.kills[0].job_id, 42);
  EXPECT_EQ(work.kills[0].reason, "STALE_RANK");
}

TEST_F(AgentTest, DeregisterRestartsItsJobs) {
  Register("a", 1);
  Register("b", 1);
  JobId id = Submit(0, 2, kDeviceCpu, 1);
  StartAll(id);
  Work("a");
  ASSERT_TRUE(scheduler_->DeregisterAgent("b").ok());
  EXPECT_EQ(State(id), JobState::kQueued);
  EXPECT_EQ(Reasons(id)[3], "AGENT_DEREGISTERED");
  EXPECT_EQ(Get(id).restarts_used, 0);  // it left on purpose: not the job's failure
  EXPECT_EQ(WaitReason(id), "needs 2 cpu slots, only 1 registered");
  EXPECT_EQ(Work("a").kills.size(), 1u);
  EXPECT_EQ(scheduler_->TakeAgentWork("b").status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(scheduler_->DeregisterAgent("b").code(), StatusCode::kNotFound);
}

TEST_F(AgentTest, ADrainingAgentGetsNoNewWorkUntilItRegistersAgain) {
  Register("a", 1);
  Register("b", 2);
  ASSERT_TRUE(scheduler_->DrainAgent("b").ok());
  ASSERT_TRUE(scheduler_->DrainAgent("b").ok());  // idempotent
  EXPECT_EQ(scheduler_->Stats().total_slots.at(kDeviceCpu), 1);
  JobId first = Submit(0, 1);
  EXPECT_EQ(Get(first).ranks[0].agent_id, "a");
  const std::vector<AgentSummary> agents = scheduler_->ListAgents();
  ASSERT_EQ(agents.size(), 2u);
  EXPECT_EQ(agents[0].id, "a");
  EXPECT_FALSE(agents[0].draining);
  EXPECT_EQ(agents[0].used.at(kDeviceCpu), 1);
  EXPECT_TRUE(agents[1].draining);
  EXPECT_TRUE(agents[1].live);
  EXPECT_EQ(agents[1].slots.at(kDeviceCpu), 2);
  JobId second = Submit(0, 1);
  EXPECT_EQ(State(second), JobState::kQueued);  // b has room but is draining
  Register("b", 2);                              // a new agent process on that node
  EXPECT_EQ(State(second), JobState::kAdmitted);
  EXPECT_EQ(Get(second).ranks[0].agent_id, "b");
  EXPECT_EQ(scheduler_->DrainAgent("nobody").code(), StatusCode::kNotFound);
}

TEST_F(AgentTest, TakeAgentWorkBlocksUntilWorkArrives) {
  Register("a", 1);
  StatusOr<AgentWork> none = scheduler_->TakeAgentWork("a", milliseconds(10));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  std::thread submitter([this] {
    std::this_thread::sleep_for(milliseconds(50));
    Submit(0);
  });
  StatusOr<AgentWork> work = scheduler_->TakeAgentWork("a", seconds(10));
  submitter.join();
  ASSERT_TRUE(work.ok()) << work.status();
  EXPECT_EQ(work->assignments.size(), 1u);
}

TEST_F(AgentTest, RegistrationIsValidated) {
  AgentRegistration reg;
  reg.host = "h";
  reg.slots = {{"cpu", 1}};
  EXPECT_EQ(scheduler_->RegisterAgent(reg).status().code(),
            StatusCode::kInvalidArgument);
  reg.agent_id = "a";
  reg.slots = {{"tpu", 1}};
  EXPECT_EQ(scheduler_->RegisterAgent(reg).status().code(),
            StatusCode::kInvalidArgument);
  reg.slots = {{"cuda", -1}};
  EXPECT_EQ(scheduler_->RegisterAgent(reg).status().code(),
            StatusCode::kInvalidArgument);
  reg.slots = {{"cuda", 1}};
  reg.running = {RankRef{1, 1, 0, "someone-else"}};
  EXPECT_EQ(scheduler_->RegisterAgent(reg).status().code(),
            StatusCode::kInvalidArgument);
}

// --- Listing and events ------------------------------------------------------

class ListJobsTest : public SchedulerTest {};

TEST_F(ListJobsTest, FiltersByStateOwnerAndLabel) {
  Register("a", 1);
  auto submit = [&](const std::string& owner, const std::string& team) {
    JobRequest r = Request(0);
    r.owner = owner;
    r.labels = {{"team", team}};
    return Submit(r);
  };
  JobId j1 = submit("alice", "vision");
  JobId j2 = submit("bob", "nlp");
  JobId j3 = submit("alice", "nlp");
  ASSERT_TRUE(scheduler_->CancelJob(j3, "").ok());

  ListJobsQuery q;
  q.states = {JobState::kQueued};
  EXPECT_EQ(Ids(q), (std::vector<JobId>{j2}));
  q = ListJobsQuery();
  q.owner = "alice";
  EXPECT_EQ(Ids(q), (std::vector<JobId>{j1, j3}));
  q = ListJobsQuery();
  q.labels = {{"team", "nlp"}};
  EXPECT_EQ(Ids(q), (std::vector<JobId>{j2, j3}));
  q.owner = "alice";
  EXPECT_EQ(Ids(q), (std::vector<JobId>{j3}));
  q = ListJobsQuery();
  q.labels = {{"project", "x"}};
  EXPECT_TRUE(Ids(q).empty());
}

TEST_F(ListJobsTest, PagesInIdOrderWithOpaqueTokens) {
  for (int i = 0; i < 7; ++i) Submit(0);
  ListJobsQuery q;
  q.page_size = 3;
  std::vector<std::vector<JobId>> pages;
  for (;;) {
    StatusOr<ListJobsResult> page = scheduler_->ListJobs(q);
    ASSERT_TRUE(page.ok()) << page.status();
    std::vector<JobId> ids;
    for (const Job& job : page->jobs) ids.push_back(job.id);
    pages.push_back(ids);
    if (pages.size() == 1) Submit(0);  // a new job lands on a later page
    if (page->next_page_token.empty()) break;
    q.page_token = page->next_page_token;
  }
  EXPECT_EQ(pages,
            (std::vector<std::vector<JobId>>{{1, 2, 3}, {4, 5, 6}, {7, 8}}));

  q.page_token = "garbage";
  EXPECT_EQ(scheduler_->ListJobs(q).status().code(),
            StatusCode::kInvalidArgument);
  q.page_token = "";
  q.page_size = -1;
  EXPECT_EQ(scheduler_->ListJobs(q).status().code(),
            StatusCode::kInvalidArgument);
  q.page_size = 100000;  // lowered to max_page_size
  StatusOr<ListJobsResult> all = scheduler_->ListJobs(q);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->jobs.size(), 8u);
  EXPECT_TRUE(all->next_page_token.empty());
}

class EventsTest : public SchedulerTest {};

TEST_F(EventsTest, ReadEventsResumesFromSequenceNumber) {
  Register("a", 1);
  JobId id = Submit(0);
  StartAll(id);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(
        scheduler_
            ->ReportProgress(Ref(id, 0), "{\"step\":" + std::to_string(i) + "}")
            .ok());
  }
  StatusOr<std::vector<JobEvent>> all = scheduler_->ReadEvents(id, 0, 0);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 6u);
  for (size_t i = 0; i < all->size(); ++i) {
    EXPECT_EQ((*all)[i].seq, static_cast<int64_t>(i + 1));
  }
  EXPECT_EQ((*all)[0].reason, "SUBMITTED");
  EXPECT_EQ((*all)[3].type, JobEventType::kProgress);
  StatusOr<std::vector<JobEvent>> tail = scheduler_->ReadEvents(id, 4, 1);
  ASSERT_TRUE(tail.ok());
  ASSERT_EQ(tail->size(), 1u);
  EXPECT_EQ((*tail)[0].seq, 5);
  EXPECT_EQ((*tail)[0].payload, "{\"step\":1}");
  EXPECT_TRUE(scheduler_->ReadEvents(id, 6, 0)->empty());
  EXPECT_EQ(scheduler_->ReadEvents(id, -1, 0).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(scheduler_->ReadEvents(999, 0, 0).status().code(),
            StatusCode::kNotFound);
}

TEST_F(EventsTest, ReadEventsWaitsForTheNextEvent) {
  JobId id = Submit(0);
  const int64_t seq = Get(id).last_event_seq;
  StatusOr<std::vector<JobEvent>> none =
      scheduler_->ReadEvents(id, seq, 0, milliseconds(10));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  std::thread canceller([&] {
    std::this_thread::sleep_for(milliseconds(50));
    EXPECT_TRUE(scheduler_->CancelJob(id, "bye").ok());
  });
  StatusOr<std::vector<JobEvent>> next =
      scheduler_->ReadEvents(id, seq, 0, seconds(10));
  canceller.join();
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_EQ(next->size(), 1u);
  EXPECT_EQ((*next)[0].to, JobState::kCancelled);
  EXPECT_EQ((*next)[0].seq, seq + 1);
}

// --- Failures of the store and of requests -----------------------------------

class StoreFailureTest : public SchedulerTest {
 protected:
  FaultyJobStore* OpenFaulty() {
    StatusOr<std::unique_ptr<SqliteJobStore>> store =
        SqliteJobStore::Open(DbPath());
    EXPECT_TRUE(store.ok()) << store.status();
    auto faulty = std::make_unique<FaultyJobStore>(std::move(store).value());
    FaultyJobStore* raw = faulty.get();
    OpenWith(std::move(faulty));
    return raw;
  }
};

TEST_F(StoreFailureTest, FailedWriteIsNotAcknowledged) {
  FaultyJobStore* store = OpenFaulty();
  Register("a", 1);
  store->fail_writes = true;
  StatusOr<SubmitResult> lost = scheduler_->SubmitJob(Request(0));
  EXPECT_EQ(lost.status().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(Ids(ListJobsQuery()).empty());

  store->fail_writes = false;
  JobId id = Submit(0);
  EXPECT_EQ(id, 1);
  ASSERT_EQ(State(id), JobState::kAdmitted);
  store->fail_writes = true;
  EXPECT_FALSE(scheduler_->CancelJob(id, "").ok());
  EXPECT_FALSE(scheduler_->ReportRankStarted(Ref(id, 0)).ok());
  EXPECT_EQ(State(id), JobState::kAdmitted);
  AgentWork work = Work("a");
  EXPECT_TRUE(work.kills.empty());
  EXPECT_EQ(work.assignments.size(), 1u);

  store->fail_writes = false;
  Open();  // what was acknowledged, and nothing else
  EXPECT_EQ(Ids(ListJobsQuery()), (std::vector<JobId>{1}));
  EXPECT_EQ(State(id), JobState::kAdmitted);
  EXPECT_EQ(Reasons(id), (std::vector<std::string>{"SUBMITTED", "ADMITTED"}));
}

TEST_F(StoreFailureTest, LeaseExpiryIsRetriedAfterStoreRecovers) {
  FaultyJobStore* store = OpenFaulty();
  Register("a", 1);
  JobId id = Submit(0, 1, kDeviceCpu, 1);
  StartAll(id);
  clock_->Advance(options_.agent_lease_ttl);
  store->fail_writes = true;
  EXPECT_FALSE(scheduler_->Tick().ok());
  EXPECT_EQ(State(id), JobState::kRunning);
  store->fail_writes = false;
  ASSERT_TRUE(scheduler_->Tick().ok());
  EXPECT_EQ(State(id), JobState::kQueued);
  EXPECT_EQ(Reasons(id)[3], "AGENT_LEASE_EXPIRED");
}

// --- Relabel and delete (UpdateJob, DeleteJob) ---------------------------------

class RelabelAndDeleteTest : public StoreFailureTest {};

TEST_F(RelabelAndDeleteTest, RelabelReplacesSpecAndLabelsDurablyWithoutAnEvent) {
  JobRequest request = Request(0);
  request.labels = {{"team", "red"}};
  const JobId id = Submit(request);
  const size_t events = Get(id).history.size();
  StatusOr<Job> relabeled = scheduler_->RelabelJob(id, [](const Job& now) -> StatusOr<Relabel> {
    EXPECT_EQ(now.labels.at("team"), "red");
    return Relabel{{{"team", "blue"}}, "new spec"};
  });
  ASSERT_TRUE(relabeled.ok()) << relabeled.status();
  EXPECT_EQ(relabeled->labels.at("team"), "blue");
  for (int restart = 0; restart < 2; ++restart) {
    ListJobsQuery query;
    query.labels = {{"team", "blue"}};
    EXPECT_EQ(Ids(query), std::vector<JobId>{id});
    query.labels = {{"team", "red"}};
    EXPECT_TRUE(Ids(query).empty());
    EXPECT_EQ(Get(id).spec, "new spec");
    EXPECT_EQ(Get(id).history.size(), events);
    EXPECT_EQ(State(id), JobState::kQueued);
    Open();
  }
  EXPECT_EQ(scheduler_->RelabelJob(99,
                                   [](const Job&) {
                                     return Relabel{{}, "x"};
                                   })
                .status()
                .code(),
            StatusCode::kNotFound);
  // The change's error is the answer, and nothing changes.
  EXPECT_EQ(
      scheduler_
          ->RelabelJob(
              id, [](const Job&) -> StatusOr<Relabel> { return AbortedError("changed meanwhile"); })
          .status()
          .code(),
      StatusCode::kAborted);
  EXPECT_EQ(Get(id).spec, "new spec");
}

TEST_F(RelabelAndDeleteTest, DeleteRemovesOnlyEndedJobsAndFreesTheIdempotencyKey) {
  JobRequest request = Request(0);
  request.idempotency_key = "k";
  request.labels = {{"team", "red"}};
  const JobId id = Submit(request);
  EXPECT_EQ(scheduler_->DeleteJob(id).status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(scheduler_->CancelJob(id, "").ok());
  const int cancelled_before = scheduler_->Stats().jobs[JobState::kCancelled];
  StatusOr<Job> deleted = scheduler_->DeleteJob(id);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->id, id);
  EXPECT_EQ(scheduler_->GetJob(id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(scheduler_->DeleteJob(id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(scheduler_->Stats().jobs[JobState::kCancelled], cancelled_before - 1);
  StatusOr<std::vector<JobEvent>> events = scheduler_->ReadEvents(id, 0, 100);
  EXPECT_TRUE(!events.ok() || events->empty());
  // The key makes a new job now, and the new id is not the deleted one's.
  StatusOr<SubmitResult> again = scheduler_->SubmitJob(request);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->created);
  EXPECT_NE(again->job.id, id);
  Open();  // the store agrees
  EXPECT_EQ(scheduler_->GetJob(id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(Ids(ListJobsQuery()), std::vector<JobId>{again->job.id});
}

TEST_F(RelabelAndDeleteTest, TheNewestJobsIdStaysTakenAfterItsDeletionAndARestart) {
  const JobId first = Submit(Request(0));
  const JobId newest = Submit(Request(0));
  ASSERT_GT(newest, first);
  ASSERT_TRUE(scheduler_->CancelJob(newest, "").ok());
  ASSERT_TRUE(scheduler_->DeleteJob(newest).ok());
  Open();  // a restart: the store alone says which ids were issued
  const JobId next = Submit(Request(0));
  EXPECT_GT(next, newest);
  // And once more after the new job is deleted too.
  ASSERT_TRUE(scheduler_->CancelJob(next, "").ok());
  ASSERT_TRUE(scheduler_->DeleteJob(next).ok());
  Open();
  EXPECT_GT(Submit(Request(0)), next);
}

TEST_F(RelabelAndDeleteTest, AFailedWriteChangesNothing) {
  FaultyJobStore* store = OpenFaulty();
  JobRequest request = Request(0);
  request.labels = {{"team", "red"}};
  const JobId id = Submit(request);
  ASSERT_TRUE(scheduler_->CancelJob(id, "").ok());
  store->fail_writes = true;
  EXPECT_EQ(scheduler_->RelabelJob(id,
                                   [](const Job&) {
                                     return Relabel{{{"team", "blue"}}, "x"};
                                   })
                .status()
                .code(),
            StatusCode::kUnavailable);
  EXPECT_EQ(scheduler_->DeleteJob(id).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(Get(id).labels.at("team"), "red");
  EXPECT_EQ(State(id), JobState::kCancelled);
  store->fail_writes = false;
  Open();
  EXPECT_EQ(Get(id).labels.at("team"), "red");
  EXPECT_EQ(Get(id).spec, request.spec);
}

class ValidationTest : public SchedulerTest {};

TEST_F(ValidationTest, InvalidRequestsNameTheFieldAndStoreNothing) {
  struct Case {
    void (*mutate)(JobRequest*);
    const char* field;
  };
  const Case cases[] = {
      {[](JobRequest* r) { r->owner = ""; }, "owner"},
      {[](JobRequest* r) { r->world_size = 0; }, "world_size"},
      {[](JobRequest* r) { r->world_size = 5000; }, "world_size"},
      {[](JobRequest* r) { r->device_kind = "tpu"; }, "device_kind"},
      {[](JobRequest* r) { r->max_restarts = -1; }, "max_restarts"},
      {[](JobRequest* r) {
         r->labels = {{"a=b", "c"}};
       },
       "labels"},
      {[](JobRequest* r) { r->idempotency_key = std::string(300, 'k'); },
       "idempotency_key"},
  };
  for (const Case& c : cases) {
    JobRequest request = Request(0);
    c.mutate(&request);
    StatusOr<SubmitResult> result = scheduler_->SubmitJob(request);
    EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument) << c.field;
    EXPECT_EQ(result.status().message().rfind(c.field, 0), 0u)
        << result.status();
  }
  EXPECT_TRUE(Ids(ListJobsQuery()).empty());
}

TEST_F(ValidationTest, BadOptionsAreRejected) {
  SchedulerOptions options;
  options.agent_lease_ttl = milliseconds(0);
  StatusOr<std::unique_ptr<SqliteJobStore>> store =
      SqliteJobStore::Open(DbPath());
  ASSERT_TRUE(store.ok());
  StatusOr<std::unique_ptr<Scheduler>> scheduler =
      Scheduler::Create(options, std::move(store).value(), clock_);
  EXPECT_EQ(scheduler.status().code(), StatusCode::kInvalidArgument);
}

// --- Quotas ------------------------------------------------------------------

class QuotaTest : public SchedulerTest {
 protected:
  void SetQuotas(const std::string& text) {
    StatusOr<QuotaTable> table = QuotaTable::Parse(text, "quotas");
    ASSERT_TRUE(table.ok()) << table.status();
    scheduler_->SetQuotas(*std::move(table));
  }
  JobId SubmitAs(const std::string& owner, int world_size, const std::string& kind = kDeviceCpu,
                 int priority = 0) {
    JobRequest r = Request(priority, world_size, kind);
    r.owner = owner;
    return Submit(r);
  }
  Status TrySubmitAs(const std::string& owner, int world_size,
                     const std::string& kind = kDeviceCpu, const std::string& key = "") {
    JobRequest r = Request(0, world_size, kind);
    r.owner = owner;
    r.idempotency_key = key;
    return scheduler_->SubmitJob(r).status();
  }
};

TEST_F(QuotaTest, AnOwnerAtItsSlotQuotaWaitsWithoutHoldingBackOthers) {
  // Strict priority order: a head job that cannot fit would reserve the kind.
  options_.backfill_window = seconds(0);
  Open();
  SetQuotas("alice cpu=2\n");
  Register("n1", 4);
  const JobId a1 = SubmitAs("alice", 2, kDeviceCpu, /*priority=*/9);
  const JobId a2 = SubmitAs("alice", 2, kDeviceCpu, /*priority=*/9);
  const JobId b1 = SubmitAs("bob", 2);
  EXPECT_EQ(State(a1), JobState::kAdmitted);
  EXPECT_EQ(State(a2), JobState::kQueued);
  EXPECT_EQ(WaitReason(a2),
            "needs 2 cpu slots, but owner alice holds 2 of the 2 cpu slots alice's quota allows");
  EXPECT_EQ(State(b1), JobState::kAdmitted) << WaitReason(b1);
  EXPECT_EQ(scheduler_->Stats().jobs_waiting_on_quota, 1);

  Finish(a1);  // alice's slots come back: her next job starts
  EXPECT_EQ(State(a2), JobState::kAdmitted) << WaitReason(a2);
  EXPECT_EQ(scheduler_->Stats().jobs_waiting_on_quota, 0);
}

TEST_F(QuotaTest, TheDefaultLineAppliesToOwnersWithoutTheirOwn) {
  SetQuotas("* cpu=1\nalice cpu=3\n");
  Register("n1", 8);
  const JobId b1 = SubmitAs("bob", 1);
  const JobId b2 = SubmitAs("bob", 1);
  const JobId a1 = SubmitAs("alice", 3);
  EXPECT_EQ(State(b1), JobState::kAdmitted);
  EXPECT_EQ(State(b2), JobState::kQueued);
  EXPECT_NE(WaitReason(b2).find("the 1 cpu slot the default quota (*) allows"),
            std::string::npos)
      << WaitReason(b2);
  EXPECT_EQ(State(a1), JobState::kAdmitted);
  // A kind without a limit is unlimited.
  Register("g1", 4, kDeviceCuda);
  EXPECT_EQ(State(SubmitAs("bob", 4, kDeviceCuda)), JobState::kAdmitted);
}

TEST_F(QuotaTest, SubmitRefusesJobsTheQuotaCanNeverAdmitOrThatExceedTheJobLimit) {
  SetQuotas("alice cuda=4 jobs=2\ncarol cuda=0\n");
  Status too_wide = TrySubmitAs("alice", 8, kDeviceCuda);
  EXPECT_EQ(too_wide.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(too_wide.message(),
            "the job needs 8 cuda slots at once, and alice's quota lets owner alice hold at most "
            "4: it could never start (ask for fewer ranks, or for a larger quota)");
  EXPECT_EQ(TrySubmitAs("carol", 1, kDeviceCuda).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(TrySubmitAs("carol", 1, kDeviceCpu).ok());

  ASSERT_TRUE(TrySubmitAs("alice", 1, kDeviceCpu, "key-1").ok());
  ASSERT_TRUE(TrySubmitAs("alice", 4, kDeviceCuda).ok());
  Status third = TrySubmitAs("alice", 1);
  EXPECT_EQ(third.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(third.message(),
            "owner alice has 2 unfinished jobs, the most alice's quota allows (jobs=2); submit "
            "again when one ends, or cancel one");
  // A retry of a job that was accepted is answered, not refused.
  EXPECT_TRUE(TrySubmitAs("alice", 1, kDeviceCpu, "key-1").ok());
  // Refused submissions stored nothing.
  ListJobsQuery mine;
  mine.owner = "alice";
  EXPECT_EQ(Ids(mine).size(), 2u);
  // Another owner is not counted against alice.
  EXPECT_TRUE(TrySubmitAs("bob", 1).ok());
  // A cancelled job no longer counts.
  ASSERT_TRUE(scheduler_->CancelJob(Ids(mine).at(0), "test").ok());
  EXPECT_TRUE(TrySubmitAs("alice", 1).ok());
}

TEST_F(QuotaTest, SubmitRefusesAPriorityAboveTheOwnersHighest) {
  SetQuotas("* priority=0\nops priority=100\n");
  JobRequest r = Request(/*priority=*/5);
  r.owner = "bob";
  const Status refused = scheduler_->SubmitJob(r).status();
  EXPECT_EQ(refused.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(refused.message(),
            "priority 5 is above the 0 that the default quota (*) allows owner bob");
  r.priority = 0;
  EXPECT_TRUE(scheduler_->SubmitJob(r).ok());
  r.priority = -7;
  EXPECT_TRUE(scheduler_->SubmitJob(r).ok());
  r.owner = "ops";
  r.priority = 100;
  EXPECT_TRUE(scheduler_->SubmitJob(r).ok());
}

TEST_F(QuotaTest, RaisingAQuotaAdmitsAtOnceAndLoweringOneStopsNothing) {
  SetQuotas("alice cpu=1\n");
  Register("n1", 4);
  const JobId a1 = SubmitAs("alice", 1);
  const JobId a2 = SubmitAs("alice", 1);
  ASSERT_EQ(State(a2), JobState::kQueued);
  SetQuotas("alice cpu=2\n");
  EXPECT_EQ(State(a2), JobState::kAdmitted);

  SetQuotas("alice cpu=1\n");
  EXPECT_EQ(State(a1), JobState::kAdmitted);
  EXPECT_EQ(State(a2), JobState::kAdmitted);
  const JobId a3 = SubmitAs("alice", 1);
  EXPECT_EQ(State(a3), JobState::kQueued);
  EXPECT_NE(WaitReason(a3).find("holds 2 of the 1 cpu slot"), std::string::npos)
      << WaitReason(a3);

  SetQuotas("");  // no quotas at all
  EXPECT_EQ(State(a3), JobState::kAdmitted);
}

TEST_F(QuotaTest, UsageCountsHeldSlotsAndUnfinishedJobs) {
  SetQuotas("alice cpu=3 jobs=10\n");
  Register("n1", 2);
  const JobId a1 = SubmitAs("alice", 2);
  SubmitAs("alice", 1);  // waits: no free slot
  SubmitAs("bob", 1);
  OwnerUsage usage = scheduler_->UsageOf("alice");
  EXPECT_EQ(usage.unfinished_jobs, 2);
  EXPECT_EQ(usage.slots, (std::map<std::string, int>{{kDeviceCpu, 2}}));
  ASSERT_TRUE(usage.quota.has_value());
  EXPECT_EQ(usage.quota->line_owner, "alice");
  EXPECT_EQ(usage.quota->max_jobs, 10);
  const SchedulerStats stats = scheduler_->Stats();
  ASSERT_EQ(stats.owners.size(), 2u);
  EXPECT_EQ(stats.owners.at("alice").unfinished_jobs, 2);
  EXPECT_EQ(stats.owners.at("bob").unfinished_jobs, 1);
  EXPECT_TRUE(stats.owners.at("bob").slots.empty());  // waits: no free slot
  Finish(a1);
  usage = scheduler_->UsageOf("alice");
  EXPECT_EQ(usage.unfinished_jobs, 1);
  EXPECT_EQ(usage.slots, (std::map<std::string, int>{{kDeviceCpu, 1}}));
  EXPECT_FALSE(scheduler_->UsageOf("bob").quota.has_value());
  EXPECT_EQ(scheduler_->UsageOf("carol").unfinished_jobs, 0);
  // A restarted scheduler counts the same from the store.
  Open();
  usage = scheduler_->UsageOf("alice");
  EXPECT_EQ(usage.unfinished_jobs, 1);
  EXPECT_EQ(usage.slots, (std::map<std::string, int>{{kDeviceCpu, 1}}));
  EXPECT_EQ(scheduler_->UsageOf("bob").unfinished_jobs, 1);
}

// --- Group commit --------------------------------------------------------------

class GroupCommitTest : public SchedulerTest {
 protected:
  GatedJobStore* OpenGated() {
    StatusOr<std::unique_ptr<SqliteJobStore>> store = SqliteJobStore::Open(DbPath());
    EXPECT_TRUE(store.ok()) << store.status();
    auto gated = std::make_unique<GatedJobStore>(std::move(store).value());
    GatedJobStore* raw = gated.get();
    OpenWith(std::move(gated));
    return raw;
  }

  // `threads` threads each run `body(thread index)` at once.
  template <typename F>
  static void RunConcurrently(int threads, F body) {
    std::atomic<int> ready{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        ++ready;
        while (ready.load() < threads) std::this_thread::yield();
        body(t);
      });
    }
    for (std::thread& thread : pool) thread.join();
  }
};

TEST_F(GroupCommitTest, ParsesCommitModes) {
  EXPECT_EQ(*ParseCommitMode("group"), CommitMode::kGroup);
  EXPECT_EQ(*ParseCommitMode("per-call"), CommitMode::kPerCall);
  EXPECT_STREQ(CommitModeName(CommitMode::kPerCall), "per-call");
  StatusOr<CommitMode> bad = ParseCommitMode("batch");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("\"batch\""), std::string::npos) << bad.status();
}

// Submissions of concurrent callers share commits, and every acknowledged
// one is stored once, with gap-free ids and its SUBMITTED event.
TEST_F(GroupCommitTest, ConcurrentSubmissionsShareCommits) {
  GatedJobStore* store = OpenGated();
  store->delay = milliseconds(5);  // a slow disk: callers pile up meanwhile
  constexpr int kThreads = 16, kPerThread = 10;
  std::vector<std::vector<JobId>> ids(kThreads);
  std::atomic<int> errors{0};
  RunConcurrently(kThreads, [&](int t) {
    for (int i = 0; i < kPerThread; ++i) {
      StatusOr<SubmitResult> r = scheduler_->SubmitJob(Request(0));
      if (!r.ok() || !r->created) {
        ++errors;
        continue;
      }
      ids[t].push_back(r->job.id);
    }
  });
  EXPECT_EQ(errors.load(), 0);
  std::set<JobId> all;
  for (const auto& mine : ids) {
    for (size_t i = 1; i < mine.size(); ++i) EXPECT_LT(mine[i - 1], mine[i]);
    all.insert(mine.begin(), mine.end());
  }
  ASSERT_EQ(all.size(), size_t{kThreads * kPerThread});
  EXPECT_EQ(*all.begin(), 1);
  EXPECT_EQ(*all.rbegin(), kThreads * kPerThread);  // no gaps
  if (GroupCommit()) {
    EXPECT_EQ(store->committed.load(), kThreads * kPerThread);
    EXPECT_LE(store->commits.load(), kThreads * kPerThread / 2) << "submissions were not grouped";
  } else {
    EXPECT_EQ(store->commits.load(), 0);  // one CreateJob per submission
  }
  Open();  // what was acknowledged is in the store
  for (JobId id : all) {
    StatusOr<std::vector<JobEvent>> events = scheduler_->ReadEvents(id, 0, 0);
    ASSERT_TRUE(events.ok()) << events.status();
    ASSERT_EQ(events->size(), 1u) << "job " << id;
    EXPECT_EQ((*events)[0].seq, 1);
    EXPECT_EQ((*events)[0].reason, "SUBMITTED");
  }
}

TEST_F(GroupCommitTest, ConcurrentSubmittersWithOneIdempotencyKeyGetOneJob) {
  OpenGated()->delay = milliseconds(2);
  constexpr int kThreads = 16, kKeys = 5;
  std::vector<std::map<std::string, JobId>> seen(kThreads);
  std::atomic<int> created{0}, errors{0};
  RunConcurrently(kThreads, [&](int t) {
    for (int k = 0; k < kKeys; ++k) {
      JobRequest request = Request(0);
      request.idempotency_key = "sweep-" + std::to_string(k);
      StatusOr<SubmitResult> r = scheduler_->SubmitJob(request);
      if (!r.ok()) {
        ++errors;
        continue;
      }
      created += r->created;
      seen[t][request.idempotency_key] = r->job.id;
    }
  });
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(created.load(), kKeys) << "one job per key";
  for (int t = 1; t < kThreads; ++t) EXPECT_EQ(seen[t], seen[0]);
  ListJobsQuery query;
  query.page_size = 100;
  EXPECT_EQ(Ids(query).size(), size_t{kKeys});
  Open();
  EXPECT_EQ(Ids(query).size(), size_t{kKeys});
  JobRequest again = Request(0);
  again.idempotency_key = "sweep-3";
  StatusOr<SubmitResult> r = scheduler_->SubmitJob(again);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->created);
  EXPECT_EQ(r->job.id, seen[0]["sweep-3"]);
}

// Concurrent reports on one job: the event log stays gap-free and in order,
// in memory and in the store.
TEST_F(GroupCommitTest, ConcurrentReportsKeepSequenceNumbersInOrder) {
  OpenGated()->delay = milliseconds(1);
  Register("a", 1);
  JobId id = Submit(0);
  StartAll(id);
  const RankRef rank = Ref(id, 0);
  constexpr int kThreads = 8, kPerThread = 25;
  std::atomic<int> errors{0};
  RunConcurrently(kThreads, [&](int t) {
    for (int i = 0; i < kPerThread; ++i) {
      const std::string payload =
          "{\"t\":" + std::to_string(t) + ",\"i\":" + std::to_string(i) + "}";
      if (!scheduler_->ReportProgress(rank, payload).ok()) ++errors;
    }
  });
  EXPECT_EQ(errors.load(), 0);
  const int64_t want = 3 + kThreads * kPerThread;  // SUBMITTED, ADMITTED, RUNNING
  EXPECT_EQ(Get(id).last_event_seq, want);
  for (int reopen = 0; reopen < 2; ++reopen) {
    StatusOr<std::vector<JobEvent>> events = scheduler_->ReadEvents(id, 0, 1000);
    ASSERT_TRUE(events.ok()) << events.status();
    ASSERT_EQ(static_cast<int64_t>(events->size()), want);
    std::map<int, int> next_of_thread;  // each thread's reports in its order
    for (int64_t e = 0; e < want; ++e) {
      EXPECT_EQ((*events)[e].seq, e + 1);
      if (e < 3) continue;
      const std::string& p = (*events)[e].payload;
      const int t = std::stoi(p.substr(p.find(':') + 1));
      const int i = std::stoi(p.substr(p.rfind(':') + 1));
      EXPECT_EQ(i, next_of_thread[t]++) << p;
    }
    Open();
  }
}

// A commit that fails answers every caller in its batch (and in the batch
// queued behind it) with the error, sends nothing out, and leaves memory as
// the store is: the next calls work as if the failed ones never happened.
TEST_F(GroupCommitTest, FailedCommitFailsItsWholeBatchAndMemoryMatchesTheStore) {
  if (!GroupCommit()) GTEST_SKIP() << "per-call commits have no batches";
  GatedJobStore* store = OpenGated();
  Register("a", 1);
  JobId running = Submit(0);
  ASSERT_EQ(State(running), JobState::kAdmitted);
  EXPECT_EQ(Work("a").assignments.size(), 1u);

  store->Hold();
  std::vector<Status> results(6);
  std::vector<std::thread> callers;
  callers.emplace_back([&] { results[0] = scheduler_->SubmitJob(Request(0)).status(); });
  ASSERT_EQ(store->AwaitHeldCommit(), 1u);  // the writer holds [submit]
  for (int i = 1; i <= 4; ++i) {
    callers.emplace_back([&, i] {
      JobRequest request = Request(0);
      request.idempotency_key = "k" + std::to_string(i);
      results[i] = scheduler_->SubmitJob(request).status();
    });
  }
  callers.emplace_back([&] {  // queued behind as well: kills wait for it
    results[5] = scheduler_->CancelJob(running, "").status();
  });
  // All of them applied in memory, waiting for their commit (the cancelled
  // job's rank, assigned and taken, keeps the slot until the agent shows it
  // does not run: none of the new jobs is admitted).
  auto in_memory = [&] {
    SchedulerStats stats = scheduler_->Stats();
    return std::make_pair(stats.jobs[JobState::kQueued] + stats.jobs[JobState::kAdmitted],
                          stats.jobs[JobState::kCancelled]);
  };
  for (int spin = 0; spin < 5000 && in_memory() != std::make_pair(5, 1); ++spin) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  // (No ASSERT: the callers must be joined.)
  EXPECT_EQ(in_memory(), std::make_pair(5, 1));
  EXPECT_EQ(scheduler_->Stats().jobs[JobState::kAdmitted], 0);
  store->fail_writes = true;
  store->Release();
  for (std::thread& caller : callers) caller.join();
  for (const Status& status : results) {
    EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status;
  }

  // Memory is the store again: one job, admitted, holding the slot.
  store->fail_writes = false;
  EXPECT_EQ(Ids(ListJobsQuery()), (std::vector<JobId>{running}));
  EXPECT_EQ(State(running), JobState::kAdmitted);
  SchedulerStats stats = scheduler_->Stats();
  EXPECT_EQ(stats.jobs, (std::map<JobState, int>{{JobState::kAdmitted, 1}}));
  EXPECT_EQ(stats.free_slots.at(kDeviceCpu), 0);
  EXPECT_TRUE(scheduler_->QueueOrder().empty());
  EXPECT_TRUE(Work("a").empty()) << "the cancel's kill order was not sent";
  // Ids, keys and slots carry on from the store.
  JobRequest retry = Request(0);
  retry.idempotency_key = "k1";
  StatusOr<SubmitResult> again = scheduler_->SubmitJob(retry);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->created);
  EXPECT_EQ(again->job.id, running + 1);
  EXPECT_EQ(again->job.state, JobState::kQueued);
  Finish(running);
  EXPECT_EQ(State(again->job.id), JobState::kAdmitted);
  Open();
  EXPECT_EQ(Ids(ListJobsQuery()), (std::vector<JobId>{running, running + 1}));
}

// The admission pass does not visit the queue when nothing can move, and
// the wait reasons and order of jobs it did not visit are still right.
TEST_F(GroupCommitTest, DeepQueueKeepsOrderAndWaitReasons) {
  options_.aging_per_minute = 1;
  Open();
  Register("a", 2);
  JobId big = Submit(0, 2);  // takes both slots
  ASSERT_EQ(State(big), JobState::kAdmitted);
  std::vector<JobId> low;
  for (int i = 0; i < 300; ++i) low.push_back(Submit(0, 1));
  clock_->Advance(minutes(2));
  JobId high = Submit(3, 1);  // ahead of the older ones by one point
  JobId cuda = Submit(0, 1, kDeviceCuda);
  const std::vector<JobId> order = scheduler_->QueueOrder();
  ASSERT_EQ(order.size(), 302u);
  EXPECT_EQ(order[0], high);
  EXPECT_EQ(order[1], low[0]);
  EXPECT_EQ(order.back(), cuda);
  EXPECT_EQ(WaitReason(low[0]), "needs 1 cpu slot, 0 free");
  EXPECT_EQ(WaitReason(low.back()), "needs 1 cpu slot, 0 free");
  EXPECT_EQ(WaitReason(cuda), "needs 1 cuda slot, only 0 registered");
  Finish(big);
  EXPECT_EQ(State(high), JobState::kAdmitted);
  EXPECT_EQ(State(low[0]), JobState::kAdmitted);
  EXPECT_EQ(State(low[1]), JobState::kQueued);
}

}  // namespace
}  // namespace tern::scheduler
