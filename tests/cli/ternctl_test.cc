// ternctl (RunTernctl) against a fake JobService on 127.0.0.1:0.
#include "cli/ternctl.h"

#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "common/sha256.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "quant/artifact.h"
#include "tern/v1/job_service.grpc.pb.h"

namespace tern::cli {
namespace {

namespace fs = std::filesystem;
using google::protobuf::util::MessageDifferencer;
using google::protobuf::util::TimeUtil;

v1::JobEvent StateEvent(uint64_t seq, v1::JobState from, v1::JobState to) {
  v1::JobEvent e;
  e.set_sequence(seq);
  e.set_job_id("job-1");
  e.set_attempt(1);
  e.mutable_state_change()->set_from_state(from);
  e.mutable_state_change()->set_to_state(to);
  e.mutable_state_change()->mutable_reason()->set_code("TEST");
  return e;
}

v1::JobEvent ProgressEvent(uint64_t seq, int step) {
  v1::JobEvent e;
  e.set_sequence(seq);
  e.set_job_id("job-1");
  e.set_attempt(1);
  v1::Progress* p = e.mutable_progress();
  p->set_epoch(1);
  p->set_epochs(3);
  p->set_step(step);
  p->set_total_steps(300);
  p->set_loss(0.5);
  p->set_eta_seconds(30);
  return e;
}

class FakeJobService final : public v1::JobService::Service {
 public:
  grpc::Status SubmitJob(grpc::ServerContext* ctx, const v1::SubmitJobRequest* request,
                         v1::SubmitJobResponse* response) override {
    std::chrono::milliseconds delay;
    {
      std::lock_guard<std::mutex> lock(mu_);
      submits.push_back(*request);
      delay = submit_delay;
    }
    // A server that takes the call and does not answer (until the client gives up).
    for (const auto end = std::chrono::steady_clock::now() + delay;
         std::chrono::steady_clock::now() < end;) {
      if (ctx->IsCancelled()) return grpc::Status::CANCELLED;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (unavailable_submits > 0) {
      --unavailable_submits;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "restarting");
    }
    auto owner = ctx->client_metadata().find("x-tern-owner");
    last_owner = owner == ctx->client_metadata().end()
                     ? ""
                     : std::string(owner->second.data(), owner->second.size());
    if (!submit_error.ok()) return submit_error;
    response->mutable_job()->set_id("job-" + std::to_string(submits.size()));
    *response->mutable_job()->mutable_spec() = request->spec();
    response->mutable_job()->set_state(v1::JOB_STATE_QUEUED);
    response->set_created(true);
    return grpc::Status::OK;
  }

  grpc::Status GetJob(grpc::ServerContext*, const v1::GetJobRequest* request,
                      v1::Job* job) override {
    if (request->job_id() == "slow") std::this_thread::sleep_for(std::chrono::seconds(2));
    std::lock_guard<std::mutex> lock(mu_);
    get_views.push_back(request->view());
    auto it = jobs.find(request->job_id());
    if (it == jobs.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "job " + request->job_id() + " not found");
    }
    *job = it->second;
    if (interleaved_label) {  // another client's update lands right after this read
      (*it->second.mutable_spec()->mutable_labels())[interleaved_label->first] =
          interleaved_label->second;
      it->second.set_etag(it->second.etag() + "+");
      interleaved_label.reset();
    }
    return grpc::Status::OK;
  }

  // Like ternd's: job.etag, when set, must be the job's (ABORTED, reason
  // ETAG_MISMATCH); then the paths of the mask are applied and the etag moves.
  grpc::Status UpdateJob(grpc::ServerContext*, const v1::UpdateJobRequest* request,
                         v1::Job* job) override {
    std::lock_guard<std::mutex> lock(mu_);
    updates.push_back(*request);
    auto it = jobs.find(request->job().id());
    if (it == jobs.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "not found");
    v1::Job& stored = it->second;
    if (!request->job().etag().empty() && request->job().etag() != stored.etag()) {
      google::rpc::Status details;
      details.set_code(grpc::StatusCode::ABORTED);
      details.set_message("job changed since its etag was read");
      google::rpc::ErrorInfo info;
      info.set_reason("ETAG_MISMATCH");
      info.set_domain("tern.v1");
      details.add_details()->PackFrom(info);
      return grpc::Status(grpc::StatusCode::ABORTED, details.message(),
                          details.SerializeAsString());
    }
    for (const std::string& path : request->update_mask().paths()) {
      if (path == "spec.name") stored.mutable_spec()->set_name(request->job().spec().name());
      if (path == "spec.labels") {
        *stored.mutable_spec()->mutable_labels() = request->job().spec().labels();
      }
    }
    stored.set_etag(stored.etag() + "+");
    *job = stored;
    return grpc::Status::OK;
  }

