// The JobStore contract (scheduler/job_store.h), one suite run against each
// implementation: SqliteJobStore (a file in a temp dir) and PostgresJobStore
// (a fresh database on the test server, postgres_test_util.h). What only
// one of them has (SQLite's file and migrations, PostgreSQL's election and
// reconnection) is tested in sqlite_job_store_test.cc and postgres_*_test.cc.
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "scheduler/postgres_job_store.h"
#include "scheduler/sqlite_job_store.h"
#include "tests/scheduler/postgres_test_util.h"
#include "tests/scheduler/test_util.h"

namespace tern::scheduler {
namespace {

using ::tern::scheduler::testing::PostgresTestDatabase;
using ::tern::scheduler::testing::TempDir;

enum class Backend { kSqlite, kPostgres };

std::string BackendName(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::kSqlite ? "Sqlite" : "Postgres";
}

class JobStoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (GetParam() == Backend::kPostgres) {
      db_ = std::make_unique<PostgresTestDatabase>();
      ASSERT_TRUE(db_->ok());
    }
  }

  // Opens the store (again, after a reset: the same file or database).
  std::unique_ptr<JobStore> OpenStore() {
    if (GetParam() == Backend::kSqlite) {
      auto store = SqliteJobStore::Open((dir_.path() / "jobs.db").string());
      EXPECT_TRUE(store.ok()) << store.status();
      return store.ok() ? std::move(store).value() : nullptr;
    }
    auto store = PostgresJobStore::Open(db_->url(), {});
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(store).value() : nullptr;
  }

  static Job SampleJob(JobId id) {
    FakeClock clock;
    Job job;
    job.id = id;
    job.owner = "alice";
    job.labels = {{"team", "vision"}, {"exp", "hla-7"}};
    job.priority = 3;
    job.world_size = 2;
    job.device_kind = kDeviceCuda;
    job.max_restarts = 2;
    job.idempotency_key = "key-" + std::to_string(id);
    job.spec = {'\x08', '\0', '\x12', '\x03', 'a', 'b', 'c', '\xff'};  // binary
    job.submit_time = clock.Now();
    job.restart_not_before = clock.Now();
    return job;
  }

  static std::vector<JobEvent> Submitted(Job* job) {
    std::vector<JobEvent> events;
    JobEvent e;
    e.time = job->submit_time;
    e.to = JobState::kQueued;
    e.reason = reason::kSubmitted;
    e.message = "submitted";
    job->history.push_back(AppendJobEvent(job, e, &events));
    return events;
  }

  static JobWrite Write(JobWrite::Kind kind, Job job, std::vector<JobEvent> events = {}) {
    JobWrite w;
    w.kind = kind;
    w.job = std::move(job);
    w.events = std::move(events);
    return w;
  }

  TempDir dir_;
  std::unique_ptr<PostgresTestDatabase> db_;
};

