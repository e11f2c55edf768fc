// The additive parts of the tern.v1 API contract (issue 35, item 8) over real
// gRPC loopback against an in-process Ternd: resource names, WhoAmI's server
// version, ListAgents pages, job views, UpdateJob and DeleteJob.
#include <google/protobuf/empty.pb.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "google/api/field_behavior.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "scheduler/sqlite_job_store.h"
#include "server/caller.h"
#include "server/server_version.h"
#include "tests/server/fake_agent.h"
#include "tests/server/test_util.h"

namespace tern::server {
namespace {

using testing::FakeAgent;
using testing::kLayers;
using testing::Line;
using testing::SetDeadline;
using testing::ValidSpec;

namespace fs = std::filesystem;

class ApiSurfaceTest : public testing::TerndTest {
 protected:
  grpc::Status ListAgents(const v1::ListAgentsRequest& request, v1::ListAgentsResponse* out) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    return jobs_->ListAgents(&ctx, request, out);
  }

  grpc::Status ListJobs(const v1::ListJobsRequest& request, v1::ListJobsResponse* out) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    return jobs_->ListJobs(&ctx, request, out);
  }

  grpc::Status GetJobView(const std::string& id, int view, v1::Job* out) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::GetJobRequest request;
    request.set_job_id(id);
    request.set_view(static_cast<v1::JobView>(view));
    return jobs_->GetJob(&ctx, request, out);
  }

  grpc::Status Update(const v1::UpdateJobRequest& request, v1::Job* out) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    return jobs_->UpdateJob(&ctx, request, out);
  }

  grpc::Status Delete(const std::string& id) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::DeleteJobRequest request;
    request.set_job_id(id);
    google::protobuf::Empty empty;
    return jobs_->DeleteJob(&ctx, request, &empty);
  }

  std::vector<std::string> ListedIds(const v1::ListJobsRequest& request) {
    v1::ListJobsResponse response;
    const grpc::Status status = ListJobs(request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    std::vector<std::string> ids;
    for (const v1::Job& job : response.jobs()) ids.push_back(job.id());
    return ids;
  }

  // Runs a 1-rank job to SUCCEEDED through a fake agent, its artifact
  // written where ternd said and a checkpoint file in its checkpoint
  // directory; returns the job.
  v1::Job RunToSuccess(const v1::JobSpec& spec, const std::string& key = "") {
    FakeAgent agent(workers_.get(), "agent-run", 1);
    EXPECT_TRUE(agent.Register().ok());
    v1::SubmitJobResponse submitted;
    const grpc::Status status = Submit(spec, &submitted, key);
    EXPECT_TRUE(status.ok()) << status.error_message();
    const std::string id = submitted.job().id();
    agent.StartStream();
    EXPECT_TRUE(agent.WaitForEvents(1));
    const std::vector<v1::AssignmentEvent> events = agent.Events();
    if (events.empty() || !events[0].has_assignment()) {
      ADD_FAILURE() << "no assignment";
      return {};
    }
    const v1::Assignment a = events[0].assignment();
    fs::create_directories(fs::path(a.artifact_path()).parent_path());
    std::ofstream(a.artifact_path(), std::ios::binary) << "TERN artifact bytes";
    fs::create_directories(a.checkpoint_dir());
    std::ofstream(fs::path(a.checkpoint_dir()) / "step-1.ckpt") << "checkpoint";
    EXPECT_TRUE(agent
                    .Report(a.ref(), {Line("started", 0,
                                           "\"resumed_from_step\":-1,\"total_steps\":2,"
                                           "\"device\":\"cpu\",\"process_group\":\"none\""),
                                      Line("finished", 0,
                                           "\"fp\":{\"loss\":0.8,\"top1\":0.81,\"top5\":0.99,"
                                           "\"examples\":100},\"ternary\":{\"loss\":1,"
                                           "\"top1\":0.76,\"top5\":0.98,\"examples\":100},"
                                           "\"artifact\":{\"loss\":1,\"top1\":0.74,\"top5\":"
                                           "0.97,\"examples\":100},\"artifact_path\":\"" +
                                               a.artifact_path() +
                                               "\",\"artifact_bytes\":19,"
                                               "\"bits_per_weight\":2.1,\"steps\":2,"
                                               "\"wall_seconds\":1,\"images_per_second\":8," +
                                               kLayers)})
                    .ok());
    EXPECT_TRUE(agent.Exit(a.ref(), 0).ok());
    const v1::Job done = GetJobOk(id);
    EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
    agent.StopStream();
    return done;
  }

  // The ErrorInfo among a failed call's details (a test failure, and an
  // empty one, when there is none).
  static google::rpc::ErrorInfo ErrorInfoOf(const grpc::Status& status) {
    google::rpc::Status details;
    google::rpc::ErrorInfo info;
    if (details.ParseFromString(status.error_details())) {
      for (const auto& any : details.details()) {
        if (any.UnpackTo(&info)) return info;
      }
    }
    ADD_FAILURE() << "no ErrorInfo in the details of " << status.error_message();
    return info;
  }

  static v1::UpdateJobRequest UpdateRequest(const std::string& id,
                                            const std::vector<std::string>& paths) {
    v1::UpdateJobRequest request;
    request.mutable_job()->set_id(id);
    for (const std::string& p : paths) request.mutable_update_mask()->add_paths(p);
    return request;
  }
};