  grpc::Status ListJobs(grpc::ServerContext*, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override {
    std::lock_guard<std::mutex> lock(mu_);
    list_requests.push_back(*request);
    const int start = request->page_token().empty() ? 0 : std::stoi(request->page_token().substr(1));
    const int size = request->page_size() > 0 ? std::min(request->page_size(), 3) : 3;
    for (int i = start; i < start + size && i < list_total; ++i) {
      v1::Job* j = response->add_jobs();
      j->set_id("job-" + std::to_string(i));
      j->set_state(v1::JOB_STATE_RUNNING);
    }
    if (start + size < list_total) response->set_next_page_token("p" + std::to_string(start + size));
    return grpc::Status::OK;
  }

  grpc::Status CancelJob(grpc::ServerContext*, const v1::CancelJobRequest* request,
                         v1::Job* job) override {
    if (request->job_id() == "done") {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "job done already SUCCEEDED");
    }
    job->set_id(request->job_id());
    job->set_state(v1::JOB_STATE_CANCELLED);
    job->mutable_state_reason()->set_code("CANCELLED_BY_USER");
    job->mutable_state_reason()->set_message(request->reason());
    return grpc::Status::OK;
  }

  // Sends `events` with sequence >= from_sequence; the first call stops
  // after `break_after` events with UNAVAILABLE when break_after > 0.
  grpc::Status WatchJob(grpc::ServerContext*, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobEvent>* writer) override {
    std::vector<v1::JobEvent> to_send;
    int break_now = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      watch_requests.push_back(*request);
      if (!jobs.count(request->job_id())) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no job");
      if (watch_requests.size() > 1 && unavailable_watches > 0) {
        --unavailable_watches;
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "restarting (test)");
      }
      for (const v1::JobEvent& e : events) {
        if (e.sequence() >= request->from_sequence()) to_send.push_back(e);
      }
      break_now = break_after;
      break_after = 0;
    }
    int sent = 0;
    for (const v1::JobEvent& e : to_send) {
      if (break_now > 0 && sent == break_now) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset (test)");
      }
      writer->Write(e);
      ++sent;
    }
    return grpc::Status::OK;
  }

  grpc::Status GetArtifact(grpc::ServerContext*, const v1::GetArtifactRequest* request,
                           grpc::ServerWriter<v1::GetArtifactResponse>* writer) override {
    int break_now = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      artifact_requests.push_back(*request);
      break_now = artifact_break_after_chunks;
      artifact_break_after_chunks = 0;
    }
    v1::GetArtifactResponse header;
    header.mutable_header()->set_file_name("../../job-1.tern");  // the client keeps the base name
    header.mutable_header()->set_size_bytes(static_cast<int64_t>(artifact.size()));
    header.mutable_header()->set_sha256(Sha256Hex(artifact));
    writer->Write(header);
    int chunks = 0;
    for (size_t off = static_cast<size_t>(request->offset()); off < artifact.size(); off += 1000) {
      if (break_now > 0 && chunks == break_now) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset (test)");
      }
      v1::GetArtifactResponse chunk;
      chunk.mutable_chunk()->set_offset(static_cast<int64_t>(off));
      std::string data = artifact.substr(off, 1000);
      if (corrupt && off == 0) data[10] ^= 0x1;
      chunk.mutable_chunk()->set_data(data);
      writer->Write(chunk);
      ++chunks;
    }
    v1::GetArtifactResponse result;
    result.mutable_result()->set_ternary_top1(0.87);
    result.mutable_result()->set_bits_per_weight(1.6);
    writer->Write(result);
    return grpc::Status::OK;
  }

  // Two pages: node-a, then node-b.
  grpc::Status ListAgents(grpc::ServerContext*, const v1::ListAgentsRequest* request,
                          v1::ListAgentsResponse* response) override {
    if (request->page_token() == "after-node-a") {
      v1::AgentInfo* b = response->add_agents();
      b->set_agent_id("node-b");
      b->set_host("10.0.0.8");
      b->set_state(v1::AGENT_STATE_READY);
      return grpc::Status::OK;
    }
    if (!request->page_token().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "page_token: unknown");
    }
    response->set_next_page_token("after-node-a");
    v1::AgentInfo* a = response->add_agents();
    a->set_agent_id("node-a");
    a->set_host("10.0.0.7");
    a->set_state(v1::AGENT_STATE_DRAINING);
    v1::AgentSlotUsage* cpu = a->add_slots();
    cpu->set_device_kind(v1::DEVICE_CPU);
    cpu->set_total(4);
    cpu->set_used(3);
    *a->mutable_lease_expire_time() = TimeUtil::GetCurrentTime() + TimeUtil::SecondsToDuration(12);
    return grpc::Status::OK;
  }

  grpc::Status WhoAmI(grpc::ServerContext*, const v1::WhoAmIRequest*,
                      v1::WhoAmIResponse* response) override {
    response->set_name("alice");
    response->set_server_version("0.1.0 (v0.1.0-3-gabc1234)");
    response->set_proven_by("bearer token");
    response->set_authenticated(true);
    v1::OwnerQuota* quota = response->mutable_quota();
    quota->set_line("alice");
    quota->set_unfinished_jobs(3);
    quota->set_max_unfinished_jobs(20);
    quota->set_max_priority(-5);
    v1::SlotQuota* cpu = quota->add_slots();
    cpu->set_device_kind(v1::DEVICE_CPU);
    cpu->set_used(1);
    v1::SlotQuota* cuda = quota->add_slots();
    cuda->set_device_kind(v1::DEVICE_CUDA);
    cuda->set_used(6);
    cuda->set_limit(8);
    return grpc::Status::OK;
  }

  std::mutex mu_;
  std::vector<v1::SubmitJobRequest> submits;
  std::string last_owner;
  grpc::Status submit_error = grpc::Status::OK;
  std::chrono::milliseconds submit_delay{0};  // each SubmitJob waits this long first
  int unavailable_submits = 0;                // SubmitJob calls answering UNAVAILABLE first
  std::map<std::string, v1::Job> jobs;
  std::optional<std::pair<std::string, std::string>> interleaved_label;  // see GetJob
  std::vector<v1::UpdateJobRequest> updates;
  std::vector<int> get_views;  // GetJobRequest.view of each call
  int list_total = 7;
  std::vector<v1::ListJobsRequest> list_requests;
  std::vector<v1::JobEvent> events;
  int break_after = 0;
  std::vector<v1::WatchJobRequest> watch_requests;
  int unavailable_watches = 0;  // WatchJob calls after the first answering UNAVAILABLE
  std::string artifact;
  bool corrupt = false;
  int artifact_break_after_chunks = 0;
  std::vector<v1::GetArtifactRequest> artifact_requests;
};

