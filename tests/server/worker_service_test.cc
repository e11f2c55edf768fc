// tern.v1.WorkerService over real gRPC loopback: a fake agent (the test,
// through the WorkerService stub) registers, takes assignments, relays
// trainer JSON lines and exits, and the job's life shows through JobService.
#include "server/worker_service.h"

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/ports.h"
#include "common/sha256.h"
#include "tests/server/fake_agent.h"
#include "tests/server/test_util.h"

namespace tern::server {
namespace {

using testing::Eventually;
using testing::FakeAgent;
using testing::kLayers;
using testing::Line;
using testing::SetDeadline;
using testing::ValidSpec;

class WorkerServiceTest : public testing::TerndTest {
 protected:
  v1::JobState State(const std::string& id) { return GetJobOk(id).state(); }
  bool WaitForState(const std::string& id, v1::JobState state) {
    return Eventually([&] { return State(id) == state; });
  }
};

TEST_F(WorkerServiceTest, FakeAgentRunsAJobToSuccessAndServesTheArtifact) {
  FakeAgent agent(workers_.get(), "agent-a", 2);
  ASSERT_TRUE(agent.Register().ok());
  EXPECT_FALSE(agent.lease_id_.empty());
  EXPECT_EQ(agent.register_response_.lease_ttl().seconds(), 15);
  EXPECT_EQ(agent.register_response_.heartbeat_interval().seconds(), 5);
  const std::string id = SubmitOk(ValidSpec(/*ranks=*/2));
  ASSERT_TRUE(WaitForState(id, v1::JOB_STATE_ADMITTED));

  agent.StartStream();
  ASSERT_TRUE(agent.WaitForEvents(2));
  std::vector<v1::Assignment> assignments;
  for (const v1::AssignmentEvent& e : agent.Events()) {
    ASSERT_TRUE(e.has_assignment());
    assignments.push_back(e.assignment());
  }
  ASSERT_EQ(assignments.size(), 2u);
  for (int rank = 0; rank < 2; ++rank) {
    const v1::Assignment& a = assignments[rank];
    EXPECT_EQ(a.ref().job_id(), id);
    EXPECT_EQ(a.ref().attempt(), 1);
    EXPECT_EQ(a.ref().rank(), rank);
    EXPECT_EQ(a.world_size(), 2);
    EXPECT_EQ(a.rendezvous_host(), "127.0.0.1");
    EXPECT_GE(a.rendezvous_port(), kDefaultRendezvousPortMin);
    EXPECT_LE(a.rendezvous_port(), kDefaultRendezvousPortMax);
    EXPECT_EQ(a.checkpoint_dir(), a.spec().checkpoint().directory());
    EXPECT_EQ(a.checkpoint_dir().rfind((dir_ / "checkpoints").string(), 0), 0u);
    // <artifact root>/<job dir>/<job dir>.tern: a directory per job.
    const std::filesystem::path artifact(a.artifact_path());
    EXPECT_EQ(artifact.parent_path().parent_path(), dir_ / "artifacts");
    EXPECT_EQ(artifact.parent_path().filename().string() + ".tern", artifact.filename().string());
    EXPECT_EQ(a.spec().owner(), "anonymous");
    EXPECT_EQ(a.spec().resources().ranks(), 2);
    EXPECT_FALSE(a.has_path_grant());  // no --read-roots / --write-roots
  }
  EXPECT_EQ(assignments[0].artifact_path(), assignments[1].artifact_path());
  // One rendezvous secret per attempt, the same for all its ranks.
  EXPECT_EQ(assignments[0].rendezvous_key().size(), 32u);
  EXPECT_EQ(assignments[0].rendezvous_key().find_first_not_of("0123456789abcdef"),
            std::string::npos);
  EXPECT_EQ(assignments[0].rendezvous_key(), assignments[1].rendezvous_key());
  EXPECT_EQ(assignments[0].spec().DebugString().find(assignments[0].rendezvous_key()),
            std::string::npos);
  // The agent hands the trainer the spec as proto3 JSON with field names.
  std::string json;
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(assignments[0].spec(),
                                                          &json, print)
                  .ok());
  EXPECT_NE(json.find("\"max_train_examples\":64"), std::string::npos) << json;

  const v1::RankRef rank0 = assignments[0].ref();
  const v1::RankRef rank1 = assignments[1].ref();
  // Rank 1 only logs (the trainer's `started` line comes from rank 0).
  ASSERT_TRUE(agent.Report(rank1, {}, {"rank 1 up"}).ok());
  ASSERT_TRUE(
      agent
          .Report(rank0, {Line("started", 0,
                               "\"resumed_from_step\":-1,\"total_steps\":40,"
                               "\"device\":\"cpu\",\"process_group\":\"gloo\""),
                          Line("progress", 0,
                               "\"epoch\":0,\"epochs\":1,\"step\":20,"
                               "\"total_steps\":40,\"loss\":1.5,\"lr\":0.1,"
                               "\"images_per_second\":900,\"eta_seconds\":3,"
                               "\"reg_lambda\":0.001,\"kappa\":5,\"phase\":1,"
                               "\"step_seconds\":0.25,"
                               "\"allreduce_seconds\":0.0625,"
                               "\"data_wait_seconds\":0.125,"
                               "\"gpu_memory_bytes\":1073741824,"
                               "\"gpu_peak_memory_bytes\":6442450944")})
          .ok());
  ASSERT_TRUE(WaitForState(id, v1::JOB_STATE_RUNNING));
  v1::Job running = GetJobOk(id);
  EXPECT_EQ(running.progress().step(), 20);
  EXPECT_DOUBLE_EQ(running.progress().loss(), 1.5);
  EXPECT_EQ(running.progress().total_steps(), 40);
  EXPECT_DOUBLE_EQ(running.progress().step_seconds(), 0.25);
  EXPECT_DOUBLE_EQ(running.progress().allreduce_seconds(), 0.0625);
  EXPECT_DOUBLE_EQ(running.progress().data_wait_seconds(), 0.125);
  EXPECT_EQ(running.progress().gpu_memory_bytes(), 1073741824);
  EXPECT_EQ(running.progress().gpu_peak_memory_bytes(), 6442450944);
  EXPECT_TRUE(running.has_start_time());