TEST_F(ApiSurfaceTest, JobsCarryTheirResourceName) {
  const std::string id = SubmitOk(ValidSpec());
  ASSERT_EQ(id, "1");
  EXPECT_EQ(GetJobOk(id).name(), "jobs/1");
  v1::ListJobsResponse listed;
  ASSERT_TRUE(ListJobs(v1::ListJobsRequest(), &listed).ok());
  ASSERT_EQ(listed.jobs_size(), 1);
  EXPECT_EQ(listed.jobs(0).name(), "jobs/1");
  v1::Job cancelled;
  ASSERT_TRUE(Cancel(id, &cancelled).ok());
  EXPECT_EQ(cancelled.name(), "jobs/1");
}

TEST_F(ApiSurfaceTest, WhoAmIReportsTheServerVersion) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::WhoAmIResponse who;
  ASSERT_TRUE(jobs_->WhoAmI(&ctx, v1::WhoAmIRequest(), &who).ok());
  EXPECT_EQ(who.server_version(), ServerVersion());
  // The project version first, then git describe in parentheses, if any.
  EXPECT_EQ(who.server_version().rfind(TERN_PROJECT_VERSION, 0), 0u) << who.server_version();
  const std::string rest = who.server_version().substr(std::string(TERN_PROJECT_VERSION).size());
  EXPECT_TRUE(rest.empty() || (rest.rfind(" (", 0) == 0 && rest.back() == ')')) << rest;
}