TEST_P(JobStoreTest, CreateUpdateLoadRoundTrip) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  Job job = SampleJob(1);
  ASSERT_TRUE(store->CreateJob(job, Submitted(&job)).ok());

  std::vector<JobEvent> events;
  const TimePoint later = job.submit_time + std::chrono::seconds(5);
  ASSERT_TRUE(
      TransitionJob(&job, JobState::kAdmitted, reason::kAdmitted, "placed", later, &events).ok());
  job.attempt = 1;
  job.ranks = {{0, "a", RankState::kRunning, 0}, {1, "b", RankState::kFailed, 3}};
  job.rendezvous_host = "10.0.0.1";
  job.rendezvous_port = 29500;
  job.last_checkpoint_step = 120;
  job.metrics_json = R"({"acc": 0.91})";
  RankFailure failure;
  failure.attempt = 1;
  failure.rank = 1;
  failure.agent_id = "b";
  failure.exit_code = 3;
  failure.trainer_code = "DATA_LOSS";
  failure.reason = reason::kRankLost;
  failure.message = "rank 1 exited with 3 ünïcode";
  failure.time = later;
  job.last_failure = failure;
  ASSERT_TRUE(store->UpdateJob(job, events).ok());
  store.reset();

  store = OpenStore();
  ASSERT_NE(store, nullptr);
  StatusOr<std::vector<Job>> loaded = store->LoadJobs();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 1u);
  const Job& got = loaded->front();
  EXPECT_EQ(got.id, 1);
  EXPECT_EQ(got.owner, "alice");
  EXPECT_EQ(got.labels, job.labels);
  EXPECT_EQ(got.priority, 3);
  EXPECT_EQ(got.world_size, 2);
  EXPECT_EQ(got.device_kind, "cuda");
  EXPECT_EQ(got.max_restarts, 2);
  EXPECT_EQ(got.idempotency_key, "key-1");
  EXPECT_EQ(got.spec, job.spec);
  EXPECT_EQ(got.spec.size(), 8u);
  EXPECT_EQ(got.submit_time, job.submit_time);
  EXPECT_EQ(got.state, JobState::kAdmitted);
  EXPECT_EQ(got.attempt, 1);
  ASSERT_TRUE(got.last_checkpoint_step.has_value());
  EXPECT_EQ(*got.last_checkpoint_step, 120);
  EXPECT_EQ(got.metrics_json, job.metrics_json);
  EXPECT_EQ(got.last_event_seq, 2);
  EXPECT_EQ(got.rendezvous_host, "10.0.0.1");
  EXPECT_EQ(got.rendezvous_port, 29500);
  ASSERT_EQ(got.ranks.size(), 2u);
  EXPECT_EQ(got.ranks[1].agent_id, "b");
  EXPECT_EQ(got.ranks[1].state, RankState::kFailed);
  EXPECT_EQ(got.ranks[1].exit_code, 3);
  ASSERT_EQ(got.history.size(), 2u);
  EXPECT_EQ(got.history[1].from, JobState::kQueued);
  EXPECT_EQ(got.history[1].to, JobState::kAdmitted);
  EXPECT_EQ(got.history[1].time, later);
  EXPECT_EQ(got.history[1].message, "placed");
  ASSERT_TRUE(got.last_failure.has_value());
  EXPECT_EQ(got.last_failure->message, failure.message);
  EXPECT_EQ(got.last_failure->trainer_code, "DATA_LOSS");
  EXPECT_EQ(got.last_failure->time, later);
}

TEST_P(JobStoreTest, NoCheckpointAndNoFailureStayAbsent) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  Job job = SampleJob(1);
  job.spec.clear();  // an empty spec is stored as empty, not NULL
  ASSERT_TRUE(store->CreateJob(job, {}).ok());
  StatusOr<std::vector<Job>> loaded = store->LoadJobs();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 1u);
  EXPECT_FALSE(loaded->front().last_checkpoint_step.has_value());
  EXPECT_FALSE(loaded->front().last_failure.has_value());
  EXPECT_EQ(loaded->front().spec, "");
}

TEST_P(JobStoreTest, ReadEventsResumesAfterSequence) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  Job job = SampleJob(1);
  ASSERT_TRUE(store->CreateJob(job, Submitted(&job)).ok());
  std::vector<JobEvent> events;
  for (int i = 0; i < 5; ++i) {
    JobEvent e;
    e.type = JobEventType::kProgress;
    e.payload = "{\"step\":" + std::to_string(i) + "}";
    e.step = i;
    AppendJobEvent(&job, e, &events);
  }
  ASSERT_TRUE(store->UpdateJob(job, events).ok());
  StatusOr<std::vector<JobEvent>> tail = store->ReadEvents(1, 3, 2);
  ASSERT_TRUE(tail.ok()) << tail.status();
  ASSERT_EQ(tail->size(), 2u);
  EXPECT_EQ((*tail)[0].seq, 4);
  EXPECT_EQ((*tail)[1].seq, 5);
  EXPECT_EQ((*tail)[0].payload, "{\"step\":2}");
  EXPECT_EQ((*tail)[0].step, 2);
  EXPECT_EQ((*tail)[0].type, JobEventType::kProgress);
  EXPECT_EQ(store->ReadEvents(1, 6, 10)->size(), 0u);
  EXPECT_EQ(store->ReadEvents(99, 0, 10)->size(), 0u);
  EXPECT_EQ(store->ReadEvents(1, 0, -1)->size(), 6u) << "a negative limit reads them all";
  // LoadJobs' history holds the state changes only.
  StatusOr<std::vector<Job>> loaded = store->LoadJobs();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->front().history.size(), 1u);
}