  ASSERT_TRUE(
      agent
          .Report(rank0, {Line("checkpoint", 0,
                               "\"step\":20,\"epoch\":0,\"path\":\"/ck/"
                               "step-20\",\"seconds\":0.1"),
                          Line("epoch_end", 0,
                               std::string("\"epoch\":0,\"eval_split\":"
                                           "\"test\",\"train_loss\":1.2,"
                                           "\"fp\":{\"loss\":0.9,\"top1\":0.8,"
                                           "\"top5\":0.99,\"examples\":100},"
                                           "\"ternary\":{\"loss\":1.0,"
                                           "\"top1\":0.75,\"top5\":0.98,"
                                           "\"examples\":100},"
                                           "\"epoch_seconds\":4,") +
                                   kLayers)})
          .ok());
  v1::Job after_epoch = GetJobOk(id);
  EXPECT_DOUBLE_EQ(after_epoch.latest_metrics().fp_top1(), 0.8);
  EXPECT_DOUBLE_EQ(after_epoch.latest_metrics().ternary_top1(), 0.75);
  EXPECT_DOUBLE_EQ(after_epoch.latest_metrics().eval_loss(), 1.0);
  EXPECT_EQ(after_epoch.latest_metrics().eval_split(), "test");
  EXPECT_EQ(after_epoch.state(), v1::JOB_STATE_RUNNING);

  // Rank 0 writes the artifact where it was told, then reports `finished`.
  const std::string content =
      "TERN\x01 packed ternary weights " + std::string(3000, 'w');
  {
    // A directory per job, which tern-agent creates.
    std::filesystem::create_directories(
        std::filesystem::path(assignments[0].artifact_path()).parent_path());
    std::ofstream out(assignments[0].artifact_path(), std::ios::binary);
    out << content;
  }
  ASSERT_TRUE(
      agent
          .Report(rank0,
                  {Line("finished", 0,
                        "\"fp\":{\"loss\":0.8,\"top1\":0.81,\"top5\":0.99,"
                        "\"examples\":100},\"ternary\":{\"loss\":1,\"top1\":"
                        "0.76,\"top5\":0.98,\"examples\":100},\"artifact\":{"
                        "\"loss\":1,\"top1\":0.74,\"top5\":0.97,\"examples\":"
                        "100},\"artifact_path\":\"" +
                            assignments[0].artifact_path() +
                            "\",\"artifact_bytes\":3031,\"bits_per_weight\":"
                            "2.1,\"steps\":40,\"wall_seconds\":9,"
                            "\"images_per_second\":800," +
                            kLayers)})
          .ok());
  ASSERT_TRUE(agent.Exit(rank1, 0).ok());
  EXPECT_EQ(State(id), v1::JOB_STATE_RUNNING);  // rank 0 still runs
  ASSERT_TRUE(agent.Exit(rank0, 0).ok());
  EXPECT_EQ(State(id), v1::JOB_STATE_SUCCEEDED);

  const v1::Job done = GetJobOk(id);
  const v1::JobResult& result = done.result();
  EXPECT_EQ(done.state_reason().code(), "ALL_RANKS_SUCCEEDED");
  EXPECT_EQ(result.artifact_path(), assignments[0].artifact_path());
  EXPECT_EQ(result.artifact_sha256(), Sha256Hex(content));
  EXPECT_EQ(result.artifact_bytes(), static_cast<int64_t>(content.size()));
  EXPECT_DOUBLE_EQ(result.fp_top1(), 0.81);
  EXPECT_DOUBLE_EQ(result.ternary_top1(), 0.74);  // the re-loaded artifact
  EXPECT_DOUBLE_EQ(result.bits_per_weight(), 2.1);
  EXPECT_EQ(result.steps(), 40);
  EXPECT_EQ(result.epochs(), 1);
  ASSERT_EQ(result.layers_size(), 1);  // quantized layers only
  EXPECT_EQ(result.layers(0).name(), "layer1.0.conv1.weight");
  EXPECT_TRUE(done.has_end_time());