TEST_F(ApiSurfaceTest, ListAgentsPagesByAgentIdWithOpaqueTokens) {
  std::vector<std::unique_ptr<FakeAgent>> agents;
  for (const char* id : {"node-d", "node-a", "node-c", "node-e", "node-b"}) {
    agents.push_back(std::make_unique<FakeAgent>(workers_.get(), id, 1));
    ASSERT_TRUE(agents.back()->Register().ok());
  }
  v1::ListAgentsRequest request;
  request.set_page_size(2);
  std::vector<std::vector<std::string>> pages;
  for (int i = 0; i < 10; ++i) {
    v1::ListAgentsResponse page;
    const grpc::Status status = ListAgents(request, &page);
    ASSERT_TRUE(status.ok()) << status.error_message();
    pages.emplace_back();
    for (const v1::AgentInfo& a : page.agents()) pages.back().push_back(a.agent_id());
    if (page.next_page_token().empty()) break;
    request.set_page_token(page.next_page_token());
  }
  EXPECT_EQ(pages, (std::vector<std::vector<std::string>>{
                       {"node-a", "node-b"}, {"node-c", "node-d"}, {"node-e"}}));

  // 0: the default page (50) holds them all; a size above the cap is lowered.
  for (int size : {0, 100000}) {
    v1::ListAgentsRequest all;
    all.set_page_size(size);
    v1::ListAgentsResponse response;
    ASSERT_TRUE(ListAgents(all, &response).ok());
    EXPECT_EQ(response.agents_size(), 5);
    EXPECT_TRUE(response.next_page_token().empty());
  }

  v1::ListAgentsRequest bad;
  bad.set_page_size(-1);
  v1::ListAgentsResponse ignored;
  grpc::Status status = ListAgents(bad, &ignored);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("page_size"), std::string::npos);
  for (const std::string& token :
       {std::string("garbage"), std::string("agents-after:zz"), std::string("agents-after:")}) {
    bad = v1::ListAgentsRequest();
    bad.set_page_token(token);
    status = ListAgents(bad, &ignored);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << token;
    EXPECT_NE(status.error_message().find("page_token"), std::string::npos);
  }
  // A ListJobs token is not a ListAgents token.
  for (int i = 0; i < 3; ++i) SubmitOk(ValidSpec());
  v1::ListJobsRequest jobs_request;
  jobs_request.set_page_size(1);
  v1::ListJobsResponse jobs_page;
  ASSERT_TRUE(ListJobs(jobs_request, &jobs_page).ok());
  ASSERT_FALSE(jobs_page.next_page_token().empty());
  bad = v1::ListAgentsRequest();
  bad.set_page_token(jobs_page.next_page_token());
  EXPECT_EQ(ListAgents(bad, &ignored).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ApiSurfaceTest, BasicViewLeavesOutThePerLayerStatistics) {
  const v1::Job done = RunToSuccess(ValidSpec());
  ASSERT_EQ(done.result().layers_size(), 1);  // GetJob's default is FULL

  v1::Job basic;
  ASSERT_TRUE(GetJobView(done.id(), v1::JOB_VIEW_BASIC, &basic).ok());
  EXPECT_EQ(basic.result().layers_size(), 0);
  EXPECT_DOUBLE_EQ(basic.result().ternary_top1(), 0.74);  // the rest of the result stays
  EXPECT_FALSE(basic.result().artifact_sha256().empty());
  v1::Job full;
  ASSERT_TRUE(GetJobView(done.id(), v1::JOB_VIEW_FULL, &full).ok());
  EXPECT_EQ(full.result().layers_size(), 1);

  v1::ListJobsRequest request;  // ListJobs' default is BASIC
  v1::ListJobsResponse listed;
  ASSERT_TRUE(ListJobs(request, &listed).ok());
  ASSERT_EQ(listed.jobs_size(), 1);
  EXPECT_EQ(listed.jobs(0).result().layers_size(), 0);
  EXPECT_DOUBLE_EQ(listed.jobs(0).result().ternary_top1(), 0.74);
  request.set_view(v1::JOB_VIEW_FULL);
  ASSERT_TRUE(ListJobs(request, &listed).ok());
  ASSERT_EQ(listed.jobs_size(), 1);
  EXPECT_EQ(listed.jobs(0).result().layers_size(), 1);

  v1::Job ignored;
  const grpc::Status status = GetJobView(done.id(), 7, &ignored);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("view: unknown JobView value 7"), std::string::npos)
      << status.error_message();
  request.set_view(static_cast<v1::JobView>(-1));
  EXPECT_EQ(ListJobs(request, &listed).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// UpdateJob and DeleteJob under both commit modes of the scheduler.
class ApiWritesTest : public ApiSurfaceTest,
                      public ::testing::WithParamInterface<scheduler::CommitMode> {
 protected:
  void Customize(TerndOptions* options) override { options->scheduler.commit_mode = GetParam(); }
};

TEST_P(ApiWritesTest, UpdateJobChangesTheNameAndLabelsDurably) {
  v1::JobSpec spec = ValidSpec();
  (*spec.mutable_labels())["team"] = "red";
  const std::string id = SubmitOk(spec);
  const std::string other = SubmitOk(spec);

  v1::UpdateJobRequest request = UpdateRequest(id, {"spec.name", "spec.labels"});
  request.mutable_job()->mutable_spec()->set_name("renamed");
  (*request.mutable_job()->mutable_spec()->mutable_labels())["team"] = "blue";
  (*request.mutable_job()->mutable_spec()->mutable_labels())["stage"] = "eval";
  request.mutable_job()->mutable_spec()->set_priority(999);  // not in the mask: ignored
  v1::Job updated;
  grpc::Status status = Update(request, &updated);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(updated.spec().name(), "renamed");
  EXPECT_EQ(updated.spec().labels().size(), 2u);
  EXPECT_EQ(updated.spec().labels().at("team"), "blue");
  EXPECT_EQ(updated.spec().priority(), 0);
  EXPECT_EQ(updated.state(), v1::JOB_STATE_QUEUED);

  // Only the name, addressed by the resource name.
  v1::UpdateJobRequest by_name;
  by_name.mutable_job()->set_name("jobs/" + other);
  by_name.mutable_job()->mutable_spec()->set_name("other");
  by_name.mutable_update_mask()->add_paths("spec.name");
  ASSERT_TRUE(Update(by_name, &updated).ok());
  EXPECT_EQ(updated.spec().name(), "other");
  EXPECT_EQ(updated.spec().labels().at("team"), "red");  // untouched

  for (int restart = 0; restart < 2; ++restart) {
    v1::ListJobsRequest filter;
    (*filter.mutable_labels())["team"] = "blue";
    EXPECT_EQ(ListedIds(filter), std::vector<std::string>{id});
    (*filter.mutable_labels())["team"] = "red";
    EXPECT_EQ(ListedIds(filter), std::vector<std::string>{other});
    const v1::Job job = GetJobOk(id);
    EXPECT_EQ(job.spec().name(), "renamed");
    EXPECT_EQ(job.spec().labels().at("stage"), "eval");
    RestartTernd();  // the store has it
  }

  // Clearing every label.
  v1::UpdateJobRequest clear = UpdateRequest(id, {"spec.labels"});
  ASSERT_TRUE(Update(clear, &updated).ok());
  EXPECT_TRUE(updated.spec().labels().empty());
  v1::ListJobsRequest filter;
  (*filter.mutable_labels())["team"] = "blue";
  EXPECT_TRUE(ListedIds(filter).empty());
}

TEST_P(ApiWritesTest, UpdateJobRefusesWhatCannotChangeNamingIt) {
  const std::string id = SubmitOk(ValidSpec());
  v1::Job ignored;
  auto expect_invalid = [&](const v1::UpdateJobRequest& request, const std::string& says) {
    const grpc::Status status = Update(request, &ignored);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << says;
    EXPECT_NE(status.error_message().find(says), std::string::npos) << status.error_message();
  };
  expect_invalid(UpdateRequest(id, {}), "update_mask: required");
  expect_invalid(UpdateRequest(id, {"spec.name", "spec.priority"}),
                 "update_mask.paths[1]: \"spec.priority\" cannot be updated");
  expect_invalid(UpdateRequest(id, {"state"}), "\"state\" cannot be updated");
  expect_invalid(UpdateRequest("", {"spec.name"}), "job.id: required");
  v1::UpdateJobRequest mismatch = UpdateRequest(id, {"spec.name"});
  mismatch.mutable_job()->set_name("jobs/99");
  expect_invalid(mismatch, "names another job");
  v1::UpdateJobRequest bad_name = UpdateRequest(id, {"spec.name"});
  bad_name.mutable_job()->set_id("");
  bad_name.mutable_job()->set_name("job/1");
  expect_invalid(bad_name, "job.name: must be \"jobs/<id>\"");
  v1::UpdateJobRequest long_name = UpdateRequest(id, {"spec.name"});
  long_name.mutable_job()->mutable_spec()->set_name(std::string(200, 'n'));
  expect_invalid(long_name, "job.spec.name");
  v1::UpdateJobRequest bad_label = UpdateRequest(id, {"spec.labels"});
  (*bad_label.mutable_job()->mutable_spec()->mutable_labels())["Bad Key"] = "x";
  expect_invalid(bad_label, "job.spec.labels");
  // Nothing changed.
  EXPECT_EQ(GetJobOk(id).spec().name(), "test-job");

  EXPECT_EQ(Update(UpdateRequest("42", {"spec.name"}), &ignored).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_P(ApiWritesTest, UpdateJobWithAStaleEtagIsAbortedAndChangesNothing) {
  v1::JobSpec spec = ValidSpec();
  (*spec.mutable_labels())["team"] = "red";
  const std::string id = SubmitOk(spec);
  const v1::Job read = GetJobOk(id);
  ASSERT_EQ(read.etag().size(), 16u) << read.etag();
  // Stable while nothing UpdateJob may change changes: the same on every
  // read, in a list, after a restart and after a state change.
  v1::ListJobsResponse listed;
  ASSERT_TRUE(ListJobs(v1::ListJobsRequest(), &listed).ok());
  ASSERT_EQ(listed.jobs_size(), 1);
  EXPECT_EQ(listed.jobs(0).etag(), read.etag());
  v1::Job cancelled;
  ASSERT_TRUE(Cancel(id, &cancelled).ok());
  EXPECT_EQ(cancelled.etag(), read.etag());
  RestartTernd();
  EXPECT_EQ(GetJobOk(id).etag(), read.etag());

  // Two read-modify-writes of the labels from the same read: the first
  // wins, the second is refused instead of dropping the first's label.
  v1::UpdateJobRequest first = UpdateRequest(id, {"spec.labels"});
  first.mutable_job()->set_etag(read.etag());
  *first.mutable_job()->mutable_spec()->mutable_labels() = read.spec().labels();
  v1::UpdateJobRequest second = first;
  (*first.mutable_job()->mutable_spec()->mutable_labels())["stage"] = "eval";
  (*second.mutable_job()->mutable_spec()->mutable_labels())["seed"] = "3";
  v1::Job updated;
  grpc::Status status = Update(first, &updated);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_NE(updated.etag(), read.etag());
  EXPECT_EQ(GetJobOk(id).etag(), updated.etag());
  v1::Job ignored;
  status = Update(second, &ignored);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED) << status.error_message();
  EXPECT_NE(status.error_message().find("changed since its etag"), std::string::npos)
      << status.error_message();
  {
    const google::rpc::ErrorInfo info = ErrorInfoOf(status);
    EXPECT_EQ(info.reason(), "ETAG_MISMATCH");
    EXPECT_EQ(info.metadata().at("job_id"), id);
    EXPECT_EQ(info.metadata().at("etag"), updated.etag());
  }
  v1::Job now = GetJobOk(id);
  EXPECT_EQ(now.spec().labels().at("stage"), "eval");
  EXPECT_EQ(now.spec().labels().count("seed"), 0u);

  // Reapplied on the job as it is now, with its etag: both labels stay.
  second.mutable_job()->set_etag(now.etag());
  *second.mutable_job()->mutable_spec()->mutable_labels() = now.spec().labels();
  (*second.mutable_job()->mutable_spec()->mutable_labels())["seed"] = "3";
  ASSERT_TRUE(Update(second, &updated).ok());
  EXPECT_EQ(updated.spec().labels().size(), 3u);
  // Without an etag the update is unconditional, as before.
  v1::UpdateJobRequest rename = UpdateRequest(id, {"spec.name"});
  rename.mutable_job()->mutable_spec()->set_name("renamed");
  ASSERT_TRUE(Update(rename, &updated).ok());
  EXPECT_EQ(updated.spec().labels().size(), 3u);  // a name-only update keeps the labels
  // A job that does not exist is NOT_FOUND before any etag check.
  v1::UpdateJobRequest absent = UpdateRequest("42", {"spec.name"});
  absent.mutable_job()->set_etag(read.etag());
  EXPECT_EQ(Update(absent, &ignored).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_P(ApiWritesTest, DeleteJobRemovesAFinishedJobItsFilesAndFreesItsKey) {
  v1::JobSpec spec = ValidSpec();
  (*spec.mutable_labels())["team"] = "red";
  const v1::Job done = RunToSuccess(spec, "key-1");
  const std::string id = done.id();
  const fs::path artifact_dir = fs::path(done.result().artifact_path()).parent_path();
  const fs::path checkpoint_dir = done.checkpoint_directory();
  ASSERT_TRUE(fs::exists(done.result().artifact_path()));
  ASSERT_TRUE(fs::exists(checkpoint_dir / "step-1.ckpt"));

  // A job that has not ended cannot be deleted (the agent is still there:
  // it is ADMITTED at once).
  const std::string unfinished = SubmitOk(ValidSpec());
  grpc::Status status = Delete(unfinished);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("is ADMITTED: only a SUCCEEDED, FAILED or CANCELLED job"),
            std::string::npos)
      << status.error_message();
  {  // the same reason and metadata as any other operation in the wrong state
    const google::rpc::ErrorInfo info = ErrorInfoOf(status);
    EXPECT_EQ(info.reason(), "JOB_STATE_CONFLICT");
    EXPECT_EQ(info.metadata().at("state"), "ADMITTED");
    EXPECT_EQ(info.metadata().at("job_id"), unfinished);
  }

  status = Delete(id);
  ASSERT_TRUE(status.ok()) << status.error_message();
  v1::Job gone;
  EXPECT_EQ(GetJob(id, &gone).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Delete(id).error_code(), grpc::StatusCode::NOT_FOUND);
  std::vector<v1::JobEvent> events;
  EXPECT_EQ(Watch(id, 0, &events).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_FALSE(fs::exists(artifact_dir)) << artifact_dir;
  EXPECT_FALSE(fs::exists(checkpoint_dir)) << checkpoint_dir;
  EXPECT_TRUE(fs::exists(dir_ / "artifacts"));  // only the job's own directories went
  v1::ListJobsRequest filter;
  (*filter.mutable_labels())["team"] = "red";
  EXPECT_TRUE(ListedIds(filter).empty());
  EXPECT_EQ(ListedIds(v1::ListJobsRequest()), std::vector<std::string>{unfinished});

  // The idempotency key is free: the same key makes a new job.
  v1::SubmitJobResponse again;
  ASSERT_TRUE(Submit(spec, &again, "key-1").ok());
  EXPECT_TRUE(again.created());
  EXPECT_NE(again.job().id(), id);

  // The store holds no row of it (LoadJobs refuses orphaned label or rank
  // rows as DATA_LOSS), and a restarted ternd does not know it.
  StopTernd();
  {
    auto store = scheduler::SqliteJobStore::Open((dir_ / "ternd.db").string());
    ASSERT_TRUE(store.ok()) << store.status();
    auto jobs = (*store)->LoadJobs();
    ASSERT_TRUE(jobs.ok()) << jobs.status();
    for (const scheduler::Job& job : *jobs) EXPECT_NE(std::to_string(job.id), id);
    auto stored_events = (*store)->ReadEvents(std::stoll(id), 0, 100);
    ASSERT_TRUE(stored_events.ok()) << stored_events.status();
    EXPECT_TRUE(stored_events->empty());
  }
  StartTernd();
  EXPECT_EQ(GetJob(id, &gone).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(GetJobOk(unfinished).id(), unfinished);
}

TEST_P(ApiWritesTest, DeleteJobKeepsASpecsOwnCheckpointDirectory) {
  const fs::path own = dir_ / "my-checkpoints";
  fs::create_directories(own);
  std::ofstream(own / "step-9.ckpt") << "kept";
  v1::JobSpec spec = ValidSpec();
  spec.mutable_checkpoint()->set_directory(own.string());
  const std::string id = SubmitOk(spec);
  v1::Job cancelled;
  ASSERT_TRUE(Cancel(id, &cancelled).ok());
  ASSERT_TRUE(Delete(id).ok());
  EXPECT_TRUE(fs::exists(own / "step-9.ckpt"));
}

INSTANTIATE_TEST_SUITE_P(CommitModes, ApiWritesTest,
                         ::testing::Values(scheduler::CommitMode::kGroup,
                                           scheduler::CommitMode::kPerCall),
                         [](const auto& info) {
                           return info.param == scheduler::CommitMode::kGroup ? "Group" : "PerCall";
                         });

// Every request field annotated (google.api.field_behavior) = REQUIRED is
// enforced: the request without it is INVALID_ARGUMENT, the request with it
// is not.
TEST_F(ApiSurfaceTest, EveryRequiredRequestFieldIsEnforced) {
  const std::string queued = SubmitOk(ValidSpec());
  const std::string cancelled = SubmitOk(ValidSpec());
  v1::Job ignored_job;
  ASSERT_TRUE(Cancel(cancelled, &ignored_job).ok());

  std::map<std::string, testing::RequestCase> cases;
  {
    auto r = std::make_unique<v1::SubmitJobRequest>();
    *r->mutable_spec() = ValidSpec();
    cases["SubmitJob"] = {std::move(r), [&](const google::protobuf::Message& m) {
                            grpc::ClientContext ctx;
                            SetDeadline(&ctx);
                            v1::SubmitJobResponse out;
                            return jobs_->SubmitJob(
                                &ctx, static_cast<const v1::SubmitJobRequest&>(m), &out);
                          }};
  }
  {
    auto r = std::make_unique<v1::GetJobRequest>();
    r->set_job_id(queued);
    cases["GetJob"] = {std::move(r), [&](const google::protobuf::Message& m) {
                         grpc::ClientContext ctx;
                         SetDeadline(&ctx);
                         v1::Job out;
                         return jobs_->GetJob(&ctx, static_cast<const v1::GetJobRequest&>(m), &out);
                       }};
  }
  {
    auto r = std::make_unique<v1::UpdateJobRequest>(UpdateRequest(queued, {"spec.name"}));
    r->mutable_job()->mutable_spec()->set_name("required-test");
    cases["UpdateJob"] = {std::move(r), [&](const google::protobuf::Message& m) {
                            v1::Job out;
                            return Update(static_cast<const v1::UpdateJobRequest&>(m), &out);
                          }};
  }
  {
    auto r = std::make_unique<v1::DeleteJobRequest>();
    r->set_job_id(cancelled);
    cases["DeleteJob"] = {std::move(r), [&](const google::protobuf::Message& m) {
                            return Delete(static_cast<const v1::DeleteJobRequest&>(m).job_id());
                          }};
  }
  {
    auto r = std::make_unique<v1::CancelJobRequest>();
    r->set_job_id(queued);
    cases["CancelJob"] = {std::move(r), [&](const google::protobuf::Message& m) {
                            grpc::ClientContext ctx;
                            SetDeadline(&ctx);
                            v1::Job out;
                            return jobs_->CancelJob(
                                &ctx, static_cast<const v1::CancelJobRequest&>(m), &out);
                          }};
  }
  {
    auto r = std::make_unique<v1::WatchJobRequest>();
    r->set_job_id(cancelled);
    r->set_history_only(true);
    cases["WatchJob"] = {std::move(r), [&](const google::protobuf::Message& m) {
                           grpc::ClientContext ctx;
                           SetDeadline(&ctx);
                           auto reader =
                               jobs_->WatchJob(&ctx, static_cast<const v1::WatchJobRequest&>(m));
                           v1::JobEvent event;
                           while (reader->Read(&event)) {
                           }
                           return reader->Finish();
                         }};
  }
  {
    auto r = std::make_unique<v1::GetArtifactRequest>();
    r->set_job_id(queued);  // FAILED_PRECONDITION: not INVALID_ARGUMENT
    cases["GetArtifact"] = {std::move(r), [&](const google::protobuf::Message& m) {
                              grpc::ClientContext ctx;
                              SetDeadline(&ctx);
                              auto reader = jobs_->GetArtifact(
                                  &ctx, static_cast<const v1::GetArtifactRequest&>(m));
                              v1::GetArtifactResponse response;
                              while (reader->Read(&response)) {
                              }
                              return reader->Finish();
                            }};
  }

  const auto* service = v1::GetJobRequest::descriptor()->file()->FindServiceByName("JobService");
  ASSERT_NE(service, nullptr);
  const int checked =
      testing::ExpectRequiredFieldsEnforced(*service, cases, /*exact_message=*/false);
  EXPECT_EQ(checked, 8);  // Submit 1, Get 1, Update 2, Delete 1, Cancel 1, Watch 1, Artifact 1
}

// Another owner's UpdateJob and DeleteJob: error_details_test.cc
// (ExistenceTest), with the other job-id calls.

}  // namespace
}  // namespace tern::server