TEST_P(JobStoreTest, DuplicateIdempotencyKeyIsAlreadyExists) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  Job first = SampleJob(1);
  ASSERT_TRUE(store->CreateJob(first, Submitted(&first)).ok());
  Job same_key = SampleJob(2);
  same_key.idempotency_key = first.idempotency_key;
  Status status = store->CreateJob(same_key, Submitted(&same_key));
  EXPECT_EQ(status.code(), StatusCode::kAlreadyExists) << status;

  Job other_owner = same_key;
  other_owner.owner = "bob";
  EXPECT_TRUE(store->CreateJob(other_owner, {}).ok());
  Job no_key_a = SampleJob(3), no_key_b = SampleJob(4);
  no_key_a.idempotency_key = no_key_b.idempotency_key = "";
  EXPECT_TRUE(store->CreateJob(no_key_a, {}).ok());
  EXPECT_TRUE(store->CreateJob(no_key_b, {}).ok());
  Job same_id = SampleJob(4);
  same_id.idempotency_key = "fresh";
  EXPECT_EQ(store->CreateJob(same_id, {}).code(), StatusCode::kAlreadyExists);
}

TEST_P(JobStoreTest, FailedTransactionLeavesNoTrace) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  Job job = SampleJob(1);
  std::vector<JobEvent> events = Submitted(&job);
  events.push_back(events.front());  // same (job, seq) twice: the insert fails
  EXPECT_FALSE(store->CreateJob(job, events).ok());
  StatusOr<std::vector<Job>> loaded = store->LoadJobs();
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE(loaded->empty());
  EXPECT_TRUE(store->ReadEvents(1, 0, 10)->empty());
  // The store goes on after a failed transaction.
  Job ok = SampleJob(2);
  EXPECT_TRUE(store->CreateJob(ok, Submitted(&ok)).ok());
}

TEST_P(JobStoreTest, UpdateOfMissingJobIsNotFound) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->UpdateJob(SampleJob(5), {}).code(), StatusCode::kNotFound);
}

TEST_P(JobStoreTest, EmptyCommitWritesNothing) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->Commit({}).ok());
  EXPECT_EQ(store->HighestJobIdEver().value(), 0);
}

TEST_P(JobStoreTest, CommitAppliesABatchInOrder) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::vector<JobWrite> batch;
  for (JobId id = 1; id <= 300; ++id) {  // more than one pipelined chunk (256 statements)
    Job job = SampleJob(id);
    batch.push_back(Write(JobWrite::Kind::kCreate, job, Submitted(&job)));
  }
  Job changed = SampleJob(7);
  std::vector<JobEvent> events = Submitted(&changed);
  ASSERT_TRUE(TransitionJob(&changed, JobState::kCancelled, reason::kCancelledByUser, "stop",
                            changed.submit_time, &events)
                  .ok());
  events.erase(events.begin());  // the submission is in the batch's create already
  batch.push_back(Write(JobWrite::Kind::kUpdate, changed, events));
  Job relabeled = SampleJob(8);
  relabeled.labels = {{"team", "nlp"}};
  relabeled.spec = "new spec";
  batch.push_back(Write(JobWrite::Kind::kRelabel, relabeled));
  batch.push_back(Write(JobWrite::Kind::kDelete, SampleJob(300)));
  ASSERT_TRUE(store->Commit(batch).ok());

  StatusOr<std::vector<Job>> loaded = store->LoadJobs();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 299u);
  for (size_t i = 0; i < loaded->size(); ++i) EXPECT_EQ((*loaded)[i].id, JobId(i + 1));
  EXPECT_EQ((*loaded)[6].state, JobState::kCancelled);
  EXPECT_EQ((*loaded)[6].history.size(), 2u);
  EXPECT_EQ((*loaded)[7].labels, relabeled.labels);
  EXPECT_EQ((*loaded)[7].spec, "new spec");
  EXPECT_EQ((*loaded)[7].state, JobState::kQueued) << "a relabel writes nothing else";
  EXPECT_TRUE(store->ReadEvents(300, 0, 10)->empty()) << "a delete takes the events too";
  EXPECT_EQ(store->HighestJobIdEver().value(), 300) << "the deleted job's id stays taken";
}

