// tern.v1.JobService over real gRPC loopback against an in-process Ternd.
#include "server/job_service.h"

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "server/rpc.h"
#include "tests/server/test_util.h"

namespace tern::server {
namespace {

using testing::Eventually;
using testing::SetDeadline;
using testing::ValidSpec;

class JobServiceTest : public testing::TerndTest {
 protected:
  std::vector<std::string> ListIds(const v1::ListJobsRequest& request,
                                   std::string* next = nullptr) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::ListJobsResponse response;
    const grpc::Status status = jobs_->ListJobs(&ctx, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    std::vector<std::string> ids;
    for (const v1::Job& job : response.jobs()) ids.push_back(job.id());
    if (next != nullptr) *next = response.next_page_token();
    return ids;
  }

  grpc::StatusCode ListCode(const v1::ListJobsRequest& request) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::ListJobsResponse response;
    return jobs_->ListJobs(&ctx, request, &response).error_code();
  }
};

TEST_F(JobServiceTest, SubmitGetListAndCancel) {
  v1::JobSpec spec = ValidSpec();
  spec.set_owner("mallory");  // ignored: the server sets the owner
  v1::SubmitJobResponse submitted;
  ASSERT_TRUE(Submit(spec, &submitted).ok());
  EXPECT_TRUE(submitted.created());
  const v1::Job& job = submitted.job();
  EXPECT_EQ(job.id(), "1");
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(job.state_reason().code(), "SUBMITTED");
  EXPECT_EQ(job.wait_reason().code(), "INSUFFICIENT_SLOTS");  // no agents
  EXPECT_NE(job.wait_reason().message().find("needs 1 cpu slot"),
            std::string::npos)
      << job.wait_reason().message();
  EXPECT_EQ(job.spec().owner(), "anonymous");
  EXPECT_EQ(job.spec().name(), "test-job");
  EXPECT_EQ(job.checkpoint_directory().rfind((dir_ / "checkpoints" / "job-1-").string(), 0), 0u)
      << job.checkpoint_directory();
  EXPECT_TRUE(job.has_create_time());
  EXPECT_FALSE(job.has_end_time());

  v1::Job got = GetJobOk("1");
  EXPECT_EQ(got.spec().SerializeAsString(), job.spec().SerializeAsString());
  EXPECT_EQ(got.state(), v1::JOB_STATE_QUEUED);

  EXPECT_EQ(ListIds(v1::ListJobsRequest()), std::vector<std::string>{"1"});

  v1::Job cancelled;
  ASSERT_TRUE(Cancel("1", &cancelled, "not needed").ok());
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(cancelled.state_reason().code(), "CANCELLED_BY_USER");
  EXPECT_EQ(cancelled.state_reason().message(), "not needed");
  EXPECT_TRUE(cancelled.has_end_time());
  EXPECT_FALSE(cancelled.has_wait_reason());
  // Cancelling a CANCELLED job is a no-op.
  v1::Job again;
  ASSERT_TRUE(Cancel("1", &again).ok());
  EXPECT_EQ(again.state(), v1::JOB_STATE_CANCELLED);

  v1::Job missing;
  EXPECT_EQ(GetJob("42", &missing).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(GetJob("abc", &missing).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(GetJob("", &missing).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Cancel("42", &missing).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(JobServiceTest, InvalidSpecsNameTheFieldAndStoreNothing) {
  struct Case {
    std::function<void(v1::JobSpec*)> mutate;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](v1::JobSpec* s) { s->mutable_optimization()->set_epochs(0); },
       "spec.optimization.epochs: must be > 0"},
      {[](v1::JobSpec* s) { s->clear_optimization(); },
       "spec.optimization.epochs: must be > 0"},
      {[](v1::JobSpec* s) {
         s->mutable_quantization()->set_method(
             static_cast<v1::QuantMethod>(99));
       },
       "spec.quantization.method: unknown QuantMethod value 99"},
      {[](v1::JobSpec* s) { s->mutable_model()->set_width_multiplier(5); },
       "spec.model.width_multiplier: must be in (0, 4], got 5"},
      {[](v1::JobSpec* s) { s->mutable_resources()->set_ranks(3); },
       "spec.optimization.batch_size: must be a multiple of resources.ranks"},
      {[](v1::JobSpec* s) { (*s->mutable_labels())["Team"] = "x"; },
       "spec.labels[\"Team\"]: key must be"},
      {[](v1::JobSpec* s) { s->mutable_model()->set_arch("vgg"); },
       "spec.model.arch: must be one of"},
      {[](v1::JobSpec* s) { s->set_task(v1::TASK_DETECTION); },
       "spec.dataset.kind: TASK_DETECTION needs DATASET_COCO"},
      {[](v1::JobSpec* s) {
         s->mutable_dataset()->set_kind(v1::DATASET_CIFAR10);
       },
       "spec.dataset.path: required for DATASET_CIFAR10"},
      {[](v1::JobSpec* s) {
         s->mutable_quantization()->set_kappa_start(10);
         s->mutable_quantization()->set_kappa_end(5);
       },
       "spec.quantization.kappa_end: must be in [10, 10000]"},
      {[](v1::JobSpec* s) {
         s->mutable_optimization()->set_epochs(3);
         s->mutable_optimization()->add_step_milestones(2);
         s->mutable_optimization()->add_step_milestones(2);
       },
       "spec.optimization.step_milestones[1]: must be strictly increasing"},
      {[](v1::JobSpec* s) {
         s->mutable_checkpoint()->set_directory("rel/dir");
       },
       "spec.checkpoint.directory: must be an absolute path"},
      {[](v1::JobSpec* s) { s->mutable_dataset()->set_path("fashion-mnist"); },
       "spec.dataset.path: must be an absolute path, got \"fashion-mnist\""},
      {[](v1::JobSpec* s) { s->mutable_model()->set_init_from("/runs/../fp.tern"); },
       "spec.model.init_from: must not contain \"..\""},
      {[](v1::JobSpec* s) { s->set_collective_timeout_seconds(1); },
       "spec.collective_timeout_seconds: must be in [10, 86400], got 1"},
  };
  for (const Case& c : cases) {
    v1::JobSpec spec = ValidSpec();
    c.mutate(&spec);
    v1::SubmitJobResponse response;
    const grpc::Status status = Submit(spec, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << c.message;
    EXPECT_NE(status.error_message().find(c.message), std::string::npos)
        << "want \"" << c.message << "\" in \"" << status.error_message()
        << "\"";
  }
  // Several violations are reported together.
  v1::JobSpec spec = ValidSpec();
  spec.set_priority(5000);
  spec.mutable_optimization()->set_lr(-1);
  v1::SubmitJobResponse response;
  const grpc::Status status = Submit(spec, &response);
  EXPECT_NE(status.error_message().find("spec.priority: must be in "
                                        "[-1000, 1000], got 5000"),
            std::string::npos);
  EXPECT_NE(status.error_message().find("spec.optimization.lr"),
            std::string::npos);
  // Bad idempotency keys and owners are rejected too.
  EXPECT_EQ(Submit(ValidSpec(), &response, std::string(129, 'k')).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Submit(ValidSpec(), &response, "", "has space").error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // Nothing was stored.
  EXPECT_TRUE(ListIds(v1::ListJobsRequest()).empty());
  EXPECT_EQ(SubmitOk(ValidSpec()), "1");
}

// Values of any size come back as INVALID_ARGUMENT with a short quote of
// each, not as a message larger than the client's metadata limit (which the
// client would report as RESOURCE_EXHAUSTED).
TEST_F(JobServiceTest, HugeValuesAreQuotedShortInErrors) {
  const std::string huge(1 << 20, 'x');
  const std::vector<std::function<void(v1::JobSpec*)>> mutations = {
      [&](v1::JobSpec* s) { s->mutable_model()->set_arch(huge); },
      [&](v1::JobSpec* s) { s->mutable_model()->set_head(huge); },
      [&](v1::JobSpec* s) { (*s->mutable_labels())["K" + huge] = "v"; },
      [&](v1::JobSpec* s) { s->mutable_dataset()->set_path(huge); },
      [&](v1::JobSpec* s) { s->mutable_checkpoint()->set_directory(huge); },
      [&](v1::JobSpec* s) {  // many violations at once (under gRPC's 4 MB request limit)
        const std::string big(64 << 10, 'x');
        s->mutable_model()->set_arch(big);
        s->mutable_model()->set_head(big);
        for (int i = 0; i < 20; ++i) (*s->mutable_labels())["K" + std::to_string(i) + big] = big;
      },
  };
  for (size_t i = 0; i < mutations.size(); ++i) {
    v1::JobSpec spec = ValidSpec();
    mutations[i](&spec);
    v1::SubmitJobResponse response;
    const grpc::Status status = Submit(spec, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << "case " << i << ": " << status.error_message().substr(0, 300);
    EXPECT_LE(status.error_message().size(), kMaxStatusMessageBytes) << "case " << i;
    EXPECT_EQ(status.error_message().find(std::string(100, 'x')), std::string::npos)
        << "case " << i;
  }
  v1::JobSpec spec = ValidSpec();
  spec.mutable_model()->set_arch(huge);
  v1::SubmitJobResponse response;
  const std::string message = Submit(spec, &response).error_message();
  EXPECT_NE(message.find("got \"" + std::string(64, 'x') + "\xe2\x80\xa6\" (1048576 bytes)"),
            std::string::npos)
      << message;
  // A job id of any length is quoted short too.
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::GetJobRequest get;
  get.set_job_id(huge);
  v1::Job job;
  const grpc::Status missing = jobs_->GetJob(&ctx, get, &job);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_LT(missing.error_message().size(), 200u);
}

// Documented in job_service.proto: gRPC's parser rejects a request with
// invalid UTF-8 in a string field before ternd's code runs (INTERNAL, empty
// message); nothing is stored and the server goes on serving.
TEST_F(JobServiceTest, InvalidUtf8IsRejectedBeforeTerndAndStoresNothing) {
  for (const std::string bad : {std::string("\xff"), std::string("\xc0\xaf")}) {
    v1::JobSpec spec = ValidSpec();
    spec.set_name("job-" + bad);
    v1::SubmitJobResponse response;
    const grpc::Status status = Submit(spec, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL) << status.error_message();
  }
  EXPECT_TRUE(ListIds(v1::ListJobsRequest()).empty());
  EXPECT_EQ(SubmitOk(ValidSpec()), "1");
}

TEST_F(JobServiceTest, IdempotencyKeyReturnsTheOriginalJob) {
  v1::SubmitJobResponse first;
  ASSERT_TRUE(Submit(ValidSpec(), &first, "key-1", "alice").ok());
  EXPECT_TRUE(first.created());
  EXPECT_EQ(first.job().spec().owner(), "alice");

  v1::SubmitJobResponse retry;
  ASSERT_TRUE(Submit(ValidSpec(), &retry, "key-1", "alice").ok());
  EXPECT_FALSE(retry.created());
  EXPECT_EQ(retry.job().id(), first.job().id());
  // The same description: the spec as stored, what runs, and why it waits.
  using google::protobuf::util::MessageDifferencer;
  EXPECT_TRUE(MessageDifferencer::Equals(retry.job().spec(), first.job().spec()));
  EXPECT_TRUE(
      MessageDifferencer::Equals(retry.job().effective_spec(), first.job().effective_spec()));
  EXPECT_EQ(retry.job().checkpoint_directory(), first.job().checkpoint_directory());
  EXPECT_EQ(retry.job().wait_reason().code(), "INSUFFICIENT_SLOTS");  // no agents
  EXPECT_EQ(retry.job().wait_reason().message(), first.job().wait_reason().message());

  v1::JobSpec other = ValidSpec();
  other.mutable_optimization()->set_epochs(2);
  v1::SubmitJobResponse conflict;
  const grpc::Status status = Submit(other, &conflict, "key-1", "alice");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_NE(status.error_message().find("job 1"), std::string::npos);

  // Keys are scoped to the owner.
  v1::SubmitJobResponse bob;
  ASSERT_TRUE(Submit(ValidSpec(), &bob, "key-1", "bob").ok());
  EXPECT_TRUE(bob.created());
  EXPECT_NE(bob.job().id(), first.job().id());

  // And survive a restart.
  RestartTernd();
  v1::SubmitJobResponse after_restart;
  ASSERT_TRUE(Submit(ValidSpec(), &after_restart, "key-1", "alice").ok());
  EXPECT_FALSE(after_restart.created());
  EXPECT_EQ(after_restart.job().id(), first.job().id());
}

TEST_F(JobServiceTest, SpecIsAsSubmittedAndEffectiveSpecIsWhatRuns) {
  const v1::JobSpec submitted = ValidSpec();
  v1::SubmitJobResponse first;
  ASSERT_TRUE(Submit(submitted, &first, "", "alice").ok());
  // `spec`: exactly what was sent, plus the owner.
  v1::JobSpec expected = submitted;
  expected.set_owner("alice");
  for (const v1::Job& job : {first.job(), GetJobOk(first.job().id())}) {
    EXPECT_EQ(job.spec().SerializeAsString(), expected.SerializeAsString())
        << job.spec().DebugString();
    EXPECT_TRUE(job.spec().checkpoint().directory().empty());
    EXPECT_FALSE(job.spec().has_max_restarts());
    // `effective_spec`: defaults filled in, the server's choices resolved.
    const v1::JobSpec& effective = job.effective_spec();
    EXPECT_EQ(job.checkpoint_directory().rfind((dir_ / "checkpoints" / "job-1-").string(), 0), 0u)
        << job.checkpoint_directory();
    EXPECT_EQ(effective.checkpoint().directory(), job.checkpoint_directory());
    ASSERT_TRUE(effective.has_max_restarts());
    EXPECT_EQ(effective.max_restarts(), 3);
    ASSERT_TRUE(effective.checkpoint().has_every_steps());
    EXPECT_EQ(effective.checkpoint().every_steps(), 500);
    ASSERT_TRUE(effective.quantization().has_twn_delta_factor());
    EXPECT_DOUBLE_EQ(effective.quantization().twn_delta_factor(), 0.7);
    EXPECT_EQ(effective.optimization().batch_size(), 32);  // as submitted, not the default
    EXPECT_EQ(effective.name(), "test-job");
    EXPECT_EQ(effective.owner(), "alice");
  }
  // Re-running the returned spec is a new job with its own checkpoints,
  // not a resume of the first one's.
  v1::SubmitJobResponse rerun;
  ASSERT_TRUE(Submit(first.job().spec(), &rerun, "", "alice").ok());
  EXPECT_TRUE(rerun.created());
  EXPECT_NE(rerun.job().checkpoint_directory(), first.job().checkpoint_directory());
  // A spec that names its checkpoint directory keeps it in all three.
  v1::JobSpec named = ValidSpec();
  named.mutable_checkpoint()->set_directory((dir_ / "my-checkpoints").string());
  v1::SubmitJobResponse own;
  const grpc::Status named_status = Submit(named, &own, "", "alice");
  ASSERT_TRUE(named_status.ok()) << named_status.error_message();
  EXPECT_EQ(own.job().spec().checkpoint().directory(), named.checkpoint().directory());
  EXPECT_EQ(own.job().checkpoint_directory(), named.checkpoint().directory());
  EXPECT_EQ(own.job().effective_spec().checkpoint().directory(), named.checkpoint().directory());
}

TEST_F(JobServiceTest, IdempotentRepeatComparesTheSpecAsSubmitted) {
  v1::SubmitJobResponse first;
  ASSERT_TRUE(Submit(ValidSpec(), &first, "key-rerun", "alice").ok());
  ASSERT_TRUE(first.created());
  // The spec the job returns is the one submitted (owner aside): sending it
  // back with the same key is the same request, not a conflict.
  v1::SubmitJobResponse repeat;
  const grpc::Status status = Submit(first.job().spec(), &repeat, "key-rerun", "alice");
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(repeat.created());
  EXPECT_EQ(repeat.job().id(), first.job().id());
  // The effective spec differs from what was submitted (defaults, the
  // checkpoint directory): with the same key it is a different spec.
  v1::SubmitJobResponse conflict;
  EXPECT_EQ(Submit(first.job().effective_spec(), &conflict, "key-rerun", "alice").error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  // A client-set owner is ignored, as on the first submission.
  v1::JobSpec other_owner = ValidSpec();
  other_owner.set_owner("mallory");
  v1::SubmitJobResponse same;
  ASSERT_TRUE(Submit(other_owner, &same, "key-rerun", "alice").ok());
  EXPECT_EQ(same.job().id(), first.job().id());
  RestartTernd();
  ASSERT_TRUE(Submit(ValidSpec(), &same, "key-rerun", "alice").ok());
  EXPECT_FALSE(same.created());
  EXPECT_EQ(same.job().id(), first.job().id());
}

TEST_F(JobServiceTest, ListJobsFiltersAndPagesNewestFirst) {
  for (int i = 1; i <= 5; ++i) {
    v1::JobSpec spec = ValidSpec();
    (*spec.mutable_labels())["team"] = i % 2 == 0 ? "even" : "odd";
    v1::SubmitJobResponse response;
    ASSERT_TRUE(Submit(spec, &response, "", i <= 3 ? "alice" : "bob").ok());
  }
  v1::Job job;
  ASSERT_TRUE(Cancel("2", &job).ok());
  ASSERT_TRUE(Cancel("5", &job).ok());

  v1::ListJobsRequest request;
  request.set_page_size(2);
  std::vector<std::vector<std::string>> pages;
  for (;;) {
    std::string next;
    pages.push_back(ListIds(request, &next));
    if (next.empty()) break;
    request.set_page_token(next);
  }
  EXPECT_EQ(pages, (std::vector<std::vector<std::string>>{
                       {"5", "4"}, {"3", "2"}, {"1"}}));

  request = v1::ListJobsRequest();
  request.add_states(v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(ListIds(request), (std::vector<std::string>{"5", "2"}));
  request.add_states(v1::JOB_STATE_QUEUED);
  request.set_page_size(3);
  std::string next;
  EXPECT_EQ(ListIds(request, &next), (std::vector<std::string>{"5", "4", "3"}));
  request.set_page_token(next);
  EXPECT_EQ(ListIds(request), (std::vector<std::string>{"2", "1"}));
  // The token belongs to these filters.
  request.clear_states();
  EXPECT_EQ(ListCode(request), grpc::StatusCode::INVALID_ARGUMENT);
  request.set_page_token("garbage");
  EXPECT_EQ(ListCode(request), grpc::StatusCode::INVALID_ARGUMENT);

  request = v1::ListJobsRequest();
  request.set_owner("alice");
  EXPECT_EQ(ListIds(request), (std::vector<std::string>{"3", "2", "1"}));
  (*request.mutable_labels())["team"] = "odd";
  EXPECT_EQ(ListIds(request), (std::vector<std::string>{"3", "1"}));
  request.add_states(v1::JOB_STATE_UNSPECIFIED);  // "any state"
  EXPECT_EQ(ListIds(request), (std::vector<std::string>{"3", "1"}));

  request = v1::ListJobsRequest();
  request.set_page_size(-1);
  EXPECT_EQ(ListCode(request), grpc::StatusCode::INVALID_ARGUMENT);
  request = v1::ListJobsRequest();
  request.add_states(static_cast<v1::JobState>(99));
  EXPECT_EQ(ListCode(request), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(JobServiceTest, WatchJobStreamsStateChangesAndResumes) {
  const std::string id = SubmitOk(ValidSpec());
  std::vector<v1::JobEvent> live;
  std::atomic<int> received{0};
  grpc::Status live_status;
  std::thread watcher([&] {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::WatchJobRequest request;
    request.set_job_id(id);
    auto reader = jobs_->WatchJob(&ctx, request);
    v1::JobEvent event;
    while (reader->Read(&event)) {
      live.push_back(event);
      ++received;
    }
    live_status = reader->Finish();
  });
  // The stream delivers the history first; then cancel to end it.
  EXPECT_TRUE(Eventually([&] { return received.load() >= 1; }));
  v1::Job job;
  EXPECT_TRUE(Cancel(id, &job, "changed my mind").ok());
  watcher.join();
  ASSERT_TRUE(live_status.ok()) << live_status.error_message();
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live[0].sequence(), 1u);
  EXPECT_EQ(live[0].job_id(), id);
  EXPECT_EQ(live[0].attempt(), 1);
  EXPECT_EQ(live[0].state_change().from_state(), v1::JOB_STATE_UNSPECIFIED);
  EXPECT_EQ(live[0].state_change().to_state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(live[0].state_change().reason().code(), "SUBMITTED");
  EXPECT_EQ(live[1].sequence(), 2u);
  EXPECT_EQ(live[1].state_change().to_state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(live[1].state_change().reason().message(), "changed my mind");

  // Resume after the first event: only the rest, then the stream ends.
  std::vector<v1::JobEvent> resumed;
  ASSERT_TRUE(Watch(id, 2, &resumed).ok());
  ASSERT_EQ(resumed.size(), 1u);
  EXPECT_EQ(resumed[0].sequence(), 2u);
  // Past the end of an ended job: nothing, and the stream ends at once.
  std::vector<v1::JobEvent> none;
  ASSERT_TRUE(Watch(id, 100, &none).ok());
  EXPECT_TRUE(none.empty());

  std::vector<v1::JobEvent> missing;
  EXPECT_EQ(Watch("77", 0, &missing).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(JobServiceTest, WatchJobHistoryOnlyEndsAfterTheRecordedEvents) {
  const std::string id = SubmitOk(ValidSpec());  // QUEUED, no agent: it stays
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::WatchJobRequest request;
  request.set_job_id(id);
  request.set_history_only(true);
  auto reader = jobs_->WatchJob(&ctx, request);
  std::vector<v1::JobEvent> events;
  v1::JobEvent event;
  const auto start = std::chrono::steady_clock::now();
  while (reader->Read(&event)) events.push_back(event);
  ASSERT_TRUE(reader->Finish().ok());
  // The job is live, yet the stream ended without waiting for more.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].state_change().to_state(), v1::JOB_STATE_QUEUED);
}

TEST_F(JobServiceTest, WatchJobEndsWhenTheClientCancels) {
  const std::string id = SubmitOk(ValidSpec());
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::WatchJobRequest request;
  request.set_job_id(id);
  auto reader = jobs_->WatchJob(&ctx, request);
  v1::JobEvent event;
  ASSERT_TRUE(reader->Read(&event));  // SUBMITTED
  const auto start = std::chrono::steady_clock::now();
  ctx.TryCancel();
  while (reader->Read(&event)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  // The server side noticed too: the handler finished with CANCELLED.
  EXPECT_TRUE(Eventually([&] {
    return Metrics().find(
               "tern_grpc_requests_total{method=\"WatchJob\","
               "code=\"CANCELLED\"} 1") != std::string::npos;
  }));
}

TEST_F(JobServiceTest, GetArtifactNeedsASucceededJob) {
  const std::string id = SubmitOk(ValidSpec());
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::GetArtifactRequest request;
  request.set_job_id(id);
  auto reader = jobs_->GetArtifact(&ctx, request);
  v1::GetArtifactResponse response;
  EXPECT_FALSE(reader->Read(&response));
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("QUEUED"), std::string::npos);

  grpc::ClientContext ctx2;
  SetDeadline(&ctx2);
  request.set_job_id("99");
  auto missing = jobs_->GetArtifact(&ctx2, request);
  EXPECT_FALSE(missing->Read(&response));
  EXPECT_EQ(missing->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(JobServiceTest, RestartOnTheSameDatabaseKeepsJobs) {
  const std::string queued = SubmitOk(ValidSpec());
  v1::JobSpec named = ValidSpec();
  named.set_name("second");
  const std::string cancelled = SubmitOk(named);
  v1::Job job;
  ASSERT_TRUE(Cancel(cancelled, &job).ok());
  const v1::Job before = GetJobOk(queued);

  RestartTernd();

  const v1::Job after = GetJobOk(queued);
  EXPECT_EQ(after.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(after.spec().SerializeAsString(),
            before.spec().SerializeAsString());
  EXPECT_EQ(after.create_time().seconds(), before.create_time().seconds());
  EXPECT_EQ(GetJobOk(cancelled).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(GetJobOk(cancelled).spec().name(), "second");
  EXPECT_EQ(SubmitOk(ValidSpec()), "3");  // ids are never reused
  std::vector<v1::JobEvent> events;
  ASSERT_TRUE(Watch(cancelled, 0, &events).ok());
  EXPECT_EQ(events.size(), 2u);
}

TEST_F(JobServiceTest, HealthCheckAnswersServing) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const std::string service :
       {"", "tern.v1.JobService", "tern.v1.WorkerService"}) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = health->Check(&ctx, request, &response);
    ASSERT_TRUE(status.ok()) << service << ": " << status.error_message();
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING)
        << service;
  }
}

TEST_F(JobServiceTest, MetricsEndpointServesEveryFamily) {
  SubmitOk(ValidSpec());
  v1::SubmitJobResponse rejected;
  v1::JobSpec bad = ValidSpec();
  bad.mutable_optimization()->set_epochs(0);
  ASSERT_FALSE(Submit(bad, &rejected).ok());
  ASSERT_TRUE(Eventually([&] {
    return Metrics().find("tern_scheduler_jobs{state=\"queued\"} 1") !=
           std::string::npos;
  })) << Metrics();
  const std::string text = Metrics();
  EXPECT_EQ(text.rfind("HTTP/1.1 200", 0), 0u) << text.substr(0, 200);
  for (const char* family : {
           "tern_scheduler_jobs gauge",
           "tern_scheduler_queue_depth gauge",
           "tern_scheduler_admission_wait_seconds histogram",
           "tern_scheduler_restarts_total counter",
           "tern_grpc_requests_total counter",
           "tern_grpc_request_duration_seconds histogram",
           "tern_scheduler_agents gauge",
           "tern_scheduler_agents_draining gauge",
           "tern_scheduler_slots gauge",
           "tern_scheduler_lease_expiries_total counter",
           "tern_job_epoch gauge",
           "tern_job_step gauge",
           "tern_job_loss gauge",
           "tern_job_learning_rate gauge",
           "tern_job_images_per_second gauge",
           "tern_job_accuracy gauge",
           "tern_job_layer_sparsity gauge",
           "tern_job_layer_alpha gauge",
           "tern_job_layer_cos_wt gauge",
           "tern_job_layer_flips_per_step gauge",
           "tern_job_reg_lambda gauge",
           "tern_job_kappa gauge",
           "tern_job_step_time_seconds histogram",
           "tern_job_allreduce_seconds histogram",
           "tern_job_data_wait_seconds histogram",
           "tern_job_gpu_memory_bytes gauge",
           "tern_job_gpu_peak_memory_bytes gauge",
       }) {
    EXPECT_NE(text.find(std::string("# TYPE ") + family), std::string::npos)
        << family;
  }
  EXPECT_NE(text.find("tern_scheduler_queue_depth 1"), std::string::npos);
  EXPECT_NE(text.find("tern_grpc_requests_total{method=\"SubmitJob\","
                      "code=\"OK\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("tern_grpc_requests_total{method=\"SubmitJob\","
                      "code=\"INVALID_ARGUMENT\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("tern_scheduler_slots{device_kind=\"cpu\","
                      "state=\"free\"} 0"),
            std::string::npos);
}

// ternd --read-roots / --write-roots: each owner's spec names paths only
// under its own roots, and ternd's roots hold only the owner's own jobs.
class PathPolicyTest : public JobServiceTest {
 protected:
  void Customize(TerndOptions* options) override {
    options->read_roots = "/usr/share/datasets," + (dir_ / "home/{owner}").string();
    options->write_roots = (dir_ / "scratch/{owner}").string();
  }
  grpc::Status SubmitAs(const std::string& owner, const v1::JobSpec& spec,
                        v1::SubmitJobResponse* response) {
    return Submit(spec, response, "", owner);
  }
};

TEST_F(PathPolicyTest, SpecsNameOnlyTheirOwnersPaths) {
  v1::SubmitJobResponse alice_job;
  ASSERT_TRUE(SubmitAs("alice", ValidSpec(), &alice_job).ok());  // the default data set
  const std::string alice_checkpoints = alice_job.job().checkpoint_directory();

  v1::JobSpec spec = ValidSpec();
  spec.mutable_dataset()->set_kind(v1::DATASET_IMAGE_FOLDER);
  spec.mutable_dataset()->set_path((dir_ / "home/alice/pets").string());
  spec.mutable_checkpoint()->set_directory((dir_ / "scratch/alice/pets").string());
  v1::SubmitJobResponse response;
  EXPECT_TRUE(SubmitAs("alice", spec, &response).ok());
  grpc::Status bob = SubmitAs("bob", spec, &response);
  EXPECT_EQ(bob.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(bob.error_message(), "spec.dataset.path: " + (dir_ / "home/alice/pets").string() +
                                      " is outside the directories this job may read "
                                      "(/usr/share/datasets, " +
                                      (dir_ / "home/bob").string() + ", " +
                                      (dir_ / "scratch/bob").string() + ")");

  // Resuming from, or starting from, a job of ternd's checkpoint root: only
  // its owner may.
  v1::JobSpec resume = ValidSpec();
  resume.mutable_checkpoint()->set_directory(alice_checkpoints);
  EXPECT_EQ(SubmitAs("bob", resume, &response).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::JobSpec init = ValidSpec();
  init.mutable_model()->set_init_from(alice_checkpoints);
  bob = SubmitAs("bob", init, &response);
  EXPECT_EQ(bob.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(bob.error_message().find("belongs to a job of another owner"), std::string::npos)
      << bob.error_message();
  EXPECT_TRUE(SubmitAs("alice", resume, &response).ok());
  EXPECT_TRUE(SubmitAs("alice", init, &response).ok());

  // Refused specs were not stored.
  v1::ListJobsRequest bobs;
  bobs.set_owner("bob");
  EXPECT_TRUE(ListIds(bobs).empty());
  EXPECT_EQ(ListIds(v1::ListJobsRequest()).size(), 4u);
}

TEST(TerndOptionsTest, BadRootsAreRefusedAtStart) {
  TerndOptions options;
  options.read_roots = "/datasets,relative";
  EXPECT_EQ(options.Validate().message(),
            "read_roots entry 2: must be an absolute path, got \"relative\"");
  options.read_roots.clear();
  options.write_roots = "/scratch/x{owner}";
  EXPECT_EQ(options.Validate().code(), StatusCode::kInvalidArgument);
}

// --- Quotas (--quota-file) ----------------------------------------------------

class QuotaFileTest : public JobServiceTest {
 protected:
  std::string QuotaPath() const { return (dir_ / "quotas").string(); }
  void WriteQuotas(const std::string& text) {
    // Through a rename, as an editor or a ConfigMap update replaces it.
    const std::string tmp = QuotaPath() + ".tmp";
    std::ofstream(tmp) << text;
    std::filesystem::rename(tmp, QuotaPath());
  }
  void Customize(TerndOptions* options) override {
    WriteQuotas("alice cpu=1 jobs=2 priority=5\n* cuda=0\n");
    options->quota_file = QuotaPath();
  }
  // An agent with 4 CPU slots registers; alice submits two 1-rank jobs.
  void SubmitTwoJobsOfAliceOnFourSlots(v1::SubmitJobResponse* first,
                                       v1::SubmitJobResponse* second) {
    scheduler::AgentRegistration agent;
    agent.agent_id = "n1";
    agent.host = "127.0.0.1";
    agent.slots = {{scheduler::kDeviceCpu, 4}};
    ASSERT_TRUE(ternd_->scheduler().RegisterAgent(agent).ok());
    ASSERT_TRUE(Submit(ValidSpec(), first, "", "alice").ok());
    ASSERT_TRUE(Submit(ValidSpec(), second, "", "alice").ok());
  }
  v1::WhoAmIResponse WhoAmI(const std::string& owner) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    ctx.AddMetadata("x-tern-owner", owner);
    v1::WhoAmIResponse response;
    const grpc::Status status = jobs_->WhoAmI(&ctx, v1::WhoAmIRequest(), &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }
};

TEST_F(QuotaFileTest, SubmissionsAdmissionAndWhoAmIFollowTheQuotaFile) {
  v1::SubmitJobResponse first, second;
  ASSERT_NO_FATAL_FAILURE(SubmitTwoJobsOfAliceOnFourSlots(&first, &second));
  EXPECT_EQ(first.job().state(), v1::JOB_STATE_ADMITTED);
  EXPECT_EQ(second.job().state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(second.job().wait_reason().code(), "OWNER_QUOTA");
  EXPECT_EQ(second.job().wait_reason().message(),
            "needs 1 cpu slot, but owner alice holds 1 of the 1 cpu slot alice's quota allows");

  v1::SubmitJobResponse refused;
  const grpc::Status third = Submit(ValidSpec(), &refused, "", "alice");
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(third.error_message().find("owner alice has 2 unfinished jobs"), std::string::npos)
      << third.error_message();
  v1::JobSpec urgent = ValidSpec();
  urgent.set_priority(6);
  EXPECT_EQ(Submit(urgent, &refused, "", "alice").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::JobSpec gpu = ValidSpec();
  gpu.mutable_resources()->set_device_kind(v1::DEVICE_CUDA);
  const grpc::Status closed = Submit(gpu, &refused, "", "bob");  // "* cuda=0"
  EXPECT_EQ(closed.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(closed.error_message().find("the default quota (*) lets owner bob hold at most 0"),
            std::string::npos)
      << closed.error_message();

  const v1::WhoAmIResponse alice = WhoAmI("alice");
  EXPECT_EQ(alice.name(), "alice");
  EXPECT_EQ(alice.quota().line(), "alice");
  EXPECT_EQ(alice.quota().unfinished_jobs(), 2);
  EXPECT_EQ(alice.quota().max_unfinished_jobs(), 2);
  EXPECT_EQ(alice.quota().max_priority(), 5);
  ASSERT_EQ(alice.quota().slots_size(), 2);
  EXPECT_EQ(alice.quota().slots(0).device_kind(), v1::DEVICE_CPU);
  EXPECT_EQ(alice.quota().slots(0).used(), 1);
  EXPECT_EQ(alice.quota().slots(0).limit(), 1);
  EXPECT_EQ(alice.quota().slots(1).device_kind(), v1::DEVICE_CUDA);
  EXPECT_FALSE(alice.quota().slots(1).has_limit());  // alice's own line has no cuda limit
  const v1::WhoAmIResponse bob = WhoAmI("bob");
  EXPECT_EQ(bob.quota().line(), "*");
  EXPECT_FALSE(bob.quota().has_max_unfinished_jobs());
  EXPECT_FALSE(bob.quota().has_max_priority());
  EXPECT_EQ(bob.quota().slots(1).limit(), 0);
  EXPECT_TRUE(testing::Eventually(
      [&] { return Metrics().find("\ntern_scheduler_jobs_waiting_on_quota 1\n") !=
                   std::string::npos; }));
}

TEST_F(QuotaFileTest, AChangedFileAppliesWithinATickAndABadOneKeepsTheLastGoodQuotas) {
  v1::SubmitJobResponse first, second;
  ASSERT_NO_FATAL_FAILURE(SubmitTwoJobsOfAliceOnFourSlots(&first, &second));
  ASSERT_EQ(second.job().state(), v1::JOB_STATE_QUEUED);

  WriteQuotas("alice cpu=2 jobs=3\n");
  EXPECT_TRUE(testing::Eventually(
      [&] { return GetJobOk(second.job().id()).state() == v1::JOB_STATE_ADMITTED; }));
  EXPECT_EQ(WhoAmI("alice").quota().max_unfinished_jobs(), 3);
  EXPECT_EQ(WhoAmI("bob").quota().line(), "");  // no "*" line any more: unlimited

  WriteQuotas("alice cpu=two\n");  // refused: the last good quotas stay
  EXPECT_TRUE(testing::Eventually(
      [&] { return Metrics().find("\ntern_scheduler_quota_file_stale 1\n") !=
                   std::string::npos; }));
  EXPECT_EQ(WhoAmI("alice").quota().max_unfinished_jobs(), 3);
  WriteQuotas("alice cpu=2 jobs=4\n");
  EXPECT_TRUE(testing::Eventually(
      [&] { return Metrics().find("\ntern_scheduler_quota_file_stale 0\n") !=
                   std::string::npos; }));
  EXPECT_EQ(WhoAmI("alice").quota().max_unfinished_jobs(), 4);
}

TEST_F(QuotaFileTest, ABadQuotaFileStopsTheStartNamingTheLine) {
  StopTernd();
  WriteQuotas("alice cpu=1\nalice cuda=2\n");
  TerndOptions options = TestOptions();
  options.quota_file = QuotaPath();
  StatusOr<std::unique_ptr<Ternd>> ternd = Ternd::Start(options);
  ASSERT_FALSE(ternd.ok());
  EXPECT_EQ(ternd.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ternd.status().message(), "quota_file: " + QuotaPath() + ":2: alice has a line already");
  options.quota_file = (dir_ / "missing").string();
  EXPECT_FALSE(Ternd::Start(options).ok());
}

}  // namespace
}  // namespace tern::server