  // GetArtifact: header, chunks, result.
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::GetArtifactRequest request;
    request.set_job_id(id);
    auto reader = jobs_->GetArtifact(&ctx, request);
    std::vector<v1::GetArtifactResponse> messages;
    v1::GetArtifactResponse message;
    while (reader->Read(&message)) messages.push_back(message);
    ASSERT_TRUE(reader->Finish().ok());
    ASSERT_GE(messages.size(), 3u);
    ASSERT_TRUE(messages.front().has_header());
    EXPECT_EQ(messages.front().header().file_name(), id + ".tern");
    EXPECT_EQ(messages.front().header().size_bytes(),
              static_cast<int64_t>(content.size()));
    EXPECT_EQ(messages.front().header().sha256(), Sha256Hex(content));
    std::string downloaded;
    for (size_t i = 1; i + 1 < messages.size(); ++i) {
      ASSERT_TRUE(messages[i].has_chunk());
      EXPECT_EQ(messages[i].chunk().offset(),
                static_cast<int64_t>(downloaded.size()));
      downloaded += messages[i].chunk().data();
    }
    EXPECT_EQ(downloaded, content);
    ASSERT_TRUE(messages.back().has_result());
    EXPECT_DOUBLE_EQ(messages.back().result().ternary_top1(), 0.74);
  }
  {  // Resume from an offset.
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::GetArtifactRequest request;
    request.set_job_id(id);
    request.set_offset(100);
    auto reader = jobs_->GetArtifact(&ctx, request);
    std::string downloaded;
    v1::GetArtifactResponse message;
    while (reader->Read(&message)) {
      if (message.has_chunk()) {
        if (downloaded.empty()) {
          EXPECT_EQ(message.chunk().offset(), 100);
        }
        downloaded += message.chunk().data();
      }
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(downloaded, content.substr(100));
  }
  {  // Out of range.
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::GetArtifactRequest request;
    request.set_job_id(id);
    request.set_offset(static_cast<int64_t>(content.size()) + 1);
    auto reader = jobs_->GetArtifact(&ctx, request);
    v1::GetArtifactResponse message;
    while (reader->Read(&message)) {
    }
    EXPECT_EQ(reader->Finish().error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }

  // The whole history, in order, ending with SUCCEEDED then `finished`.
  std::vector<v1::JobEvent> events;
  ASSERT_TRUE(Watch(id, 0, &events, /*include_logs=*/true).ok());
  std::vector<std::string> kinds;
  uint64_t last = 0;
  for (const v1::JobEvent& e : events) {
    EXPECT_EQ(e.sequence(), last + 1);  // with logs: every recorded event, no gap
    last = e.sequence();
    EXPECT_EQ(e.attempt(), 1);
    if (e.has_state_change()) {
      kinds.push_back(v1::JobState_Name(e.state_change().to_state()));
    } else if (e.has_progress()) {
      kinds.push_back("progress");
    } else if (e.has_epoch_end()) {
      kinds.push_back("epoch_end");
      EXPECT_EQ(e.epoch_end().layers_size(), 1);
      EXPECT_NEAR(e.epoch_end().layers(0).flips(), 0.003, 1e-12);
    } else if (e.has_checkpoint_committed()) {
      kinds.push_back("checkpoint");
      EXPECT_EQ(e.checkpoint_committed().step(), 20);
      EXPECT_EQ(e.checkpoint_committed().path(), "/ck/step-20");
    } else if (e.has_attempt_started()) {
      kinds.push_back("started");
      EXPECT_EQ(e.attempt_started().resumed_from_step(), 0);  // fresh: -1 -> 0
      EXPECT_EQ(e.attempt_started().total_steps(), 40);
      EXPECT_EQ(e.attempt_started().device(), "cpu");
      EXPECT_EQ(e.attempt_started().process_group(), "gloo");
    } else if (e.has_log()) {
      kinds.push_back("log:" + e.log().text());
      EXPECT_EQ(e.log().rank(), 1);
    } else if (e.has_finished()) {
      kinds.push_back("finished");
      EXPECT_EQ(e.finished().artifact_sha256(), Sha256Hex(content));
    } else if (e.has_trainer_finished()) {
      kinds.push_back("trainer_finished");
      EXPECT_DOUBLE_EQ(e.trainer_finished().ternary_top1(), 0.74);
      EXPECT_EQ(e.trainer_finished().steps(), 40);
    } else {
      kinds.push_back("?");
    }
  }
  EXPECT_EQ(kinds,
            (std::vector<std::string>{"JOB_STATE_QUEUED", "JOB_STATE_ADMITTED",
                                      "log:rank 1 up", "JOB_STATE_RUNNING",
                                      "started", "progress", "checkpoint", "epoch_end",
                                      "trainer_finished", "JOB_STATE_SUCCEEDED", "finished"}));
  std::vector<v1::JobEvent> without_logs;
  ASSERT_TRUE(Watch(id, 0, &without_logs).ok());
  EXPECT_EQ(without_logs.size(), events.size() - 1);

  // Per-job series from the relayed events, and scheduler metrics.
  const std::string text = Metrics();
  for (const std::string& sample : {
           "tern_job_step{job=\"" + id + "\"} 20",
           "tern_job_epoch{job=\"" + id + "\"} 0",
           "tern_job_loss{job=\"" + id + "\"} 1.5",
           "tern_job_learning_rate{job=\"" + id + "\"} 0.1",
           "tern_job_images_per_second{job=\"" + id + "\"} 900",
           "tern_job_reg_lambda{job=\"" + id + "\"} 0.001",
           "tern_job_kappa{job=\"" + id + "\"} 5",
           "tern_job_step_time_seconds_sum{job=\"" + id + "\"} 0.25",
           "tern_job_allreduce_seconds_sum{job=\"" + id + "\"} 0.0625",
           "tern_job_data_wait_seconds_count{job=\"" + id + "\"} 1",
           "tern_job_gpu_memory_bytes{job=\"" + id + "\"} 1073741824",
           "tern_job_gpu_peak_memory_bytes{job=\"" + id + "\"} 6442450944",
           "tern_job_accuracy{job=\"" + id +
               "\",split=\"test\",weights=\"ternary\"} 0.74",
           "tern_job_accuracy{job=\"" + id +
               "\",split=\"test\",weights=\"fp\"} 0.81",
           "tern_job_layer_sparsity{job=\"" + id +
               "\",layer=\"layer1.0.conv1.weight\"} 0.4",
           "tern_job_layer_alpha{job=\"" + id +
               "\",layer=\"layer1.0.conv1.weight\"} 0.05",
           "tern_job_layer_cos_wt{job=\"" + id +
               "\",layer=\"layer1.0.conv1.weight\"} 0.9",
           "tern_job_layer_flips_per_step{job=\"" + id +
               "\",layer=\"layer1.0.conv1.weight\"} 0.003",
           std::string("tern_scheduler_admission_wait_seconds_count 1"),
       }) {
    EXPECT_NE(text.find(sample), std::string::npos) << sample;
  }
  EXPECT_TRUE(Eventually([&] {
    return Metrics().find("tern_scheduler_jobs{state=\"succeeded\"} 1") !=
           std::string::npos;
  }));
  // promtool's linter accepts the whole exposition, job series included.
  if (access("/usr/bin/promtool", X_OK) == 0) {
    const std::string path = (dir_ / "metrics.prom").string();
    {
      std::ofstream out(path);
      out << ternd_->registry().Serialize();
    }
    const std::string said_path = (dir_ / "promtool.out").string();
    const int status = std::system(("/usr/bin/promtool check metrics < '" +
                                    path + "' > '" + said_path + "' 2>&1")
                                       .c_str());
    std::ifstream said_file(said_path);
    std::stringstream said;
    said << said_file.rdbuf();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << said.str();
  }
}

class PathGrantTest : public WorkerServiceTest {
 protected:
  void Customize(TerndOptions* options) override {
    options->read_roots = "/usr/share/datasets";
    options->write_roots = "/scratch/{owner}";
  }
};

TEST_F(PathGrantTest, AssignmentsCarryTheOwnersRootsForTheAgentToCheck) {
  FakeAgent agent(workers_.get(), "agent-a", 1);
  ASSERT_TRUE(agent.Register().ok());
  v1::SubmitJobResponse submitted;
  ASSERT_TRUE(Submit(ValidSpec(), &submitted, "", "alice").ok());
  agent.StartStream();
  ASSERT_TRUE(agent.WaitForEvents(1));
  const v1::Assignment a = agent.Events()[0].assignment();
  ASSERT_TRUE(a.has_path_grant());
  EXPECT_EQ(std::vector<std::string>(a.path_grant().read_roots().begin(),
                                     a.path_grant().read_roots().end()),
            (std::vector<std::string>{"/usr/share/datasets"}));
  // Her roots, and the checkpoint directory ternd chose for the job.
  EXPECT_EQ(std::vector<std::string>(a.path_grant().write_roots().begin(),
                                     a.path_grant().write_roots().end()),
            (std::vector<std::string>{"/scratch/alice", a.checkpoint_dir()}));
}

TEST_F(WorkerServiceTest, CancelSendsAKillOrderToTheAgent) {
  FakeAgent agent(workers_.get(), "agent-a", 1);
  ASSERT_TRUE(agent.Register().ok());
  const std::string id = SubmitOk(ValidSpec());
  agent.StartStream();
  ASSERT_TRUE(agent.WaitForEvents(1));
  const v1::RankRef ref = agent.Events()[0].assignment().ref();
  ASSERT_TRUE(agent.Report(ref, {}, {"hello"}).ok());
  ASSERT_TRUE(WaitForState(id, v1::JOB_STATE_RUNNING));

  // A watcher follows the job through both changes.
  std::vector<v1::JobEvent> watched;
  grpc::Status watch_status;
  std::thread watcher([&] { watch_status = Watch(id, 0, &watched); });

  v1::Job job;
  ASSERT_TRUE(Cancel(id, &job, "stop").ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLING);
  EXPECT_EQ(job.state_reason().code(), "CANCELLED_BY_USER");
  EXPECT_EQ(job.state_reason().message(), "stop");
  EXPECT_FALSE(job.has_end_time());
  ASSERT_TRUE(agent.WaitForEvents(2));
  const v1::AssignmentEvent kill = agent.Events()[1];
  ASSERT_TRUE(kill.has_kill());
  EXPECT_EQ(kill.kill().job_id(), id);
  EXPECT_EQ(kill.kill().attempt(), 1);
  EXPECT_EQ(kill.kill().reason().code(), "CANCELLED_BY_USER");
  EXPECT_EQ(kill.kill().grace_period().seconds(), 10);
  // While the rank is in its grace period its slot is held: a new job waits.
  const std::string next = SubmitOk(ValidSpec());
  EXPECT_EQ(State(next), v1::JOB_STATE_QUEUED);
  // Cancelling again is a no-op that returns the job.
  v1::Job again;
  ASSERT_TRUE(Cancel(id, &again, "again").ok());
  EXPECT_EQ(again.state(), v1::JOB_STATE_CANCELLING);
  EXPECT_EQ(again.state_reason().message(), "stop");
  // Reports about the stopping rank are accepted; its exit ends the job.
  EXPECT_TRUE(agent.Report(ref, {Line("progress", 0, "\"step\":30")}).ok());
  EXPECT_TRUE(agent.Exit(ref, -1, 15, /*killed_by_agent=*/true).ok());
  job = GetJobOk(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(job.state_reason().code(), "CANCELLED_BY_USER");
  EXPECT_EQ(job.state_reason().message(), "stop");
  EXPECT_TRUE(job.has_end_time());
  EXPECT_FALSE(job.has_last_failure());
  ASSERT_TRUE(WaitForState(next, v1::JOB_STATE_ADMITTED));  // the slot is free now
  watcher.join();
  EXPECT_TRUE(watch_status.ok()) << watch_status.error_message();
  std::vector<std::pair<v1::JobState, v1::JobState>> changes;
  for (const v1::JobEvent& e : watched) {
    if (e.has_state_change()) {
      changes.emplace_back(e.state_change().from_state(), e.state_change().to_state());
    }
  }
  ASSERT_GE(changes.size(), 2u);
  EXPECT_EQ(changes[changes.size() - 2],
            std::make_pair(v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING));
  EXPECT_EQ(changes.back(), std::make_pair(v1::JOB_STATE_CANCELLING, v1::JOB_STATE_CANCELLED));
}

TEST_F(WorkerServiceTest, LeasesAndRequestsAreChecked) {
  v1::RegisterRequest request;
  request.set_agent_id("bad id");
  request.set_host("h");
  auto register_code = [&](const v1::RegisterRequest& r) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::RegisterResponse response;
    return workers_->Register(&ctx, r, &response);
  };
  v1::Slots* slots = request.add_slots();
  slots->set_device_kind(v1::DEVICE_CPU);
  slots->set_count(1);
  EXPECT_EQ(register_code(request).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  request.set_agent_id("a");
  slots->set_count(0);
  grpc::Status status = register_code(request);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("slots[0].count"), std::string::npos);
  slots->set_count(1);
  slots->set_device_kind(static_cast<v1::DeviceKind>(7));
  EXPECT_EQ(register_code(request).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  slots->set_device_kind(v1::DEVICE_CPU);
  *request.add_slots() = *slots;  // a second CPU entry
  EXPECT_EQ(register_code(request).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  FakeAgent agent(workers_.get(), "agent-a", 1);
  ASSERT_TRUE(agent.Register().ok());
  const std::string first_lease = agent.lease_id_;
  agent.lease_id_ = "not-the-lease";
  v1::HeartbeatResponse heartbeat;
  EXPECT_EQ(agent.Heartbeat({}, &heartbeat).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  v1::RankRef ref;
  ref.set_job_id("1");
  ref.set_attempt(1);
  EXPECT_EQ(agent.Report(ref, {"{}"}).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(agent.Exit(ref, 0).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  agent.StartStream();
  grpc::Status stream_status;
  ASSERT_TRUE(Eventually([&] { return agent.StreamDone(&stream_status); }));
  EXPECT_EQ(stream_status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  agent.lease_id_ = first_lease;
  EXPECT_TRUE(agent.Heartbeat({}, &heartbeat).ok());
  // A new registration replaces the lease.
  ASSERT_TRUE(agent.Register().ok());
  EXPECT_NE(agent.lease_id_, first_lease);
  agent.lease_id_ = first_lease;
  EXPECT_EQ(agent.Heartbeat({}, &heartbeat).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(WorkerServiceTest, HeartbeatStartsRunningRanksAndNamesUnexpectedOnes) {
  FakeAgent agent(workers_.get(), "agent-a", 1);
  ASSERT_TRUE(agent.Register().ok());
  const std::string id = SubmitOk(ValidSpec());
  agent.StartStream();
  ASSERT_TRUE(agent.WaitForEvents(1));
  const v1::RankRef ref = agent.Events()[0].assignment().ref();
  v1::RankRef stale = ref;
  stale.set_job_id("99");
  v1::RankRef old_attempt = ref;
  old_attempt.set_attempt(2);
  v1::HeartbeatResponse response;
  ASSERT_TRUE(agent.Heartbeat({ref, stale, old_attempt}, &response).ok());
  ASSERT_EQ(response.unexpected_size(), 2);
  EXPECT_EQ(response.unexpected(0).job_id(), "99");
  EXPECT_EQ(response.unexpected(1).attempt(), 2);
  EXPECT_EQ(response.heartbeat_interval().seconds(), 5);
  EXPECT_GT(response.lease_expire_time().seconds(), 0);
  EXPECT_EQ(State(id), v1::JOB_STATE_RUNNING);
}

// A failure a restart would repeat (bad data, a bad spec, a path outside the
// owner's roots) fails the job at once; others are retried.
TEST_F(WorkerServiceTest, FailuresThatWouldRecurAreNotRetried) {
  FakeAgent agent(workers_.get(), "agent-a", 1);
  ASSERT_TRUE(agent.Register().ok());
  agent.StartStream();
  struct Case {
    std::string failed_code;  // of the trainer's `failed` line, "" for none
    int exit_code;
    std::string agent_code;  // ReportExitRequest.failure_code
    bool retried;
  };
  const std::vector<Case> cases = {
      {"DATA_LOSS", 1, "", false},
      {"NOT_FOUND", 1, "", false},
      {"", 2, "", false},
      {"", 127, "PERMISSION_DENIED", false},
      {"UNAVAILABLE", 1, "", true},
      {"DEADLINE_EXCEEDED", 1, "", true},
      {"UNAVAILABLE", 6, "", true},          // a failed collective: no other rank to wait for
      {"FAILED_PRECONDITION", 1, "", true},  // e.g. no GPU visible on that node
      {"", 1, "", true},
      {"INVALID_ARGUMENT", 0, "", true},  // signal below
  };
  // The assignment of `id`'s attempt `attempt`, once the stream brought it.
  auto assignment_of = [&](const std::string& id, int attempt) {
    std::optional<v1::RankRef> found;
    Eventually([&] {
      for (const v1::AssignmentEvent& e : agent.Events()) {
        if (e.has_assignment() && e.assignment().ref().job_id() == id &&
            e.assignment().ref().attempt() == attempt) {
          found = e.assignment().ref();
        }
      }
      return found.has_value();
    });
    return found;
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.failed_code + " exit " + std::to_string(c.exit_code) + " " + c.agent_code);
    v1::JobSpec spec = ValidSpec();
    spec.set_max_restarts(2);
    const std::string id = SubmitOk(spec);
    const std::optional<v1::RankRef> ref = assignment_of(id, 1);
    ASSERT_TRUE(ref.has_value());
    if (!c.failed_code.empty()) {
      ASSERT_TRUE(agent
                      .Report(*ref, {Line("failed", 0,
                                          "\"code\":\"" + c.failed_code +
                                              "\",\"reason\":\"boom\",\"step\":0")})
                      .ok());
    }
    const bool signalled = c.exit_code == 0;
    // What tern-agent says: the `failed` line's text, then the stderr tail.
    const std::string tail = "\n--- last stderr lines ---\nE boom";
    const std::string agent_reason = (c.failed_code.empty() ? "" : c.failed_code + ": boom") + tail;
    ASSERT_TRUE(agent
                    .Exit(*ref, signalled ? -1 : c.exit_code, signalled ? 9 : 0, false,
                          c.agent_code, false, agent_reason)
                    .ok());
    const v1::Job job = GetJobOk(id);
    // Why, as data: the rank, its agent, how it ended, the trainer's code.
    ASSERT_TRUE(job.has_last_failure());
    const v1::JobFailure& f = job.last_failure();
    EXPECT_EQ(f.attempt(), 1);
    EXPECT_EQ(f.rank(), 0);
    EXPECT_EQ(f.agent_id(), "agent-a");
    EXPECT_EQ(f.exit_code(), signalled ? 0 : c.exit_code);
    EXPECT_EQ(f.signal(), signalled ? 9 : 0);
    EXPECT_EQ(f.trainer_code(), c.agent_code.empty() ? c.failed_code : c.agent_code);
    EXPECT_EQ(f.reason(), signalled          ? "RANK_LOST"
                          : c.exit_code == 6 ? "COLLECTIVE_FAILED"
                                             : "TRAINER_FAILED");
    EXPECT_TRUE(f.has_time());
    if (!c.failed_code.empty()) {  // the trainer's reason once, then the tail
      const std::string said = c.failed_code + ": boom" + tail;
      EXPECT_EQ(f.message().substr(f.message().size() - std::min(f.message().size(), said.size())),
                said);
      EXPECT_EQ(f.message().find("boom"), f.message().rfind(": boom") + 2) << f.message();
    }
    if (c.retried) {
      EXPECT_EQ(job.restarts(), 1);
      EXPECT_NE(job.state(), v1::JOB_STATE_FAILED);
      EXPECT_TRUE(assignment_of(id, 2).has_value());
      v1::Job cancelled;
      ASSERT_TRUE(Cancel(id, &cancelled).ok());
      ASSERT_TRUE(WaitForState(id, v1::JOB_STATE_CANCELLED));
      // The agent took attempt 2's assignment: its slot stays taken until the
      // agent shows that nothing runs there (here: a heartbeat listing none).
      v1::HeartbeatResponse beat;
      ASSERT_TRUE(agent.Heartbeat({}, &beat).ok());
    } else {
      EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
      EXPECT_EQ(job.restarts(), 0);
      EXPECT_EQ(job.state_reason().code(), "FAILURE_NOT_RETRYABLE");
      EXPECT_EQ(job.state_reason().message().rfind(
                    "not restarted: the failure would recur on every attempt (2 restarts left "
                    "unused); failure: rank 0 on agent agent-a exited with code ",
                    0),
                0u)
          << job.state_reason().message();
    }
  }
}

TEST_F(WorkerServiceTest, AFailedRankRestartsTheJobUntilTheBudgetIsSpent) {
  FakeAgent agent(workers_.get(), "agent-a", 1);
  ASSERT_TRUE(agent.Register().ok());
  v1::JobSpec spec = ValidSpec();
  spec.set_max_restarts(1);
  const std::string id = SubmitOk(spec);
  agent.StartStream();
  ASSERT_TRUE(agent.WaitForEvents(1));
  const v1::RankRef first = agent.Events()[0].assignment().ref();
  ASSERT_TRUE(agent
                  .Report(first, {Line("failed", 0,
                                       "\"code\":\"BAD_DATA_FILE\","
                                       "\"reason\":\"no such file\","
                                       "\"step\":0")})
                  .ok());
  ASSERT_TRUE(agent.Exit(first, 1).ok());
  // No backoff in tests: re-queued and admitted again at once.
  ASSERT_TRUE(agent.WaitForEvents(2));
  const v1::Assignment second = agent.Events()[1].assignment();
  EXPECT_EQ(second.ref().attempt(), 2);
  // A new attempt, a new rendezvous secret: a stray rank of the first
  // attempt cannot meet the second's.
  EXPECT_NE(second.rendezvous_key(), agent.Events()[0].assignment().rendezvous_key());
  EXPECT_EQ(second.rendezvous_key().size(), 32u);
  v1::Job job = GetJobOk(id);
  EXPECT_EQ(job.restarts(), 1);
  EXPECT_EQ(job.state(), v1::JOB_STATE_ADMITTED);
  // The same checkpoint directory: the next attempt resumes from it.
  EXPECT_EQ(second.checkpoint_dir(),
            agent.Events()[0].assignment().checkpoint_dir());

  const std::vector<v1::JobEvent> events =
      WatchUntil(id, [](const auto& so_far) { return so_far.size() >= 6; });
  // QUEUED, ADMITTED, RUNNING (the report started the rank), RESTARTING,
  // QUEUED, ADMITTED.
  ASSERT_EQ(events.size(), 6u);
  EXPECT_EQ(events[2].state_change().to_state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(events[3].state_change().to_state(), v1::JOB_STATE_RESTARTING);
  EXPECT_EQ(events[3].state_change().reason().code(), "TRAINER_FAILED");
  EXPECT_NE(events[3].state_change().reason().message().find(
                "BAD_DATA_FILE: no such file"),
            std::string::npos)
      << events[3].state_change().reason().message();
  EXPECT_EQ(events[3].attempt(), 1);
  EXPECT_EQ(events[4].state_change().to_state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(events[4].attempt(), 2);
  EXPECT_EQ(events[5].state_change().to_state(), v1::JOB_STATE_ADMITTED);
  EXPECT_EQ(events[5].attempt(), 2);

  ASSERT_TRUE(agent.Exit(second.ref(), 1).ok());
  EXPECT_EQ(State(id), v1::JOB_STATE_FAILED);
  EXPECT_EQ(GetJobOk(id).state_reason().code(), "RESTART_BUDGET_EXHAUSTED");
  EXPECT_NE(Metrics().find(
                "tern_scheduler_restarts_total{reason=\"TRAINER_FAILED\"} 2"),
            std::string::npos);
}

TEST_F(WorkerServiceTest, ADrainedAgentsPreemptedRankResumesElsewhereWithoutUsingARestart) {
  FakeAgent a(workers_.get(), "agent-a", 1);
  ASSERT_TRUE(a.Register().ok());
  v1::JobSpec spec = ValidSpec();
  spec.set_max_restarts(0);
  const std::string id = SubmitOk(spec);
  a.StartStream();
  ASSERT_TRUE(a.WaitForEvents(1));
  const v1::RankRef first = a.Events()[0].assignment().ref();
  FakeAgent b(workers_.get(), "agent-b", 1);
  ASSERT_TRUE(b.Register().ok());
  b.StartStream();

  // agent-a shuts down: drained first, then its trainer stops at a
  // checkpoint (exit 3, preempted).
  ASSERT_TRUE(a.Drain().ok());
  ASSERT_TRUE(a.Report(first, {Line("checkpoint", 0, "\"step\":7,\"epoch\":1,\"path\":\"/c\","
                                                     "\"seconds\":0.1")})
                  .ok());
  ASSERT_TRUE(a.Exit(first, 3, 0, /*killed_by_agent=*/true, "", /*preempted=*/true).ok());
  // The next attempt goes to agent-b (agent-a has a free slot but drains).
  ASSERT_TRUE(b.WaitForEvents(1));
  const v1::Assignment second = b.Events()[0].assignment();
  EXPECT_EQ(second.ref().attempt(), 2);
  const v1::Job job = GetJobOk(id);
  EXPECT_EQ(job.restarts(), 0);  // max_restarts 0, and not FAILED
  EXPECT_EQ(job.state(), v1::JOB_STATE_ADMITTED);
  EXPECT_NE(Metrics().find("tern_scheduler_restarts_total{reason=\"RANK_PREEMPTED\"} 1"),
            std::string::npos);

  // `ternctl agents` sees the drain.
  const auto list_agents = [&] {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::ListAgentsResponse response;
    EXPECT_TRUE(jobs_->ListAgents(&ctx, v1::ListAgentsRequest(), &response).ok());
    return response;
  };
  v1::ListAgentsResponse agents = list_agents();
  ASSERT_EQ(agents.agents_size(), 2);
  EXPECT_EQ(agents.agents(0).agent_id(), "agent-a");
  EXPECT_EQ(agents.agents(0).state(), v1::AGENT_STATE_DRAINING);
  EXPECT_EQ(agents.agents(1).state(), v1::AGENT_STATE_READY);
  ASSERT_EQ(agents.agents(1).slots_size(), 1);
  EXPECT_EQ(agents.agents(1).slots(0).total(), 1);
  EXPECT_EQ(agents.agents(1).slots(0).used(), 1);  // the job's second attempt
  EXPECT_GT(agents.agents(1).lease_expire_time().seconds(), 0);
  EXPECT_TRUE(Eventually([&] {  // the tick refreshes the gauges
    return Metrics().find("tern_scheduler_agents_draining 1") != std::string::npos;
  }));

  // Deregister ends agent-a's lease at once.
  ASSERT_TRUE(a.Deregister().ok());
  agents = list_agents();
  ASSERT_EQ(agents.agents_size(), 1);
  EXPECT_EQ(agents.agents(0).agent_id(), "agent-b");
  v1::HeartbeatResponse response;
  EXPECT_EQ(a.Heartbeat({}, &response).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(a.Drain().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(a.Deregister().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  a.StopStream();
  b.StopStream();
}

// A drain stops both ranks at the checkpoint of step 9. Rank 1's exit reaches
// ternd first and requeues the job; rank 0's `checkpoint` line comes after
// that and is ignored (an attempt ternd has moved past). Rank 1's own
// `stopped` line, relayed before its exit, has already recorded the step, so
// the requeue says where the next attempt resumes.
TEST_F(WorkerServiceTest, AnyRanksStoppedLineRecordsTheCommittedStepBeforeTheRequeue) {
  FakeAgent a(workers_.get(), "agent-a", 1);
  FakeAgent b(workers_.get(), "agent-b", 1);
  ASSERT_TRUE(a.Register().ok());
  ASSERT_TRUE(b.Register().ok());
  v1::JobSpec spec = ValidSpec(2);
  spec.set_max_restarts(2);
  const std::string id = SubmitOk(spec);
  a.StartStream();
  b.StartStream();
  ASSERT_TRUE(a.WaitForEvents(1));
  ASSERT_TRUE(b.WaitForEvents(1));
  const bool a_has_rank0 = a.Events()[0].assignment().ref().rank() == 0;
  FakeAgent& agent0 = a_has_rank0 ? a : b;
  FakeAgent& agent1 = a_has_rank0 ? b : a;
  const v1::RankRef rank0 = agent0.Events()[0].assignment().ref();
  const v1::RankRef rank1 = agent1.Events()[0].assignment().ref();
  ASSERT_EQ(rank1.rank(), 1);

  ASSERT_TRUE(agent1
                  .Report(rank1, {Line("stopped", 1,
                                       "\"step\":9,\"epoch\":2,\"total_steps\":20,"
                                       "\"checkpoint\":\"/c/step-9\"")})
                  .ok());
  ASSERT_TRUE(agent1.Exit(rank1, 3, 0, /*killed_by_agent=*/false, "", /*preempted=*/true).ok());
  ASSERT_TRUE(agent0
                  .Report(rank0, {Line("checkpoint", 0,
                                       "\"step\":9,\"epoch\":2,\"path\":\"/c/step-9\","
                                       "\"seconds\":0.1")})
                  .ok());

  const std::vector<v1::JobEvent> events = WatchUntil(id, [](const auto& so_far) {
    return !so_far.empty() && so_far.back().state_change().reason().code() == "REQUEUED";
  });
  std::vector<v1::CheckpointCommitted> checkpoints;
  const v1::JobEvent* requeued = nullptr;
  for (const v1::JobEvent& e : events) {
    if (e.has_checkpoint_committed()) checkpoints.push_back(e.checkpoint_committed());
    if (e.state_change().reason().code() == "REQUEUED") requeued = &e;
  }
  ASSERT_NE(requeued, nullptr);
  EXPECT_EQ(requeued->state_change().reason().message(),
            "no restart used (RANK_PREEMPTED; 0 of 2 used so far), resuming from step 9");
  ASSERT_EQ(checkpoints.size(), 1u);  // rank 0's late line added none
  EXPECT_EQ(checkpoints[0].step(), 9);
  EXPECT_EQ(checkpoints[0].epoch(), 2);
  EXPECT_EQ(checkpoints[0].path(), "/c/step-9");
  a.StopStream();
  b.StopStream();
}

TEST_F(WorkerServiceTest, ARestartedTerndResumesACancellation) {
  const std::string id = SubmitOk(ValidSpec());
  v1::RankRef ref;
  {
    FakeAgent agent(workers_.get(), "agent-c", 1);
    ASSERT_TRUE(agent.Register().ok());
    agent.StartStream();
    ASSERT_TRUE(agent.WaitForEvents(1));
    ref = agent.Events()[0].assignment().ref();
    ASSERT_TRUE(agent.Report(ref, {}, {"up"}).ok());
    ASSERT_TRUE(WaitForState(id, v1::JOB_STATE_RUNNING));
    v1::Job job;
    ASSERT_TRUE(Cancel(id, &job, "stop it").ok());
    ASSERT_EQ(job.state(), v1::JOB_STATE_CANCELLING);
    agent.StopStream();
  }
  RestartTernd();  // before the rank has exited
  EXPECT_EQ(GetJobOk(id).state(), v1::JOB_STATE_CANCELLING);

  // The agent rejoins still running the rank: it is told again to stop it,
  // and its slot stays held until the rank's exit.
  FakeAgent agent(workers_.get(), "agent-c", 1);
  ASSERT_TRUE(agent.Register({ref}).ok());
  agent.StartStream();
  ASSERT_TRUE(Eventually([&] {
    for (const v1::AssignmentEvent& e : agent.Events()) {
      if (e.has_kill() && e.kill().job_id() == id &&
          e.kill().reason().code() == "CANCELLED_BY_USER") {
        return true;
      }
    }
    return false;
  }));
  const std::string next = SubmitOk(ValidSpec());
  EXPECT_EQ(GetJobOk(next).state(), v1::JOB_STATE_QUEUED);
  ASSERT_TRUE(agent.Exit(ref, -1, 15, /*killed_by_agent=*/true).ok());
  const v1::Job job = GetJobOk(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(job.state_reason().message(), "stop it");
  EXPECT_EQ(job.restarts(), 0);
  EXPECT_TRUE(WaitForState(next, v1::JOB_STATE_ADMITTED));
}

TEST_F(WorkerServiceTest, AnAgentRejoinsARestartedTerndWithItsRunningRanks) {
  const std::string id = SubmitOk(ValidSpec());
  v1::RankRef ref;
  {
    FakeAgent agent(workers_.get(), "agent-r", 2);
    ASSERT_TRUE(agent.Register().ok());
    agent.StartStream();
    ASSERT_TRUE(agent.WaitForEvents(1));
    ref = agent.Events()[0].assignment().ref();
    ASSERT_TRUE(agent.Report(ref, {}, {"up"}).ok());
    ASSERT_TRUE(WaitForState(id, v1::JOB_STATE_RUNNING));
    agent.StopStream();
  }
  RestartTernd();  // same database; leases are gone

  // The agent lists its trainer, and one of a job this ternd never ran.
  FakeAgent agent(workers_.get(), "agent-r", 2);
  v1::RankRef foreign;
  foreign.set_job_id("999");
  foreign.set_attempt(1);
  foreign.set_rank(0);
  ASSERT_TRUE(agent.Register({ref, foreign}).ok());
  agent.StartStream();
  ASSERT_TRUE(Eventually([&] {
    for (const v1::AssignmentEvent& e : agent.Events()) {
      if (e.has_kill() && e.kill().job_id() == "999") return true;
    }
    return false;
  }));
  for (const v1::AssignmentEvent& e : agent.Events()) {
    EXPECT_FALSE(e.has_kill() && e.kill().job_id() == id) << e.DebugString();
  }
  // The job goes on: still RUNNING, no restart, and its reports count.
  v1::HeartbeatResponse beat;
  ASSERT_TRUE(agent.Heartbeat({ref, foreign}, &beat).ok());
  ASSERT_EQ(beat.unexpected_size(), 1);
  EXPECT_EQ(beat.unexpected(0).job_id(), "999");
  ASSERT_TRUE(agent.Report(ref, {Line("progress", 0, "\"step\":7,\"total_steps\":9")}).ok());
  EXPECT_TRUE(Eventually([&] { return GetJobOk(id).progress().step() == 7; }));
  v1::Job job = GetJobOk(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(job.restarts(), 0);

  // Registering again without the rank: it is lost, and the job restarts.
  agent.StopStream();
  ASSERT_TRUE(agent.Register().ok());
  EXPECT_TRUE(Eventually([&] { return GetJobOk(id).restarts() == 1; }));
}

// A unary WorkerService call of the stub's `method` on a request given as a
// Message, with the test deadline.
template <typename Request, typename Response>
std::function<grpc::Status(const google::protobuf::Message&)> UnaryCall(
    v1::WorkerService::Stub* stub,
    grpc::Status (v1::WorkerService::Stub::*method)(grpc::ClientContext*, const Request&,
                                                    Response*)) {
  return [stub, method](const google::protobuf::Message& m) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    Response response;
    return (stub->*method)(&ctx, static_cast<const Request&>(m), &response);
  };
}

// Every WorkerService request field annotated (google.api.field_behavior) =
// REQUIRED is enforced: the request without it is INVALID_ARGUMENT naming the
// field, before the lease is looked at; the complete request is not.
TEST_F(WorkerServiceTest, EveryRequiredRequestFieldIsEnforced) {
  using Stub = v1::WorkerService::Stub;
  FakeAgent agent(workers_.get(), "agent-req", 1);
  ASSERT_TRUE(agent.Register().ok());
  const std::string id = SubmitOk(ValidSpec());
  v1::RankRef ref;
  ref.set_job_id(id);
  ref.set_attempt(1);
  ref.set_rank(0);

  auto with_lease = [&](auto request) {
    request->set_agent_id("agent-req");
    request->set_lease_id(agent.lease_id_);
    return request;
  };
  std::map<std::string, testing::RequestCase> cases;
  {
    auto r = std::make_unique<v1::RegisterRequest>();
    r->set_agent_id("agent-req-2");  // not agent-req: its lease stays current
    r->set_host("127.0.0.1");
    v1::Slots* slots = r->add_slots();
    slots->set_device_kind(v1::DEVICE_CPU);
    slots->set_count(1);
    cases["Register"] = {std::move(r), UnaryCall(workers_.get(), &Stub::Register)};
  }
  cases["Heartbeat"] = {with_lease(std::make_unique<v1::HeartbeatRequest>()),
                        UnaryCall(workers_.get(), &Stub::Heartbeat)};
  cases["StreamAssignments"] = {
      with_lease(std::make_unique<v1::StreamAssignmentsRequest>()),
      [&](const google::protobuf::Message& m) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
        auto reader =
            workers_->StreamAssignments(&ctx, static_cast<const v1::StreamAssignmentsRequest&>(m));
        v1::AssignmentEvent event;
        while (reader->Read(&event)) {
        }
        return reader->Finish();
      }};
  {
    auto r = with_lease(std::make_unique<v1::ReportProgressRequest>());
    *r->mutable_ref() = ref;
    cases["ReportProgress"] = {std::move(r), UnaryCall(workers_.get(), &Stub::ReportProgress)};
  }
  {
    auto r = with_lease(std::make_unique<v1::ReportExitRequest>());
    *r->mutable_ref() = ref;
    r->set_exit_code(1);
    cases["ReportExit"] = {std::move(r), UnaryCall(workers_.get(), &Stub::ReportExit)};
  }
  cases["Drain"] = {with_lease(std::make_unique<v1::DrainRequest>()),
                    UnaryCall(workers_.get(), &Stub::Drain)};
  cases["Deregister"] = {with_lease(std::make_unique<v1::DeregisterRequest>()),
                         UnaryCall(workers_.get(), &Stub::Deregister)};

  const auto* service =
      v1::RegisterRequest::descriptor()->file()->FindServiceByName("WorkerService");
  ASSERT_NE(service, nullptr);
  // In the service's order: Deregister, which ends the lease, comes last.
  const int checked =
      testing::ExpectRequiredFieldsEnforced(*service, cases, /*exact_message=*/true);
  // Register 3, Heartbeat 2, StreamAssignments 2, ReportProgress 3, ReportExit 3, Drain 2,
  // Deregister 2.
  EXPECT_EQ(checked, 17);
}

class ShortLeaseTest : public WorkerServiceTest {
 protected:
  void Customize(TerndOptions* options) override {
    options->scheduler.agent_lease_ttl = std::chrono::seconds(1);
  }
};

TEST_F(ShortLeaseTest, AnExpiredLeaseRestartsTheJobAndEndsTheStream) {
  FakeAgent agent(workers_.get(), "agent-a", 1);
  ASSERT_TRUE(agent.Register().ok());
  const std::string id = SubmitOk(ValidSpec());
  agent.StartStream();
  ASSERT_TRUE(agent.WaitForEvents(1));
  // No heartbeats: the lease expires, the job goes back to the queue.
  grpc::Status stream_status;
  ASSERT_TRUE(Eventually([&] { return agent.StreamDone(&stream_status); }));
  EXPECT_EQ(stream_status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_TRUE(WaitForState(id, v1::JOB_STATE_QUEUED));
  EXPECT_EQ(GetJobOk(id).restarts(), 1);
  v1::HeartbeatResponse heartbeat;
  EXPECT_EQ(agent.Heartbeat({}, &heartbeat).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(Eventually([&] {
    return Metrics().find("tern_scheduler_lease_expiries_total 1") !=
           std::string::npos;
  }));
  EXPECT_NE(Metrics().find("tern_scheduler_restarts_total{reason=\"AGENT_"
                           "LEASE_EXPIRED\"} 1"),
            std::string::npos);
}

class NoMetricsGraceTest : public WorkerServiceTest {
 protected:
  void Customize(TerndOptions* options) override {
    options->job_metrics_grace = std::chrono::milliseconds(0);
  }
};

TEST_F(NoMetricsGraceTest, AnEndedJobsSeriesAreDroppedAfterTheGracePeriod) {
  FakeAgent agent(workers_.get(), "agent-a", 1);
  ASSERT_TRUE(agent.Register().ok());
  const std::string id = SubmitOk(ValidSpec());
  agent.StartStream();
  ASSERT_TRUE(agent.WaitForEvents(1));
  const v1::RankRef ref = agent.Events()[0].assignment().ref();
  ASSERT_TRUE(
      agent.Report(ref, {Line("progress", 0, "\"step\":7,\"loss\":2")}).ok());
  const std::string series = "tern_job_step{job=\"" + id + "\"} 7";
  EXPECT_NE(Metrics().find(series), std::string::npos);
  // A CPU trainer's progress (no GPU memory) makes no GPU series.
  EXPECT_EQ(Metrics().find("tern_job_gpu_memory_bytes{"), std::string::npos);
  v1::Job job;
  ASSERT_TRUE(Cancel(id, &job).ok());
  ASSERT_TRUE(agent.Exit(ref, -1, 15, /*killed_by_agent=*/true).ok());  // CANCELLING -> CANCELLED
  EXPECT_TRUE(Eventually([&] {
    return Metrics().find("tern_job_step{job=") == std::string::npos;
  }));
}

}  // namespace
}  // namespace tern::server