TEST_P(JobStoreTest, CommitIsAllOrNothingWithTheFirstError) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  Job existing = SampleJob(1);
  ASSERT_TRUE(store->CreateJob(existing, Submitted(&existing)).ok());

  Job fresh = SampleJob(2);
  std::vector<JobWrite> batch = {
      Write(JobWrite::Kind::kCreate, fresh, Submitted(&fresh)),
      Write(JobWrite::Kind::kDelete, existing),
      Write(JobWrite::Kind::kUpdate, SampleJob(40)),   // NOT_FOUND: the first error
      Write(JobWrite::Kind::kCreate, SampleJob(2)),    // ALREADY_EXISTS, after it
      Write(JobWrite::Kind::kRelabel, SampleJob(41)),  // NOT_FOUND
  };
  Status status = store->Commit(batch);
  EXPECT_EQ(status.code(), StatusCode::kNotFound) << status;
  EXPECT_NE(status.message().find("job 40"), std::string::npos) << status;

  StatusOr<std::vector<Job>> loaded = store->LoadJobs();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 1u) << "nothing of the batch was stored";
  EXPECT_EQ(loaded->front().id, 1);
  EXPECT_EQ(store->HighestJobIdEver().value(), 1);

  // An SQL error first: that one is returned.
  status = store->Commit({Write(JobWrite::Kind::kCreate, SampleJob(1)),
                          Write(JobWrite::Kind::kUpdate, SampleJob(40))});
  EXPECT_EQ(status.code(), StatusCode::kAlreadyExists) << status;
  EXPECT_EQ(store->Commit({Write(JobWrite::Kind::kDelete, SampleJob(9))}).code(),
            StatusCode::kNotFound);
  EXPECT_EQ(store->Commit({Write(JobWrite::Kind::kRelabel, SampleJob(9))}).code(),
            StatusCode::kNotFound);
}

TEST_P(JobStoreTest, HighestJobIdEverOutlivesDeletes) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  for (JobId id : {3, 9}) ASSERT_TRUE(store->CreateJob(SampleJob(id), {}).ok());
  EXPECT_EQ(store->HighestJobIdEver().value(), 9);
  ASSERT_TRUE(store->Commit({Write(JobWrite::Kind::kDelete, SampleJob(9))}).ok());
  ASSERT_TRUE(store->Commit({Write(JobWrite::Kind::kDelete, SampleJob(3))}).ok());
  store.reset();
  store = OpenStore();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->HighestJobIdEver().value(), 9);
  EXPECT_TRUE(store->LoadJobs()->empty());
}

TEST_P(JobStoreTest, ConcurrentWritersAllLand) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        Job job = SampleJob(t * 100 + i + 1);
        if (!store->CreateJob(job, Submitted(&job)).ok()) ++failures;
        if (!store->ReadEvents(job.id, 0, 10).ok()) ++failures;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(store->LoadJobs()->size(), 100u);
}

INSTANTIATE_TEST_SUITE_P(Backends, JobStoreTest,
                         ::testing::Values(Backend::kSqlite, Backend::kPostgres), BackendName);

}  // namespace
}  // namespace tern::scheduler