struct Result {
  int code = -1;
  std::string out, err;
};

class TernctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    dir_ = ::testing::TempDir() + "/ternctl_test_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    v1::Job job;
    job.set_id("job-1");
    job.set_state(v1::JOB_STATE_SUCCEEDED);
    fake_.jobs["job-1"] = job;
  }
  void TearDown() override { server_->Shutdown(std::chrono::system_clock::now()); }

  Result Run(std::vector<std::string> args, bool tty = false,
             const std::string& server = "") {
    std::vector<std::string> all = {"ternctl", "--server",
                                    server.empty() ? "127.0.0.1:" + std::to_string(port_) : server};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<const char*> argv;
    for (const std::string& a : all) argv.push_back(a.c_str());
    std::ostringstream out, err;
    Result r;
    r.code = RunTernctl(static_cast<int>(argv.size()), argv.data(), out, err, tty);
    r.out = out.str();
    r.err = err.str();
    return r;
  }

  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = dir_ + "/" + name;
    EXPECT_TRUE(WriteFileAtomically(path, content).ok());
    return path;
  }

  template <typename M>
  M ParseJson(const std::string& line) {
    M m;
    const auto s = google::protobuf::util::JsonStringToMessage(line, &m);
    EXPECT_TRUE(s.ok()) << s.ToString() << ": " << line;
    return m;
  }

  void SetHistory(v1::JobState final_state) {
    fake_.events = {StateEvent(1, v1::JOB_STATE_UNSPECIFIED, v1::JOB_STATE_QUEUED),
                    StateEvent(2, v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING),
                    ProgressEvent(3, 100), ProgressEvent(4, 200),
                    StateEvent(5, v1::JOB_STATE_RUNNING, final_state)};
    fake_.jobs["job-1"].set_state(final_state);
  }

  int port_ = 0;
  FakeJobService fake_;
  std::unique_ptr<grpc::Server> server_;
  std::string dir_;
};

TEST_F(TernctlTest, SubmitYamlWithOverridesSendsTheExpectedSpec) {
  const std::string file = Write("job.yaml", R"(
name: from-file
labels: {team: vision}
model: {arch: resnet20, width_multiplier: 0.5}
dataset: {kind: idx, max_train_examples: 2000}
quantization: {method: hla, lambda_max: 0.02}
optimization: {epochs: 10, batch_size: 128}
)");
  Result r = Run({"--owner", "alice", "submit", file, "--method", "twn", "--epochs", "2",
                  "--ranks", "2", "--batch-size", "64", "--lr", "0.05", "--name", "demo",
                  "--label", "run=7", "--priority", "5", "--cuda-graph", "on",
                  "--idempotency-key", "key-1"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "job-1\n");
  ASSERT_EQ(fake_.submits.size(), 1u);
  EXPECT_EQ(fake_.submits[0].idempotency_key(), "key-1");
  EXPECT_EQ(fake_.last_owner, "alice");
  v1::JobSpec want;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(R"(
      name: "demo" priority: 5
      labels { key: "team" value: "vision" } labels { key: "run" value: "7" }
      model { arch: "resnet20" width_multiplier: 0.5 }
      dataset { kind: DATASET_IDX max_train_examples: 2000 }
      quantization { method: METHOD_TWN lambda_max: 0.02 }
      optimization { epochs: 2 batch_size: 64 lr: 0.05 cuda_graph: true }
      resources { ranks: 2 })",
                                                            &want));
  EXPECT_TRUE(MessageDifferencer::Equals(fake_.submits[0].spec(), want))
      << fake_.submits[0].spec().DebugString();
}

TEST_F(TernctlTest, RepeatedLabelFlagsTakeOneValueEach) {
  const std::string file = Write("job.yaml", "optimization: {epochs: 1}\n");
  Result r = Run({"submit", "--label", "a=1", "--label", "b=2", file});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(fake_.submits.size(), 1u);
  EXPECT_EQ(fake_.submits[0].spec().labels().size(), 2u);
  EXPECT_EQ(fake_.submits[0].spec().labels().at("b"), "2");
}

TEST_F(TernctlTest, SubmitWithoutAKeyGetsAGeneratedOne) {
  Result r = Run({"submit", Write("job.json", R"({"optimization": {"epochs": 1}})")});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(fake_.submits.size(), 1u);
  EXPECT_EQ(fake_.submits[0].idempotency_key().rfind("ternctl-", 0), 0u);
  EXPECT_EQ(fake_.submits[0].spec().optimization().epochs(), 1);
}

TEST_F(TernctlTest, JsonOutputsParse) {
  const std::string file = Write("job.yaml", "optimization: {epochs: 1}\n");
  Result submit = Run({"--json", "submit", file});
  ASSERT_EQ(submit.code, 0) << submit.err;
  EXPECT_EQ(ParseJson<v1::SubmitJobResponse>(submit.out).job().id(), "job-1");

  Result get = Run({"get", "job-1", "--json"});  // global flags after the command too
  ASSERT_EQ(get.code, 0) << get.err;
  EXPECT_EQ(ParseJson<v1::Job>(get.out).state(), v1::JOB_STATE_SUCCEEDED);

  Result cancel = Run({"--json", "cancel", "job-9", "--reason", "not needed"});
  ASSERT_EQ(cancel.code, 0) << cancel.err;
  const v1::Job cancelled = ParseJson<v1::Job>(cancel.out);
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(cancelled.state_reason().message(), "not needed");

  // --limit 5 over pages of 3: two calls, five jobs, a token for the rest.
  Result list = Run({"--json", "list", "--limit", "5", "--state", "running,queued",
                     "--label", "team=vision", "--owner", "bob"});
  ASSERT_EQ(list.code, 0) << list.err;
  const v1::ListJobsResponse listed = ParseJson<v1::ListJobsResponse>(list.out);
  EXPECT_EQ(listed.jobs_size(), 5);
  EXPECT_FALSE(listed.next_page_token().empty());
  ASSERT_EQ(fake_.list_requests.size(), 2u);
  const v1::ListJobsRequest& first = fake_.list_requests[0];
  ASSERT_EQ(first.states_size(), 2);
  EXPECT_EQ(first.states(0), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(first.states(1), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(first.owner(), "bob");
  EXPECT_EQ(first.labels().at("team"), "vision");
  EXPECT_EQ(fake_.list_requests[1].page_token(), "p3");

  Result all = Run({"--json", "list", "--limit", "0"});
  ASSERT_EQ(all.code, 0) << all.err;
  EXPECT_EQ(ParseJson<v1::ListJobsResponse>(all.out).jobs_size(), 7);

  SetHistory(v1::JOB_STATE_SUCCEEDED);
  Result watch = Run({"--json", "watch", "job-1"});
  ASSERT_EQ(watch.code, 0) << watch.err;
  std::istringstream lines(watch.out);
  int n = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    EXPECT_EQ(ParseJson<v1::JobEvent>(line).sequence(), static_cast<uint64_t>(n + 1));
  }
  EXPECT_EQ(n, 5);
}

TEST_F(TernctlTest, HumanOutputs) {
  Result list = Run({"list", "--limit", "2"});
  ASSERT_EQ(list.code, 0) << list.err;
  EXPECT_EQ(list.out.rfind("ID", 0), 0u) << list.out;
  EXPECT_NE(list.out.find("job-1  RUNNING"), std::string::npos) << list.out;
  EXPECT_NE(list.err.find("--page-token p2"), std::string::npos) << list.err;
  Result get = Run({"get", "job-1"});
  ASSERT_EQ(get.code, 0);
  EXPECT_NE(get.out.find("state:      SUCCEEDED"), std::string::npos) << get.out;
  std::lock_guard<std::mutex> lock(fake_.mu_);
  ASSERT_FALSE(fake_.get_views.empty());
  EXPECT_EQ(fake_.get_views.back(), v1::JOB_VIEW_FULL);  // `get` shows every field
}

TEST_F(TernctlTest, AgentsListsStateSlotsAndLease) {
  Result agents = Run({"agents"});
  ASSERT_EQ(agents.code, 0) << agents.err;
  EXPECT_EQ(agents.out.rfind("AGENT", 0), 0u) << agents.out;
  EXPECT_NE(agents.out.find("node-a  10.0.0.7  DRAINING  3/4       -          ends in 1"),
            std::string::npos)
      << agents.out;
  EXPECT_NE(agents.out.find("node-b  10.0.0.8"), std::string::npos)  // the second page
      << agents.out;
  Result json = Run({"--json", "agents"});
  ASSERT_EQ(json.code, 0) << json.err;
  const auto listed = ParseJson<v1::ListAgentsResponse>(json.out);
  ASSERT_EQ(listed.agents_size(), 2);
  EXPECT_EQ(listed.agents(0).state(), v1::AGENT_STATE_DRAINING);
  EXPECT_EQ(listed.agents(1).agent_id(), "node-b");
  EXPECT_TRUE(listed.next_page_token().empty());
}

TEST_F(TernctlTest, WhoAmIShowsTheNameAndTheQuota) {
  Result who = Run({"whoami"});
  ASSERT_EQ(who.code, 0) << who.err;
  EXPECT_EQ(who.out,
            "alice (bearer token; sees its own jobs)\n"
            "quota: cpu 1 slot, cuda 6 of 8 slots, 3 of 20 unfinished jobs, priority at most -5\n"
            "server: ternd 0.1.0 (v0.1.0-3-gabc1234)\n");
  Result json = Run({"--json", "whoami"});
  ASSERT_EQ(json.code, 0) << json.err;
  EXPECT_EQ(ParseJson<v1::WhoAmIResponse>(json.out).quota().slots(1).limit(), 8);
}

TEST_F(TernctlTest, ExitCodes) {
  EXPECT_EQ(Run({"get", "nope"}).code, kExitNotFound);
  Result not_found = Run({"get", "nope"});
  EXPECT_NE(not_found.err.find("NOT_FOUND: job nope not found"), std::string::npos)
      << not_found.err;
  EXPECT_EQ(Run({"watch", "nope"}).code, kExitNotFound);
  EXPECT_EQ(Run({"cancel", "done"}).code, kExitOther);  // FAILED_PRECONDITION
  EXPECT_EQ(Run({}).code, kExitUsage);                  // no command
  EXPECT_EQ(Run({"get"}).code, kExitUsage);             // missing ID
  EXPECT_EQ(Run({"frobnicate"}).code, kExitUsage);
  EXPECT_EQ(Run({"submit", dir_ + "/missing.yaml"}).code, kExitUsage);
  EXPECT_EQ(Run({"submit", Write("bad.yaml", "optimization: {epochs: many}\n")}).code, kExitUsage);
  EXPECT_EQ(Run({"list", "--state", "sleeping"}).code, kExitUsage);
  fake_.submit_error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                    "optimization.epochs: must be > 0");
  Result invalid = Run({"submit", Write("zero.yaml", "optimization: {epochs: 0}\n")});
  EXPECT_EQ(invalid.code, kExitUsage);
  EXPECT_NE(invalid.err.find("optimization.epochs: must be > 0"), std::string::npos);
  fake_.submit_error = grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "key reused");
  EXPECT_EQ(Run({"submit", Write("ok.yaml", "optimization: {epochs: 1}\n")}).code, kExitOther);

  Result help = Run({"--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("Exit codes"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("4  server unavailable"), std::string::npos) << help.out;
}

TEST_F(TernctlTest, ErrorDetailsArePrintedOnePerLine) {
  google::rpc::Status details;
  details.set_code(grpc::StatusCode::INVALID_ARGUMENT);
  details.set_message("spec.optimization.epochs: must be > 0; spec.model.arch: unknown");
  google::rpc::BadRequest bad;
  auto* epochs = bad.add_field_violations();
  epochs->set_field("spec.optimization.epochs");
  epochs->set_description("must be > 0");
  auto* arch = bad.add_field_violations();
  arch->set_field("spec.model.arch");
  arch->set_description("unknown");
  details.add_details()->PackFrom(bad);
  google::rpc::RetryInfo retry;
  retry.mutable_retry_delay()->set_seconds(1);
  retry.mutable_retry_delay()->set_nanos(500000000);
  details.add_details()->PackFrom(retry);
  google::rpc::ErrorInfo info;
  info.set_reason("SPEC_INVALID");
  info.set_domain("tern.v1");
  details.add_details()->PackFrom(info);
  fake_.submit_error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, details.message(),
                                    details.SerializeAsString());
  Result r = Run({"submit", Write("zero.yaml", "optimization: {epochs: 0}\n")});
  EXPECT_EQ(r.code, kExitUsage);  // exit codes are unchanged
  EXPECT_NE(r.err.find("INVALID_ARGUMENT: spec.optimization.epochs: must be > 0; "),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("\n    spec.optimization.epochs: must be > 0\n"
                       "    spec.model.arch: unknown\n"
                       "    reason: SPEC_INVALID\n"
                       "    retry after: 1.5s\n"),
            std::string::npos)
      << r.err;
  // The generated idempotency key is printed, so the user can repeat it.
  EXPECT_NE(r.err.find("ternctl: idempotency key ternctl-"), std::string::npos) << r.err;
}

TEST_F(TernctlTest, UpdateOfLabelsLosesNoConcurrentUpdate) {
  v1::Job job;
  job.set_id("j1");
  job.set_etag("e1");
  (*job.mutable_spec()->mutable_labels())["team"] = "red";
  fake_.jobs["j1"] = job;
  // Between ternctl's read and its update, another client adds a label.
  fake_.interleaved_label = std::make_pair("owner-note", "x");
  Result r = Run({"update", "j1", "--label", "stage=eval", "--remove-label", "team"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  // The first update carried the etag of its read and was refused; the
  // second was made from a fresh read.
  ASSERT_EQ(fake_.updates.size(), 2u);
  EXPECT_EQ(fake_.updates[0].job().etag(), "e1");
  EXPECT_EQ(fake_.updates[1].job().etag(), "e1+");
  const auto& labels = fake_.jobs["j1"].spec().labels();
  EXPECT_EQ(labels.size(), 2u);
  EXPECT_EQ(labels.at("stage"), "eval");
  EXPECT_EQ(labels.at("owner-note"), "x");  // kept
  EXPECT_EQ(labels.count("team"), 0u);

  // A name alone needs no read and no etag.
  fake_.updates.clear();
  r = Run({"update", "j1", "--name", "renamed"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  ASSERT_EQ(fake_.updates.size(), 1u);
  EXPECT_TRUE(fake_.updates[0].job().etag().empty());
  EXPECT_EQ(fake_.jobs["j1"].spec().name(), "renamed");
  EXPECT_EQ(fake_.jobs["j1"].spec().labels().size(), 2u);
}

TEST_F(TernctlTest, UnreachableOrSlowServerExitsFour) {
  // A port nobody listens on: bind one, then close it.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int dead_port = ntohs(addr.sin_port);
  ::close(fd);
  Result r = Run({"--timeout", "2", "get", "job-1"}, false, "127.0.0.1:" + std::to_string(dead_port));
  EXPECT_EQ(r.code, kExitUnavailable) << r.err;
  EXPECT_NE(r.err.find("UNAVAILABLE"), std::string::npos) << r.err;

  Result slow = Run({"--timeout", "0.2", "get", "slow"});
  EXPECT_EQ(slow.code, kExitUnavailable) << slow.err;
  EXPECT_NE(slow.err.find("DEADLINE_EXCEEDED"), std::string::npos) << slow.err;
}

TEST_F(TernctlTest, SubmitRetriesEndWithinOneTimeout) {
  const std::string file = Write("job.json", R"({"optimization": {"epochs": 1}})");
  // A server that accepts the call and never answers: one --timeout, one
  // attempt, not a fresh --timeout for each retry.
  fake_.submit_delay = std::chrono::seconds(5);
  const auto start = std::chrono::steady_clock::now();
  Result r = Run({"--timeout", "0.5", "submit", file});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.code, kExitUnavailable) << r.err;
  EXPECT_NE(r.err.find("DEADLINE_EXCEEDED"), std::string::npos) << r.err;
  EXPECT_EQ(fake_.submits.size(), 1u);
  EXPECT_LT(seconds, 2.0);  // three attempts of 0.5 s and their pauses took 3 s

  // A ternd restarting (UNAVAILABLE for a while): retried with the same
  // idempotency key until it answers, within the default --timeout.
  fake_.submit_delay = std::chrono::milliseconds(0);
  fake_.submits.clear();
  fake_.unavailable_submits = 6;
  r = Run({"submit", file, "--idempotency-key", "k1"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "job-7\n");
  ASSERT_EQ(fake_.submits.size(), 7u);
  for (const v1::SubmitJobRequest& s : fake_.submits) EXPECT_EQ(s.idempotency_key(), "k1");
}

TEST_F(TernctlTest, WatchExitCodeFollowsTheFinalState) {
  SetHistory(v1::JOB_STATE_SUCCEEDED);
  Result ok = Run({"watch", "job-1"});
  EXPECT_EQ(ok.code, kExitOk) << ok.err;
  EXPECT_NE(ok.out.find("#2 state QUEUED -> RUNNING (TEST)"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("progress epoch 1/3 step 200/300"), std::string::npos) << ok.out;
  SetHistory(v1::JOB_STATE_FAILED);
  EXPECT_EQ(Run({"watch", "job-1"}).code, kExitJobFailed);
  SetHistory(v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Run({"watch", "job-1"}).code, kExitJobFailed);
}

TEST_F(TernctlTest, WatchReportsAnOutageOnceWhateverTheRetries) {
  SetHistory(v1::JOB_STATE_SUCCEEDED);
  fake_.break_after = 2;         // the stream breaks after two events,
  fake_.unavailable_watches = 3;  // then ternd is away for three tries
  Result r = Run({"watch", "job-1"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  ASSERT_EQ(fake_.watch_requests.size(), 5u);
  EXPECT_EQ(fake_.watch_requests[4].from_sequence(), 3u);
  size_t broke = 0;
  for (size_t at = r.err.find("stream broke"); at != std::string::npos;
       at = r.err.find("stream broke", at + 1)) {
    ++broke;
  }
  EXPECT_EQ(broke, 1u) << r.err;
  EXPECT_NE(r.err.find("stream back"), std::string::npos) << r.err;
}

TEST_F(TernctlTest, WatchResumesAfterTheStreamBreaks) {
  SetHistory(v1::JOB_STATE_SUCCEEDED);
  fake_.break_after = 3;
  Result r = Run({"watch", "job-1"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  ASSERT_EQ(fake_.watch_requests.size(), 2u);
  EXPECT_EQ(fake_.watch_requests[0].from_sequence(), 1u);
  EXPECT_EQ(fake_.watch_requests[1].from_sequence(), 4u);
  EXPECT_NE(r.err.find("to resume from sequence 4"), std::string::npos) << r.err;
  // Every event printed exactly once.
  for (const char* seq : {"#1 ", "#2 ", "#3 ", "#4 ", "#5 "}) {
    const size_t first = r.out.find(seq);
    ASSERT_NE(first, std::string::npos) << seq << r.out;
    EXPECT_EQ(r.out.find(seq, first + 1), std::string::npos) << seq << r.out;
  }
}

TEST_F(TernctlTest, WatchOnATerminalShowsAProgressBar) {
  SetHistory(v1::JOB_STATE_SUCCEEDED);
  Result r = Run({"watch", "job-1"}, /*tty=*/true);
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_NE(r.out.find("\r\033[Kepoch 1/3 ["), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("step 200/300 loss 0.500 ETA 30s"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("progress epoch"), std::string::npos);  // the bar replaces progress lines
  EXPECT_NE(r.out.find("job job-1 SUCCEEDED"), std::string::npos) << r.out;
}

TEST_F(TernctlTest, LogsPrintsTheHistoryWithLogLines) {
  SetHistory(v1::JOB_STATE_SUCCEEDED);
  Result r = Run({"logs", "job-1"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  ASSERT_EQ(fake_.watch_requests.size(), 1u);
  EXPECT_TRUE(fake_.watch_requests[0].include_logs());
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 5);
  // A running job: the history, then ternctl stops waiting.
  fake_.jobs["job-1"].set_state(v1::JOB_STATE_RUNNING);
  fake_.events.resize(4);
  Result live = Run({"logs", "job-1"});
  EXPECT_EQ(live.code, kExitOk) << live.err;
  EXPECT_EQ(std::count(live.out.begin(), live.out.end(), '\n'), 4);
  // Without -f the server ends the stream after the history; with -f not.
  Result follow = Run({"logs", "job-1", "-f"});
  ASSERT_EQ(fake_.watch_requests.size(), 3u);
  EXPECT_TRUE(fake_.watch_requests[0].history_only());
  EXPECT_TRUE(fake_.watch_requests[1].history_only());
  EXPECT_FALSE(fake_.watch_requests[2].history_only());
}

TEST_F(TernctlTest, FetchVerifiesTheChecksumAndWritesAtomically) {
  for (int i = 0; i < 2500; ++i) fake_.artifact += static_cast<char>('a' + i % 26);
  const std::string out_dir = dir_ + "/out";
  fs::create_directories(out_dir);
  Result r = Run({"fetch", "job-1", "-o", out_dir});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  const std::string path = out_dir + "/job-1.tern";
  auto bytes = ReadFileToString(path);
  ASSERT_TRUE(bytes.ok()) << r.out;
  EXPECT_EQ(*bytes, fake_.artifact);
  EXPECT_NE(r.out.find("verified"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ternary 87.00%"), std::string::npos) << r.out;

  Result json = Run({"--json", "fetch", "job-1", "-o", dir_ + "/named.tern"});
  ASSERT_EQ(json.code, kExitOk) << json.err;
  const auto j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["path"], dir_ + "/named.tern");
  EXPECT_EQ(j["size_bytes"], 2500);
  EXPECT_EQ(j["sha256"], Sha256Hex(fake_.artifact));
  EXPECT_DOUBLE_EQ(j["result"]["ternary_top1"].get<double>(), 0.87);
}

TEST_F(TernctlTest, FetchRejectsACorruptedStream) {
  fake_.artifact = std::string(2500, 'x');
  fake_.corrupt = true;
  const std::string path = dir_ + "/model.tern";
  Result r = Run({"fetch", "job-1", "-o", path});
  EXPECT_EQ(r.code, kExitOther);
  EXPECT_NE(r.err.find("checksum mismatch"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(path));
  for (const auto& entry : fs::directory_iterator(dir_)) {
    EXPECT_EQ(entry.path().string().find(".part"), std::string::npos) << entry.path();
  }
}

TEST_F(TernctlTest, FetchResumesAnInterruptedDownload) {
  for (int i = 0; i < 3500; ++i) fake_.artifact += static_cast<char>(i % 251);
  fake_.artifact_break_after_chunks = 2;
  const std::string path = dir_ + "/resumed.tern";
  Result r = Run({"fetch", "job-1", "-o", path});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  ASSERT_EQ(fake_.artifact_requests.size(), 2u);
  EXPECT_EQ(fake_.artifact_requests[1].offset(), 2000);
  EXPECT_EQ(*ReadFileToString(path), fake_.artifact);
}

// A small artifact: an FP first convolution, one ternary layer with scales
// per channel (half its codes zero), one BatchNorm bias.
quant::Artifact SmallArtifact() {
  quant::Artifact a;
  a.architecture = R"({"arch":"resnet20","width_multiplier":0.5})";
  a.metadata = R"({"task":"classification","method":"hla","job":"j","steps":40})";
  quant::ArtifactTensor conv;
  conv.name = "conv1.weight";
  conv.shape = {2, 1, 3, 3};
  conv.values.assign(18, 0.5f);
  quant::ArtifactTensor ternary;
  ternary.name = "blocks.0.conv1.weight";
  ternary.shape = {2, 2, 1, 1};
  ternary.kind = quant::ArtifactTensor::Kind::kTernary;
  ternary.granularity = quant::Granularity::kChannel;
  ternary.codes = {1, 0, -1, 0};
  ternary.pos_scale = {0.5f, 0.25f};
  ternary.neg_scale = {0.5f, 0.75f};
  quant::ArtifactTensor bias;
  bias.name = "bn1.bias";
  bias.shape = {2};
  bias.values = {0.f, 0.f};
  a.tensors = {conv, ternary, bias};
  return a;
}

TEST_F(TernctlTest, InspectSummarizesAnArtifactWithoutTheServer) {
  const std::string path = dir_ + "/small.tern";
  ASSERT_TRUE(quant::WriteArtifactFile(SmallArtifact(), path).ok());
  Result r = Run({"inspect", path}, false, "127.0.0.1:1");  // nothing listens there
  ASSERT_EQ(r.code, 0) << r.err;
  for (const std::string& want : {
           std::string("model: {\"arch\":\"resnet20\",\"width_multiplier\":0.5}\n"),
           std::string("trained: task classification, method hla, job j, steps 40\n"),
           std::string("ternary: 4 weights in 1 tensors, 2.00 bits each (codes; scales per "
                       "channel), 50.0% zeros\n"),
           std::string("float32: 20 values in 2 tensors\n"),
           std::string("and 1 float32 tensors of at most one dimension (BatchNorm, biases): 2 "
                       "values\n")}) {
    EXPECT_NE(r.out.find(want), std::string::npos) << "missing: " << want << "in:\n" << r.out;
  }
  // The ternary layer's row: its zeros and mean scales; the FP layer's row.
  EXPECT_TRUE(std::regex_search(
      r.out, std::regex(R"(\nblocks\.0\.conv1\.weight +ternary +2x2x1x1 +50\.0% +0\.375 +0\.625\n)")))
      << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(\nconv1\.weight +float32 +2x1x3x3 +- +- +-\n)")))
      << r.out;
  EXPECT_EQ(r.out.find("bn1.bias"), std::string::npos) << "summarized, not listed";

  r = Run({"--json", "inspect", path}, false, "127.0.0.1:1");
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["bytes"].get<int64_t>(), static_cast<int64_t>(fs::file_size(path)));
  EXPECT_EQ(j["ternary_weights"], 4);
  EXPECT_EQ(j["float_values"], 20);
  EXPECT_EQ(j["float32_bytes"], 4 * 24);
  EXPECT_DOUBLE_EQ(j["ternary_sparsity"].get<double>(), 0.5);
  EXPECT_EQ(j["architecture"]["arch"], "resnet20");
  EXPECT_EQ(j["metadata"]["method"], "hla");
  ASSERT_EQ(j["tensors"].size(), 3u);
  EXPECT_EQ(j["tensors"][1]["kind"], "ternary");
  EXPECT_EQ(j["tensors"][1]["granularity"], "channel");
  EXPECT_DOUBLE_EQ(j["tensors"][1]["positive_scale_mean"].get<double>(), 0.375);
  EXPECT_DOUBLE_EQ(j["tensors"][1]["negative_scale_mean"].get<double>(), 0.625);
  EXPECT_EQ(j["tensors"][2]["kind"], "float32");
}

TEST_F(TernctlTest, InspectNamesWhatIsWrongWithAMissingOrDamagedFile) {
  Result r = Run({"inspect", dir_ + "/none.tern"});
  EXPECT_EQ(r.code, kExitNotFound);
  EXPECT_NE(r.err.find("cannot open"), std::string::npos) << r.err;

  const std::string path = dir_ + "/damaged.tern";
  ASSERT_TRUE(quant::WriteArtifactFile(SmallArtifact(), path).ok());
  std::string bytes = *ReadFileToString(path);
  bytes[bytes.size() / 2] ^= 0x5a;  // caught by the checksum if nothing else
  ASSERT_TRUE(WriteFileAtomically(path, bytes).ok());
  r = Run({"inspect", path});
  EXPECT_EQ(r.code, kExitOther);
  EXPECT_NE(r.err.find("corrupt .tern artifact"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;

  r = Run({"inspect", Write("text.tern", "not an artifact")});
  EXPECT_EQ(r.code, kExitOther);
  EXPECT_NE(r.err.find(".tern"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace tern::cli
