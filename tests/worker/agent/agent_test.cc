// The agent against a fake WorkerService (a gRPC server on 127.0.0.1:0 in
// this process) and a fake trainer (a shell script that prints JSON lines
// and then exits or sleeps, as the spec's name tells it).
#include "worker/agent/agent.h"

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "tern/v1/worker_service.grpc.pb.h"
#include "trainer_protocol/lease_file.h"
#include "worker/agent/child_process.h"
#include "worker/agent/fs_confinement.h"

namespace tern::agent {
namespace {

namespace fs = std::filesystem;
using google::protobuf::util::TimeUtil;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// The fake tern-trainer. Records its arguments, environment and pid in its
// --workdir, then acts on the spec's "name": ok, fail, sleeper (exec sleep),
// stubborn (ignores SIGTERM and SIGUSR1), family (a background child),
// progress_sleeper, writer (writes into its checkpoint directory, its workdir
// and $TERN_TEST_OUTSIDE, exit 0), reader (copies $TERN_TEST_DATA and
// $TERN_TEST_SECRET into its workdir, stderr too, exit 0), checkpointer (on
// SIGUSR1 prints a checkpoint event and exits 3, as tern-trainer stops on
// request).
constexpr const char* kFakeTrainer = R"SH(#!/bin/sh
args="$*"
spec=""; workdir=""; rank=0
while [ $# -gt 0 ]; do
  case "$1" in
    --spec) spec="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --rank) rank="$2"; shift 2 ;;
    *) shift ;;
  esac
done
mode=$(sed -n 's/.*"name":"\([a-z_]*\)".*/\1/p' "$spec")
# Traps before the pid file tells the test we run.
[ "$mode" = stubborn ] && trap '' TERM USR1
common="\"job\":\"j\",\"rank\":$rank,\"world_size\":2"
[ "$mode" = checkpointer ] && trap 'echo "{\"event\":\"checkpoint\",$common,\"time\":103.0,\"step\":17,\"epoch\":2,\"path\":\"/c/step-17\",\"seconds\":0.1}"; exit 3' USR1
echo "$args" > "$workdir/args"
env > "$workdir/env"
echo $$ > "$workdir/pid"
echo "{\"event\":\"started\",$common,\"time\":99.0,\"resumed_from_step\":-1,\"steps_per_epoch\":10,\"device\":\"cpu\"}"
case "$mode" in
  ok)
    echo "loading data" >&2
    echo "{\"event\":\"progress\",$common,\"time\":100.0,\"epoch\":1,\"epochs\":3,\"step\":10,\"total_steps\":30,\"loss\":1.5,\"lr\":0.1,\"images_per_second\":500,\"eta_seconds\":4}"
    echo "{\"event\":\"progress\",$common,\"time\":101.0,\"epoch\":2,\"epochs\":3,\"step\":20,\"total_steps\":30,\"loss\":1.25,\"lr\":0.05,\"images_per_second\":600,\"eta_seconds\":2}"
    echo "{\"event\":\"checkpoint\",$common,\"time\":101.5,\"step\":20,\"epoch\":2,\"path\":\"/c/step-20\",\"seconds\":0.5}"
    echo "not a json line"
    echo "{\"event\":\"finished\",$common,\"time\":102.0,\"fp\":{\"top1\":0.9},\"artifact\":{\"top1\":0.85},\"artifact_path\":\"/a/model.tern\",\"artifact_bytes\":100,\"bits_per_weight\":1.6,\"steps\":30}"
    echo "done" >&2
    exit 0 ;;
  fail)
    echo "boom: cannot read /data/train" >&2
    echo "{\"event\":\"failed\",$common,\"time\":100.0,\"code\":\"BAD_DATA_FILE\",\"reason\":\"cannot read /data/train\"}"
    exit 1 ;;
  sleeper)
    exec sleep 300 ;;
  progress_sleeper)
    echo "{\"event\":\"progress\",$common,\"time\":100.0,\"epoch\":1,\"epochs\":3,\"step\":10,\"total_steps\":30,\"loss\":1.5,\"lr\":0.1,\"images_per_second\":500}"
    echo "{\"event\":\"progress\",$common,\"time\":102.0,\"epoch\":1,\"epochs\":3,\"step\":20,\"total_steps\":30,\"loss\":1.25,\"lr\":0.1,\"images_per_second\":640}"
    echo "{\"event\":\"checkpoint\",$common,\"time\":102.5,\"step\":20,\"epoch\":2,\"path\":\"/c\",\"seconds\":1.5}"
    exec sleep 300 ;;
  stubborn|checkpointer)
    while true; do sleep 0.1; done ;;
  writer)
    ckpt=$(sed -n 's/.*"directory":"\([^"]*\)".*/\1/p' "$spec")
    echo ck > "$ckpt/written"
    echo wd > "$workdir/written"
    echo out > "$TERN_TEST_OUTSIDE/escaped"
    exit 0 ;;
  reader)
    cat "$TERN_TEST_DATA" > "$workdir/read-data" 2>> "$workdir/read-errors"
    cat "$TERN_TEST_SECRET" > "$workdir/read-secret" 2>> "$workdir/read-errors"
    exit 0 ;;
  family)
    sleep 300 &
    echo $! > "$workdir/child.pid"
    wait ;;
esac
exit 3
)SH";

// A WorkerService that records what the agent says and sends what the test
// queues.
class FakeWorkerService final : public v1::WorkerService::Service {
 public:
  grpc::Status Register(grpc::ServerContext*, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (unavailable_ || registrations_unavailable_) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "down (test)");
    }
    registrations_.push_back(*request);
    lease_ = "lease-" + std::to_string(registrations_.size());
    response->set_lease_id(lease_);
    *response->mutable_lease_ttl() = TimeUtil::MillisecondsToDuration(ttl_ms_);
    *response->mutable_heartbeat_interval() = TimeUtil::MillisecondsToDuration(interval_ms_);
    cv_.notify_all();
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (unavailable_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "down (test)");
    if (request->lease_id() != lease_) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "unknown lease");
    }
    heartbeats_.push_back(*request);
    *response->mutable_lease_ttl() = TimeUtil::MillisecondsToDuration(ttl_ms_);
    *response->mutable_heartbeat_interval() = TimeUtil::MillisecondsToDuration(interval_ms_);
    for (const v1::RankRef& r : unexpected_) *response->add_unexpected() = r;
    cv_.notify_all();
    return grpc::Status::OK;
  }

  grpc::Status StreamAssignments(grpc::ServerContext* ctx, const v1::StreamAssignmentsRequest* request,
                                 grpc::ServerWriter<v1::AssignmentEvent>* writer) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (unavailable_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "down (test)");
    if (request->lease_id() != lease_) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "unknown lease");
    }
    ++streams_opened_;
    cv_.notify_all();
    while (true) {
      cv_.wait_for(lock, milliseconds(20));
      if (ctx->IsCancelled()) return grpc::Status::CANCELLED;
      if (stopping_) return grpc::Status::OK;
      if (unavailable_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "down (test)");
      if (request->lease_id() != lease_) {
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "lease ended");
      }
      if (break_stream_) {
        break_stream_ = false;
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset (test)");
      }
      while (!queue_.empty()) {
        v1::AssignmentEvent e = queue_.front();
        queue_.pop_front();
        lock.unlock();
        writer->Write(e);
        lock.lock();
      }
    }
  }

  grpc::Status ReportProgress(grpc::ServerContext*, const v1::ReportProgressRequest* request,
                              v1::ReportProgressResponse*) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const v1::TrainerEvent& e : request->events()) {
      events_.push_back({request->ref(), e});
    }
    ++progress_calls_;
    cv_.notify_all();
    return grpc::Status::OK;
  }

  grpc::Status ReportExit(grpc::ServerContext*, const v1::ReportExitRequest* request,
                          v1::ReportExitResponse*) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (refuse_next_exits_ > 0) {  // as a ternd that forgot the lease
      --refuse_next_exits_;
      ++exits_refused_;
      cv_.notify_all();
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "unknown lease (test)");
    }
    exits_.push_back(*request);
    calls_.push_back("ReportExit " + request->ref().job_id());
    cv_.notify_all();
    return grpc::Status::OK;
  }

  grpc::Status Drain(grpc::ServerContext*, const v1::DrainRequest* request,
                     v1::DrainResponse*) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (unavailable_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "down (test)");
    if (request->lease_id() != lease_) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "unknown lease");
    }
    calls_.push_back("Drain " + request->lease_id());
    cv_.notify_all();
    return grpc::Status::OK;
  }

  grpc::Status Deregister(grpc::ServerContext*, const v1::DeregisterRequest* request,
                          v1::DeregisterResponse*) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (unavailable_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "down (test)");
    if (request->lease_id() != lease_) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "unknown lease");
    }
    calls_.push_back("Deregister " + request->lease_id());
    lease_ = "";
    cv_.notify_all();
    return grpc::Status::OK;
  }

  // --- Test side ---
  void Send(const v1::AssignmentEvent& e) {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(e);
    cv_.notify_all();
  }
  void ForgetLease() {
    std::lock_guard<std::mutex> lock(mu_);
    lease_ = "";
    cv_.notify_all();
  }
  // Every call answers UNAVAILABLE (ternd down), or only Register does.
  void SetUnavailable(bool down) {
    std::lock_guard<std::mutex> lock(mu_);
    unavailable_ = down;
    cv_.notify_all();
  }
  void SetRegistrationsUnavailable(bool down) {
    std::lock_guard<std::mutex> lock(mu_);
    registrations_unavailable_ = down;
  }
  void SetLeaseTtl(int ms) {
    std::lock_guard<std::mutex> lock(mu_);
    ttl_ms_ = ms;
  }
  void SetHeartbeatInterval(int ms) {
    std::lock_guard<std::mutex> lock(mu_);
    interval_ms_ = ms;
  }
  void BreakStream() {
    std::lock_guard<std::mutex> lock(mu_);
    break_stream_ = true;
  }
  void SetUnexpected(std::vector<v1::RankRef> refs) {
    std::lock_guard<std::mutex> lock(mu_);
    unexpected_ = std::move(refs);
  }
  void Stop() {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  // Waits until `pred` (called under the lock) holds; false after `timeout`.
  bool WaitFor(const std::function<bool()>& pred, milliseconds timeout = milliseconds(10000)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, pred);
  }
  template <typename F>
  auto Locked(F f) {
    std::lock_guard<std::mutex> lock(mu_);
    return f();
  }

  struct Event {
    v1::RankRef ref;
    v1::TrainerEvent event;
  };
  // Guarded by mu_ (read them in WaitFor predicates or Locked).
  std::vector<v1::RegisterRequest> registrations_;
  std::vector<v1::HeartbeatRequest> heartbeats_;
  std::vector<Event> events_;
  std::vector<v1::ReportExitRequest> exits_;
  // ReportExit refuses this many next reports for their lease (a ternd that
  // restarted before the heartbeat or the stream noticed); counted in
  // exits_refused_.
  int refuse_next_exits_ = 0;
  int exits_refused_ = 0;
  std::vector<std::string> calls_;  // Drain, ReportExit, Deregister in order
  int streams_opened_ = 0;
  int progress_calls_ = 0;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::string lease_;
  std::deque<v1::AssignmentEvent> queue_;
  std::vector<v1::RankRef> unexpected_;
  bool break_stream_ = false;
  bool stopping_ = false;
  bool unavailable_ = false;
  bool registrations_unavailable_ = false;
  int ttl_ms_ = 5000;
  int interval_ms_ = 100;
};

bool Alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] != 'Z' &&
         line[paren + 2] != 'X';
}

bool WaitUntil(const std::function<bool()>& pred, milliseconds timeout = milliseconds(10000)) {
  const auto end = Clock::now() + timeout;
  while (Clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return pred();
}

std::string ReadFile(const std::string& path) {
  auto s = ReadFileToString(path);
  return s.ok() ? *s : "";
}

pid_t ReadPid(const std::string& path) {
  pid_t pid = 0;
  WaitUntil([&] {
    std::ifstream in(path);
    return static_cast<bool>(in >> pid) && pid > 0;
  });
  return pid;
}

v1::AssignmentEvent MakeAssignment(const std::string& job, int rank, const std::string& mode,
                                   int attempt = 1) {
  v1::AssignmentEvent e;
  v1::Assignment* a = e.mutable_assignment();
  a->mutable_ref()->set_job_id(job);
  a->mutable_ref()->set_attempt(attempt);
  a->mutable_ref()->set_rank(rank);
  a->set_world_size(2);
  a->set_rendezvous_host("10.0.0.5");
  a->set_rendezvous_port(29501);
  a->mutable_spec()->set_name(mode);
  a->mutable_spec()->mutable_optimization()->set_epochs(3);
  return e;
}

v1::AssignmentEvent MakeKill(const std::string& job, int attempt, int grace_ms = -1) {
  v1::AssignmentEvent e;
  e.mutable_kill()->set_job_id(job);
  e.mutable_kill()->set_attempt(attempt);
  e.mutable_kill()->mutable_reason()->set_code("CANCELLED_BY_USER");
  if (grace_ms >= 0) {
    *e.mutable_kill()->mutable_grace_period() = TimeUtil::MillisecondsToDuration(grace_ms);
  }
  return e;
}

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/agent_test_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    trainer_ = dir_ + "/fake-trainer.sh";
    ASSERT_TRUE(WriteFileAtomically(trainer_, kFakeTrainer).ok());
    ::chmod(trainer_.c_str(), 0755);

    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);

    options_.agent_id = "test-agent";
    options_.host = "127.0.0.9";
    options_.cpu_slots = 2;
    options_.trainer_path = trainer_;
    options_.workdir = dir_ + "/work";
    options_.rpc_timeout = milliseconds(2000);
    options_.kill_grace = milliseconds(5000);
    options_.shutdown_grace = milliseconds(2000);
    options_.flush_interval = milliseconds(50);
    options_.backoff_min = milliseconds(50);
    options_.backoff_max = milliseconds(500);
  }

  void TearDown() override {
    StopAgent();
    fake_.Stop();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + milliseconds(2000));
  }

  void StartAgent() {
    agent_ = std::make_unique<Agent>(
        options_,
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials()),
        &registry_);
    thread_ = std::thread([this] { run_status_ = agent_->Run(); });
    ASSERT_TRUE(fake_.WaitFor([&] { return fake_.streams_opened_ > 0; }));
  }

  void StopAgent() {
    if (!agent_) return;
    agent_->Shutdown();
    thread_.join();
    EXPECT_TRUE(run_status_.ok()) << run_status_;
    agent_.reset();
  }

  std::string RankDir(const std::string& job, int rank) const {
    return options_.workdir + "/jobs/" + job + "/rank-" + std::to_string(rank);
  }

  std::vector<v1::TrainerEvent> EventsOf(const std::string& job) {
    return fake_.Locked([&] {
      std::vector<v1::TrainerEvent> out;
      for (const auto& e : fake_.events_) {
        if (e.ref.job_id() == job) out.push_back(e.event);
      }
      return out;
    });
  }

  std::optional<v1::ReportExitRequest> WaitForExit(const std::string& job,
                                                   milliseconds timeout = milliseconds(10000)) {
    std::optional<v1::ReportExitRequest> found;
    fake_.WaitFor(
        [&] {
          for (const auto& e : fake_.exits_) {
            if (e.ref().job_id() == job) found = e;
          }
          return found.has_value();
        },
        timeout);
    return found;
  }

  std::string dir_, trainer_;
  int port_ = 0;
  FakeWorkerService fake_;
  std::unique_ptr<grpc::Server> server_;
  AgentOptions options_;
  metrics::Registry registry_;
  std::unique_ptr<Agent> agent_;
  std::thread thread_;
  Status run_status_;
};

TEST_F(AgentTest, RegistersItsSlotsAndHost) {
  options_.cuda_slots = 1;
  StartAgent();
  const v1::RegisterRequest r = fake_.Locked([&] { return fake_.registrations_.at(0); });
  EXPECT_EQ(r.agent_id(), "test-agent");
  EXPECT_EQ(r.host(), "127.0.0.9");
  ASSERT_EQ(r.slots_size(), 2);
  EXPECT_EQ(r.slots(0).device_kind(), v1::DEVICE_CPU);
  EXPECT_EQ(r.slots(0).count(), 2);
  EXPECT_EQ(r.slots(1).device_kind(), v1::DEVICE_CUDA);
  EXPECT_EQ(r.slots(1).count(), 1);
  EXPECT_EQ(agent_->lease_id(), "lease-1");
  // Heartbeats renew the lease.
  EXPECT_TRUE(fake_.WaitFor([&] { return fake_.heartbeats_.size() >= 2; }));
  EXPECT_EQ(fake_.Locked([&] { return fake_.heartbeats_.at(0).lease_id(); }), "lease-1");
}

TEST_F(AgentTest, RunsTheTrainerAndRelaysItsEventsAndExit) {
  StartAgent();
  v1::AssignmentEvent a = MakeAssignment("job-1", 1, "ok");
  a.mutable_assignment()->set_checkpoint_dir(dir_ + "/ckpt");
  a.mutable_assignment()->set_artifact_path(dir_ + "/model.tern");
  a.mutable_assignment()->set_rendezvous_key("00112233445566778899aabbccddeeff");
  fake_.Send(a);
  const auto exit = WaitForExit("job-1");
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->exit_code(), 0);
  EXPECT_EQ(exit->signal(), 0);
  EXPECT_FALSE(exit->killed_by_agent());
  EXPECT_EQ(exit->lease_id(), "lease-1");
  EXPECT_EQ(exit->ref().rank(), 1);

  // Arguments, environment and the spec file the trainer got.
  const std::string rank_dir = RankDir("job-1", 1);
  const std::string args = ReadFile(rank_dir + "/args");
  EXPECT_NE(args.find("--rank 1 --world-size 2 --master 10.0.0.5:29501"), std::string::npos) << args;
  EXPECT_NE(args.find("--workdir " + rank_dir), std::string::npos) << args;
  EXPECT_NE(args.find("--artifact " + dir_ + "/model.tern"), std::string::npos) << args;
  const std::string env = ReadFile(rank_dir + "/env");
  EXPECT_NE(env.find("TERN_RANK=1\n"), std::string::npos);
  EXPECT_NE(env.find("TERN_JOB_ID=job-1\n"), std::string::npos);
  EXPECT_NE(env.find("CUDA_VISIBLE_DEVICES=\n"), std::string::npos);  // a CPU rank sees no GPU
  // The rendezvous secret travels in the environment, never in the arguments
  // (anyone on the machine may read a process's command line).
  EXPECT_NE(env.find("TERN_RENDEZVOUS_KEY=00112233445566778899aabbccddeeff\n"), std::string::npos);
  EXPECT_EQ(args.find("00112233445566778899aabbccddeeff"), std::string::npos) << args;
  EXPECT_EQ(ReadFile(rank_dir + "/spec-attempt-1.json").find("00112233445566778899aabbccddeeff"),
            std::string::npos);
  v1::JobSpec spec;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(
                  ReadFile(rank_dir + "/spec-attempt-1.json"), &spec)
                  .ok());
  EXPECT_EQ(spec.name(), "ok");
  EXPECT_EQ(spec.checkpoint().directory(), dir_ + "/ckpt");
  EXPECT_EQ(spec.optimization().epochs(), 3);

  // Events arrive in order, parsed, with stderr lines as logs; the exit
  // report comes after the `finished` event.
  const std::vector<v1::TrainerEvent> events = EventsOf("job-1");
  std::vector<std::string> kinds;
  for (const auto& e : events) {
    switch (e.parsed_case()) {
      case v1::TrainerEvent::kStarted: kinds.push_back("started"); break;
      case v1::TrainerEvent::kProgress: kinds.push_back("progress"); break;
      case v1::TrainerEvent::kCheckpointCommitted: kinds.push_back("checkpoint"); break;
      case v1::TrainerEvent::kFinished: kinds.push_back("finished"); break;
      case v1::TrainerEvent::kLog: kinds.push_back("log"); break;
      case v1::TrainerEvent::PARSED_NOT_SET: kinds.push_back("raw"); break;
      default: kinds.push_back("other");
    }
  }
  std::vector<std::string> stdout_kinds;
  for (const auto& k : kinds) {
    if (k != "log") stdout_kinds.push_back(k);
  }
  EXPECT_EQ(stdout_kinds, (std::vector<std::string>{"started", "progress", "progress",
                                                    "checkpoint", "raw", "finished"}));
  EXPECT_EQ(std::count(kinds.begin(), kinds.end(), "log"), 2);
  for (const auto& e : events) {
    if (e.has_started()) {
      EXPECT_GT(e.started().pid(), 0);
    }
    if (e.has_progress() && e.progress().step() == 10) {
      EXPECT_EQ(e.progress().epoch(), 1);
    }
    if (e.has_finished()) {
      EXPECT_EQ(e.finished().artifact_path(), "/a/model.tern");
      EXPECT_DOUBLE_EQ(e.finished().ternary_top1(), 0.85);
    }
    if (e.has_log()) {
      EXPECT_EQ(e.log().rank(), 1);
    }
    if (e.parsed_case() == v1::TrainerEvent::PARSED_NOT_SET) {
      EXPECT_EQ(e.json_line(), "not a json line");
    }
  }
  EXPECT_TRUE(WaitUntil([&] { return agent_->running_trainers() == 0; }));
  EXPECT_NE(registry_.Serialize().find("tern_agent_trainer_exits_total{code=\"0\"} 1"),
            std::string::npos);
}

// Every rank, not only rank 0, listens for its peers on the address the
// agent advertises (--host), not on the hostname's (often loopback) one;
// TERN_GLOO_IFNAME from the agent's environment still reaches it.
TEST_F(AgentTest, EveryRankGetsTheAdvertisedHostAsItsBindAddress) {
  ASSERT_EQ(::setenv("TERN_GLOO_IFNAME", "eth7", 1), 0);
  StartAgent();
  fake_.Send(MakeAssignment("job-b", 0, "ok"));
  fake_.Send(MakeAssignment("job-b", 1, "ok"));
  ASSERT_TRUE(WaitForExit("job-b").has_value());
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.exits_.size() >= 2; }));
  ::unsetenv("TERN_GLOO_IFNAME");
  for (int rank : {0, 1}) {
    const std::string env = ReadFile(RankDir("job-b", rank) + "/env");
    EXPECT_NE(env.find("TERN_BIND_ADDR=127.0.0.9\n"), std::string::npos) << env;
    EXPECT_NE(env.find("TERN_MASTER_ADDR=10.0.0.5\n"), std::string::npos) << env;
    EXPECT_NE(env.find("TERN_GLOO_IFNAME=eth7\n"), std::string::npos) << env;
  }
}

TEST_F(AgentTest, ReportsAFailureWithTheTrainersReasonAndStderrTail) {
  StartAgent();
  fake_.Send(MakeAssignment("job-f", 0, "fail"));
  const auto exit = WaitForExit("job-f");
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->exit_code(), 1);
  EXPECT_EQ(exit->signal(), 0);
  EXPECT_FALSE(exit->killed_by_agent());
  EXPECT_NE(exit->reason().find("BAD_DATA_FILE: cannot read /data/train"), std::string::npos)
      << exit->reason();
  EXPECT_NE(exit->reason().find("boom: cannot read /data/train"), std::string::npos)
      << exit->reason();
}

TEST_F(AgentTest, KillOrderStopsASleepingTrainerWithinSeconds) {
  StartAgent();
  fake_.Send(MakeAssignment("job-k", 0, "sleeper"));
  const pid_t pid = ReadPid(RankDir("job-k", 0) + "/pid");
  ASSERT_GT(pid, 0);
  // While it runs, heartbeats list it.
  ASSERT_TRUE(fake_.WaitFor([&] {
    for (const auto& h : fake_.heartbeats_) {
      for (const auto& r : h.running()) {
        if (r.job_id() == "job-k") return true;
      }
    }
    return false;
  }));
  const auto start = Clock::now();
  fake_.Send(MakeKill("job-k", 0));
  const auto exit = WaitForExit("job-k", milliseconds(5000));
  ASSERT_TRUE(exit.has_value());
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(3));
  EXPECT_EQ(exit->exit_code(), -1);
  EXPECT_EQ(exit->signal(), SIGTERM);
  EXPECT_TRUE(exit->killed_by_agent());
  EXPECT_NE(exit->reason().find("CANCELLED_BY_USER"), std::string::npos) << exit->reason();
  EXPECT_FALSE(Alive(pid));
}

TEST_F(AgentTest, KillOrderEscalatesToSigkillAfterTheGracePeriod) {
  StartAgent();
  fake_.Send(MakeAssignment("job-s", 0, "stubborn"));
  const pid_t pid = ReadPid(RankDir("job-s", 0) + "/pid");
  ASSERT_GT(pid, 0);
  const auto start = Clock::now();
  fake_.Send(MakeKill("job-s", 1, /*grace_ms=*/300));
  const auto exit = WaitForExit("job-s", milliseconds(5000));
  ASSERT_TRUE(exit.has_value());
  EXPECT_GE(Clock::now() - start, milliseconds(300));
  EXPECT_EQ(exit->signal(), SIGKILL);
  EXPECT_TRUE(exit->killed_by_agent());
  EXPECT_FALSE(Alive(pid));
}

TEST_F(AgentTest, KillOrderForAnotherAttemptLeavesTheTrainerRunning) {
  StartAgent();
  fake_.Send(MakeAssignment("job-a", 0, "sleeper", /*attempt=*/2));
  const pid_t pid = ReadPid(RankDir("job-a", 0) + "/pid");
  ASSERT_GT(pid, 0);
  fake_.Send(MakeKill("job-a", 1));
  EXPECT_FALSE(WaitForExit("job-a", milliseconds(500)).has_value());
  EXPECT_TRUE(Alive(pid));
  fake_.Send(MakeKill("job-a", 2));
  EXPECT_TRUE(WaitForExit("job-a").has_value());
}

TEST_F(AgentTest, RepeatedAssignmentStartsOneTrainer) {
  StartAgent();
  fake_.Send(MakeAssignment("job-d", 0, "sleeper"));
  fake_.Send(MakeAssignment("job-d", 0, "sleeper"));
  ASSERT_GT(ReadPid(RankDir("job-d", 0) + "/pid"), 0);
  std::this_thread::sleep_for(milliseconds(500));
  int started = 0;
  for (const auto& e : EventsOf("job-d")) started += e.has_started();
  EXPECT_EQ(started, 1);
  EXPECT_EQ(agent_->running_trainers(), 1);
}

TEST_F(AgentTest, ShutdownLeavesNoChildProcesses) {
  StartAgent();
  fake_.Send(MakeAssignment("job-x", 0, "family"));
  fake_.Send(MakeAssignment("job-x", 1, "stubborn"));
  const pid_t p0 = ReadPid(RankDir("job-x", 0) + "/pid");
  const pid_t grandchild = ReadPid(RankDir("job-x", 0) + "/child.pid");
  const pid_t p1 = ReadPid(RankDir("job-x", 1) + "/pid");
  ASSERT_GT(p0, 0);
  ASSERT_GT(grandchild, 0);
  ASSERT_GT(p1, 0);
  ASSERT_TRUE(Alive(grandchild));
  const auto start = Clock::now();
  StopAgent();  // SIGUSR1, then SIGKILL after shutdown_grace (2 s) for the stubborn one
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(6));
  for (pid_t pid : {p0, grandchild, p1}) {
    EXPECT_TRUE(WaitUntil([&] { return !Alive(pid); }, milliseconds(2000))) << pid;
  }
  // Their exits were reported as the agent's doing.
  fake_.Locked([&] {
    EXPECT_EQ(fake_.exits_.size(), 2u);
    for (const auto& e : fake_.exits_) EXPECT_TRUE(e.killed_by_agent());
    return 0;
  });
}

TEST_F(AgentTest, ShutdownDrainsTrainersAtACheckpointAndDeregistersLast) {
  StartAgent();
  fake_.Send(MakeAssignment("job-c", 0, "checkpointer"));
  fake_.Send(MakeAssignment("job-s", 0, "sleeper"));  // no handler: SIGUSR1 ends it
  ASSERT_GT(ReadPid(RankDir("job-c", 0) + "/pid"), 0);
  ASSERT_GT(ReadPid(RankDir("job-s", 0) + "/pid"), 0);
  StopAgent();
  const auto exit = WaitForExit("job-c", milliseconds(1));
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->exit_code(), 3);
  EXPECT_EQ(exit->signal(), 0);
  EXPECT_TRUE(exit->preempted());
  EXPECT_TRUE(exit->killed_by_agent());
  EXPECT_NE(exit->reason().find("agent shutting down"), std::string::npos) << exit->reason();
  const auto killed = WaitForExit("job-s", milliseconds(1));
  ASSERT_TRUE(killed.has_value());
  EXPECT_EQ(killed->signal(), SIGUSR1);
  EXPECT_FALSE(killed->preempted());
  // The checkpoint it committed on the way out was relayed before its exit.
  bool checkpoint = false;
  for (const auto& e : EventsOf("job-c")) {
    checkpoint |= e.has_checkpoint_committed() && e.checkpoint_committed().step() == 17;
  }
  EXPECT_TRUE(checkpoint);
  // Drain before the trainers were signalled, Deregister after both exits.
  const std::vector<std::string> calls = fake_.Locked([&] { return fake_.calls_; });
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[0], "Drain lease-1");
  EXPECT_EQ(calls[3], "Deregister lease-1");
}

TEST_F(AgentTest, ARankDrainedBeforeItsTrainerStartedIsReportedPreempted) {
  StartAgent();
  fake_.Send(MakeAssignment("job-w", 0, "stubborn", /*attempt=*/1));
  ASSERT_GT(ReadPid(RankDir("job-w", 0) + "/pid"), 0);
  // Attempt 2 waits for attempt 1's trainer, which ignores SIGTERM.
  fake_.Send(MakeAssignment("job-w", 0, "ok", /*attempt=*/2));
  ASSERT_TRUE(WaitUntil([&] { return agent_->running_trainers() == 2; }));
  StopAgent();
  const auto second = fake_.Locked([&] {
    std::optional<v1::ReportExitRequest> found;
    for (const auto& e : fake_.exits_) {
      if (e.ref().attempt() == 2) found = e;
    }
    return found;
  });
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->exit_code(), 3);
  EXPECT_TRUE(second->preempted());  // as a trainer stopped before its loop: nothing lost
  EXPECT_FALSE(fs::exists(RankDir("job-w", 0) + "/args") &&
               ReadFile(RankDir("job-w", 0) + "/args").find("attempt-2") != std::string::npos);
}

TEST_F(AgentTest, ShutdownStillStopsTrainersWhenTernIsUnreachable) {
  StartAgent();
  fake_.Send(MakeAssignment("job-c", 0, "checkpointer"));
  const pid_t pid = ReadPid(RankDir("job-c", 0) + "/pid");
  ASSERT_GT(pid, 0);
  fake_.SetUnavailable(true);
  const auto start = Clock::now();
  StopAgent();  // Drain and Deregister fail within their 2 s limit each
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(8));
  EXPECT_FALSE(Alive(pid));
  for (const std::string& call : fake_.Locked([&] { return fake_.calls_; })) {
    EXPECT_EQ(call.rfind("ReportExit", 0), 0u) << call;  // no Drain or Deregister got through
  }
}

TEST_F(AgentTest, EachRenewalMovesTheTrainersLeaseFileForward) {
  StartAgent();
  fake_.Send(MakeAssignment("job-f", 0, "sleeper"));
  ASSERT_GT(ReadPid(RankDir("job-f", 0) + "/pid"), 0);
  const std::string file = RankDir("job-f", 0) + "/agent-lease-attempt-1";
  EXPECT_NE(ReadFile(RankDir("job-f", 0) + "/env").find("TERN_LEASE_FILE=" + file + "\n"),
            std::string::npos);
  const auto deadline = [&] { return trainer::ParseLeaseDeadline(ReadFile(file)); };
  const auto first = deadline();
  ASSERT_TRUE(first.has_value()) << ReadFile(file);
  // A renewal's send time plus the 5 s TTL.
  EXPECT_GT(*first, Clock::now());
  EXPECT_LE(*first, Clock::now() + milliseconds(5000));
  // Heartbeats every 100 ms move it.
  EXPECT_TRUE(WaitUntil([&] { return deadline().value_or(*first) > *first + milliseconds(300); }));
  // Frozen renewals (ternd unreachable) leave it where it was.
  fake_.SetUnavailable(true);
  std::this_thread::sleep_for(milliseconds(300));
  const auto held = deadline();
  std::this_thread::sleep_for(milliseconds(500));
  EXPECT_EQ(deadline(), held);
  fake_.SetUnavailable(false);
  fake_.Send(MakeKill("job-f", 0));
  ASSERT_TRUE(WaitForExit("job-f").has_value());
  EXPECT_TRUE(WaitUntil([&] { return !fs::exists(file); }));  // removed with the rank
}

TEST_F(AgentTest, AServerThatForgotTheLeaseGetsTheRunningTrainersListed) {
  StartAgent();
  fake_.Send(MakeAssignment("job-l", 0, "sleeper"));
  const pid_t pid = ReadPid(RankDir("job-l", 0) + "/pid");
  ASSERT_GT(pid, 0);
  // A restarted ternd: the next heartbeat answers FAILED_PRECONDITION.
  fake_.ForgetLease();
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.registrations_.size() >= 2; }));
  EXPECT_TRUE(Alive(pid));  // kept, and listed for ternd to reconcile
  fake_.Locked([&] {
    EXPECT_EQ(fake_.registrations_[0].running_size(), 0);  // a fresh start
    const v1::RegisterRequest& again = fake_.registrations_[1];
    EXPECT_EQ(again.running_size(), 1);
    if (again.running_size() == 1) {
      EXPECT_EQ(again.running(0).job_id(), "job-l");
      EXPECT_EQ(again.running(0).attempt(), 1);
      EXPECT_EQ(again.running(0).rank(), 0);
    }
    return 0;
  });
  EXPECT_TRUE(WaitUntil([&] { return agent_->lease_id() == "lease-2"; }));
  EXPECT_EQ(agent_->running_trainers(), 1);
  // Heartbeats under the new lease list it, and its exit is reported there.
  ASSERT_TRUE(fake_.WaitFor([&] {
    return !fake_.heartbeats_.empty() && fake_.heartbeats_.back().lease_id() == "lease-2" &&
           fake_.heartbeats_.back().running_size() == 1;
  }));
  fake_.Send(MakeKill("job-l", 1));
  const auto exit = WaitForExit("job-l");
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->lease_id(), "lease-2");
  EXPECT_TRUE(exit->killed_by_agent());
  EXPECT_EQ(agent_->registrations(), 2);
  const std::string text = registry_.Serialize();
  EXPECT_NE(text.find("tern_agent_lease_losses_total{cause=\"unknown_to_server\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("tern_agent_rejoins_total{result=\"kept\"} 1"), std::string::npos) << text;
}

// A trainer that ends while ternd has forgotten the lease: its exit report
// is refused, the agent rejoins listing the rank (the server then expects it
// running), and the exit is reported again under the new lease instead of
// being dropped (which left the job RUNNING forever in the load test).
TEST_F(AgentTest, AnExitRefusedForItsLeaseIsReportedUnderTheNextOne) {
  StartAgent();
  fake_.Send(MakeAssignment("job-x", 0, "sleeper"));
  const pid_t pid = ReadPid(RankDir("job-x", 0) + "/pid");
  ASSERT_GT(pid, 0);
  // The trainer ends; its report reaches a ternd that no longer knows the
  // lease, which the agent learns from the next heartbeat.
  fake_.Locked([&] { return fake_.refuse_next_exits_ = 1; });
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.exits_refused_ >= 1; }));
  fake_.ForgetLease();
  const auto exit = WaitForExit("job-x");
  ASSERT_TRUE(exit.has_value()) << "the exit was dropped after its lease was refused";
  EXPECT_EQ(exit->lease_id(), "lease-2");
  EXPECT_EQ(exit->signal(), SIGKILL);
  fake_.Locked([&] {
    EXPECT_GE(fake_.registrations_.size(), 2u);
    if (fake_.registrations_.size() >= 2) {
      EXPECT_EQ(fake_.registrations_[1].running_size(), 1);  // listed, so expected running
    }
    return 0;
  });
}

TEST_F(AgentTest, TrainersAreStoppedWhenNoNewLeaseComesWithinTheTtl) {
  fake_.SetLeaseTtl(1000);
  StartAgent();
  fake_.Send(MakeAssignment("job-f", 0, "sleeper"));
  const pid_t pid = ReadPid(RankDir("job-f", 0) + "/pid");
  ASSERT_GT(pid, 0);
  // ternd forgot the lease and then cannot register the agent: after the
  // TTL it has written the rank off, so the trainer must go.
  fake_.SetRegistrationsUnavailable(true);
  fake_.ForgetLease();
  EXPECT_TRUE(WaitUntil([&] { return !Alive(pid); }, milliseconds(8000)));
  EXPECT_TRUE(WaitUntil([&] { return agent_->running_trainers() == 0; }));
  fake_.SetRegistrationsUnavailable(false);
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.registrations_.size() >= 2; }));
  EXPECT_EQ(fake_.Locked([&] { return fake_.registrations_[1].running_size(); }), 0);
  EXPECT_NE(registry_.Serialize().find("tern_agent_rejoins_total{result=\"timed_out\"} 1"),
            std::string::npos)
      << registry_.Serialize();
}

TEST_F(AgentTest, AnUnreachableServerGetsTheTrainersStoppedAfterTheTtl) {
  fake_.SetLeaseTtl(1000);
  StartAgent();
  fake_.Send(MakeAssignment("job-d", 0, "sleeper"));
  const pid_t pid = ReadPid(RankDir("job-d", 0) + "/pid");
  ASSERT_GT(pid, 0);
  fake_.SetUnavailable(true);  // no heartbeat gets through
  EXPECT_TRUE(WaitUntil([&] { return !Alive(pid); }, milliseconds(8000)));
  fake_.SetUnavailable(false);
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.registrations_.size() >= 2; }));
  EXPECT_EQ(fake_.Locked([&] { return fake_.registrations_[1].running_size(); }), 0);
  EXPECT_NE(registry_.Serialize().find("tern_agent_lease_losses_total{cause=\"not_renewed\"} 1"),
            std::string::npos)
      << registry_.Serialize();
}

// Without a renewal the trainers stop at the deadline their lease files name
// (which ternd's expiry never precedes), not up to a heartbeat interval later
// at the next failed heartbeat, by when ternd may have started their ranks
// elsewhere: a rank must never run twice at once.
TEST_F(AgentTest, AnUnreachableServerGetsTheTrainersStoppedAtTheLeaseDeadline) {
  fake_.SetLeaseTtl(2000);
  fake_.SetHeartbeatInterval(900);
  StartAgent();
  fake_.Send(MakeAssignment("job-t", 0, "sleeper"));
  const pid_t pid = ReadPid(RankDir("job-t", 0) + "/pid");
  ASSERT_GT(pid, 0);
  fake_.SetUnavailable(true);  // heartbeats fail at once from now on
  std::this_thread::sleep_for(milliseconds(200));  // a renewal in flight lands
  const auto deadline =
      trainer::ParseLeaseDeadline(ReadFile(RankDir("job-t", 0) + "/agent-lease-attempt-1"));
  ASSERT_TRUE(deadline.has_value());
  ASSERT_TRUE(WaitUntil([&] { return !Alive(pid) || Clock::now() > *deadline + milliseconds(3000); },
                        milliseconds(8000)));
  const auto stopped = Clock::now();
  EXPECT_FALSE(Alive(pid));
  EXPECT_GT(stopped, *deadline - milliseconds(50)) << "stopped before its lease ran out";
  EXPECT_LT(stopped, *deadline + milliseconds(400))
      << "stopped " << std::chrono::duration_cast<milliseconds>(stopped - *deadline).count()
      << " ms after the lease deadline";
  fake_.SetUnavailable(false);
}

TEST_F(AgentTest, ALaterAttemptStopsTheEarlierOneBeforeItStarts) {
  StartAgent();
  fake_.Send(MakeAssignment("job-s", 0, "sleeper", 1));
  const pid_t pid = ReadPid(RankDir("job-s", 0) + "/pid");
  ASSERT_GT(pid, 0);
  // ternd moved on to attempt 2 (say, while this agent was frozen).
  fake_.Send(MakeAssignment("job-s", 0, "ok", 2));
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.exits_.size() >= 2; }));
  EXPECT_FALSE(Alive(pid));
  fake_.Locked([&] {
    // Attempt 1 was stopped and gone before attempt 2's trainer started.
    const v1::ReportExitRequest& first = fake_.exits_[0];
    EXPECT_EQ(first.ref().attempt(), 1);
    EXPECT_TRUE(first.killed_by_agent());
    EXPECT_NE(first.reason().find("superseded by attempt 2"), std::string::npos) << first.reason();
    const v1::ReportExitRequest& second = fake_.exits_[1];
    EXPECT_EQ(second.ref().attempt(), 2);
    EXPECT_EQ(second.exit_code(), 0);
    return 0;
  });
}

TEST_F(AgentTest, ReconnectsWhenTheStreamBreaks) {
  StartAgent();
  fake_.BreakStream();
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.streams_opened_ >= 2; }));
  fake_.Send(MakeAssignment("job-r", 0, "ok"));
  const auto exit = WaitForExit("job-r");
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->exit_code(), 0);
  EXPECT_EQ(fake_.Locked([&] { return fake_.registrations_.size(); }), 1u);  // same lease
}

TEST_F(AgentTest, KillsRanksTheServerDoesNotExpect) {
  StartAgent();
  fake_.Send(MakeAssignment("job-u", 0, "sleeper"));
  ASSERT_GT(ReadPid(RankDir("job-u", 0) + "/pid"), 0);
  v1::RankRef ref;
  ref.set_job_id("job-u");
  ref.set_attempt(1);
  ref.set_rank(0);
  fake_.SetUnexpected({ref});
  const auto exit = WaitForExit("job-u");
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->signal(), SIGTERM);
  EXPECT_TRUE(exit->killed_by_agent());
}

TEST_F(AgentTest, MissingTrainerIsReportedAsExit127) {
  options_.trainer_path = dir_ + "/no-such-trainer";
  StartAgent();
  fake_.Send(MakeAssignment("job-m", 0, "ok"));
  const auto exit = WaitForExit("job-m");
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->exit_code(), 127);
  EXPECT_NE(exit->reason().find("cannot start trainer"), std::string::npos) << exit->reason();
}

TEST_F(AgentTest, APathGrantIsCheckedWithSymlinksResolvedBeforeTheTrainerStarts) {
  StartAgent();
  const std::string root = fs::canonical(dir_).string();  // TempDir() may end in '/'
  fs::create_directories(root + "/alice");
  fs::create_directories(root + "/bob/ckpt");
  fs::create_directory_symlink(root + "/bob/ckpt", root + "/alice/ckpt");
  auto assignment = [&](const std::string& job, const std::string& checkpoint_dir) {
    v1::AssignmentEvent a = MakeAssignment(job, 0, "ok");
    a.mutable_assignment()->mutable_spec()->mutable_dataset()->set_kind(v1::DATASET_SYNTHETIC);
    a.mutable_assignment()->set_checkpoint_dir(checkpoint_dir);
    a.mutable_assignment()->mutable_path_grant()->add_write_roots(root + "/alice");
    return a;
  };
  fake_.Send(assignment("job-in", root + "/alice/run"));
  const auto ok = WaitForExit("job-in");
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(ok->exit_code(), 0) << ok->reason();
  EXPECT_EQ(ok->failure_code(), "");

  // ternd sees a path under the root; on this node it leads to bob's files.
  fake_.Send(assignment("job-link", root + "/alice/ckpt/run"));
  const auto refused = WaitForExit("job-link");
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->exit_code(), 127);
  EXPECT_EQ(refused->failure_code(), "PERMISSION_DENIED");  // the job's fault: not retried
  EXPECT_NE(refused->reason().find("cannot start trainer: PERMISSION_DENIED: "
                                   "spec.checkpoint.directory: " +
                                   root + "/alice/ckpt/run (which resolves to"),
            std::string::npos)
      << refused->reason();
  EXPECT_TRUE(EventsOf("job-link").empty());  // no trainer ran
  EXPECT_FALSE(fs::exists(root + "/bob/ckpt/run"));
}

TEST_F(AgentTest, ATrainerWithAPathGrantWritesOnlyWhereItMay) {
  if (FsConfinement::AbiVersion() == 0) {
    GTEST_SKIP() << "this kernel offers no Landlock: the agent runs trainers unconfined here";
  }
  const std::string root = fs::canonical(dir_).string();
  fs::create_directories(root + "/scratch/alice");
  fs::create_directories(root + "/bob");
  ::setenv("TERN_TEST_OUTSIDE", (root + "/bob").c_str(), 1);
  StartAgent();
  v1::AssignmentEvent a = MakeAssignment("job-w", 0, "writer");
  a.mutable_assignment()->mutable_spec()->mutable_dataset()->set_kind(v1::DATASET_SYNTHETIC);
  a.mutable_assignment()->set_checkpoint_dir(root + "/scratch/alice/run");
  a.mutable_assignment()->mutable_path_grant()->add_write_roots(root + "/scratch/alice");
  fake_.Send(a);
  const auto exit = WaitForExit("job-w");
  ::unsetenv("TERN_TEST_OUTSIDE");
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->exit_code(), 0) << exit->reason();
  EXPECT_TRUE(fs::exists(root + "/scratch/alice/run/written"));  // created by the agent
  EXPECT_TRUE(fs::exists(RankDir("job-w", 0) + "/written"));
  EXPECT_FALSE(fs::exists(root + "/bob/escaped"));
  // Its own temp directory: a shared /tmp is not writable.
  const StatusOr<std::string> env = ReadFileToString(RankDir("job-w", 0) + "/env");
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_NE(env->find("TMPDIR=" + RankDir("job-w", 0) + "/tmp\n"), std::string::npos) << *env;
}

TEST_F(AgentTest, WithConfineReadsATrainerReadsOnlyItsDataAndTheSystem) {
  if (FsConfinement::AbiVersion() == 0) {
    GTEST_SKIP() << "this kernel offers no Landlock: the agent runs trainers unconfined here";
  }
  const std::string root = fs::canonical(dir_).string();
  // The trainer's own directory is readable: keep it apart from the data.
  fs::create_directories(root + "/bin");
  fs::copy_file(trainer_, root + "/bin/fake-trainer.sh");
  options_.trainer_path = root + "/bin/fake-trainer.sh";
  options_.confine_reads = AgentOptions::ConfineReads::kOn;
  for (const char* d : {"/data/alice", "/data/bob", "/scratch/alice"}) {
    fs::create_directories(root + d);
  }
  ASSERT_TRUE(WriteFileAtomically(root + "/data/alice/train", "alice's data\n").ok());
  ASSERT_TRUE(WriteFileAtomically(root + "/data/bob/train", "bob's data\n").ok());
  ::setenv("TERN_TEST_DATA", (root + "/data/alice/train").c_str(), 1);
  ::setenv("TERN_TEST_SECRET", (root + "/data/bob/train").c_str(), 1);
  StartAgent();
  v1::AssignmentEvent a = MakeAssignment("job-r", 0, "reader");
  a.mutable_assignment()->mutable_spec()->mutable_dataset()->set_kind(v1::DATASET_SYNTHETIC);
  a.mutable_assignment()->set_checkpoint_dir(root + "/scratch/alice/run");
  a.mutable_assignment()->mutable_path_grant()->add_read_roots(root + "/data/alice");
  a.mutable_assignment()->mutable_path_grant()->add_write_roots(root + "/scratch/alice");
  fake_.Send(a);
  const auto exit = WaitForExit("job-r");
  ::unsetenv("TERN_TEST_DATA");
  ::unsetenv("TERN_TEST_SECRET");
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->exit_code(), 0) << exit->reason();
  auto read = [](const std::string& path) {
    StatusOr<std::string> text = ReadFileToString(path);
    return text.ok() ? *text : "(" + text.status().ToString() + ")";
  };
  const std::string rank_dir = RankDir("job-r", 0);
  EXPECT_EQ(read(rank_dir + "/read-data"), "alice's data\n");
  EXPECT_EQ(read(rank_dir + "/read-secret"), "");
  EXPECT_NE(read(rank_dir + "/read-errors").find("Permission denied"), std::string::npos)
      << read(rank_dir + "/read-errors");
  // Without a grant nothing is confined: the same trainer reads bob's file.
  ::setenv("TERN_TEST_DATA", (root + "/data/alice/train").c_str(), 1);
  ::setenv("TERN_TEST_SECRET", (root + "/data/bob/train").c_str(), 1);
  v1::AssignmentEvent free = MakeAssignment("job-f", 0, "reader");
  free.mutable_assignment()->mutable_spec()->mutable_dataset()->set_kind(v1::DATASET_SYNTHETIC);
  fake_.Send(free);
  ASSERT_TRUE(WaitForExit("job-f").has_value());
  ::unsetenv("TERN_TEST_DATA");
  ::unsetenv("TERN_TEST_SECRET");
  EXPECT_EQ(read(RankDir("job-f", 0) + "/read-secret"), "bob's data\n");
}

TEST_F(AgentTest, ExportsTrainerMetrics) {
  StartAgent();
  fake_.Send(MakeAssignment("job-p", 0, "progress_sleeper"));
  ASSERT_TRUE(WaitUntil([&] {
    return registry_.Serialize().find("tern_job_checkpoint_seconds{job=\"job-p\",rank=\"0\"} 1.5") !=
           std::string::npos;
  })) << registry_.Serialize();
  const std::string text = registry_.Serialize();
  EXPECT_NE(text.find("tern_agent_trainers_running 1"), std::string::npos) << text;
  EXPECT_NE(text.find("tern_agent_slots{device_kind=\"cpu\"} 2"), std::string::npos) << text;
  EXPECT_NE(text.find("tern_job_step{job=\"job-p\",rank=\"0\"} 20"), std::string::npos) << text;
  EXPECT_NE(text.find("tern_job_loss{job=\"job-p\",rank=\"0\"} 1.25"), std::string::npos) << text;
  EXPECT_NE(text.find("tern_job_images_per_second{job=\"job-p\",rank=\"0\"} 640"), std::string::npos)
      << text;
  // Two progress events 2 s and 10 steps apart: one 0.2 s step-time sample.
  EXPECT_NE(text.find("tern_job_step_time_seconds_count{job=\"job-p\",rank=\"0\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("tern_job_step_time_seconds_sum{job=\"job-p\",rank=\"0\"} 0.2"),
            std::string::npos)
      << text;
  // This (older, CPU) trainer reports no step breakdown and no GPU memory.
  EXPECT_EQ(text.find("tern_job_gpu_memory_bytes{"), std::string::npos) << text;
  EXPECT_EQ(text.find("tern_job_allreduce_seconds_count{"), std::string::npos) << text;
  fake_.Send(MakeKill("job-p", 0));
  ASSERT_TRUE(WaitForExit("job-p").has_value());
  ASSERT_TRUE(WaitUntil([&] { return agent_->running_trainers() == 0; }));
  const std::string after = registry_.Serialize();
  EXPECT_EQ(after.find("job=\"job-p\""), std::string::npos) << after;  // series removed
  EXPECT_NE(after.find("tern_agent_trainer_exits_total{code=\"SIGTERM\"} 1"), std::string::npos)
      << after;
  EXPECT_NE(after.find("tern_agent_trainers_running 0"), std::string::npos) << after;
}

// Two ranks of the real tern-trainer through the agent (a tiny job on
// Fashion-MNIST): the spec file, flags and rendezvous it gets must work and
// its real output must parse. Runs when TERN_TRAINER_BINARY names the
// binary (or this build has the tern-trainer target); skips otherwise.
TEST_F(AgentTest, RealTrainerTwoRanksFinish) {
  std::string trainer;
#ifdef TERN_TRAINER_BINARY
  trainer = TERN_TRAINER_BINARY;
#endif
  if (const char* env = std::getenv("TERN_TRAINER_BINARY")) trainer = env;
  if (trainer.empty() || ::access(trainer.c_str(), X_OK) != 0) {
    GTEST_SKIP() << "set TERN_TRAINER_BINARY to a tern-trainer to run this test";
  }
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "no Fashion-MNIST";
  options_.trainer_path = trainer;
  StartAgent();
  // A free port for rank 0's store.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int store_port = ntohs(addr.sin_port);
  ::close(fd);
  v1::JobSpec spec;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(R"({
      "name": "real",
      "model": {"arch": "resnet20", "width_multiplier": 0.25},
      "dataset": {"kind": "DATASET_IDX", "max_train_examples": 256, "max_eval_examples": 128},
      "quantization": {"method": "METHOD_HLA"},
      "optimization": {"epochs": 1, "batch_size": 64},
      "resources": {"ranks": 2, "threads_per_rank": 1},
      "events": {"progress_every_steps": 1}})", &spec).ok());
  for (int rank : {0, 1}) {
    v1::AssignmentEvent a = MakeAssignment("job-real", rank, "real");
    *a.mutable_assignment()->mutable_spec() = spec;
    a.mutable_assignment()->set_rendezvous_host("127.0.0.1");
    a.mutable_assignment()->set_rendezvous_port(store_port);
    a.mutable_assignment()->set_checkpoint_dir(dir_ + "/real-ckpt");
    a.mutable_assignment()->set_artifact_path(dir_ + "/real.tern");
    fake_.Send(a);
  }
  ASSERT_TRUE(fake_.WaitFor(
      [&] {
        int n = 0;
        for (const auto& e : fake_.exits_) n += e.ref().job_id() == "job-real";
        return n == 2;
      },
      milliseconds(240000)));
  for (const auto& e : fake_.Locked([&] { return fake_.exits_; })) {
    EXPECT_EQ(e.exit_code(), 0) << e.reason();
  }
  bool finished = false, progressed = false, started = false;
  for (const auto& e : EventsOf("job-real")) {
    started |= e.has_started();
    if (e.has_progress()) {
      progressed = true;
      EXPECT_EQ(e.progress().epoch(), 1);
      EXPECT_EQ(e.progress().epochs(), 1);
    }
    if (e.has_finished()) {
      finished = true;
      EXPECT_EQ(e.finished().artifact_path(), dir_ + "/real.tern");
      EXPECT_TRUE(e.finished().has_ternary_top1());
    }
  }
  EXPECT_TRUE(started);
  EXPECT_TRUE(progressed);
  EXPECT_TRUE(finished);
  EXPECT_TRUE(fs::exists(dir_ + "/real.tern"));
}

TEST(AgentOptionsTest, ValidateNamesTheField) {
  AgentOptions o;
  o.agent_id = "bad id!";
  o.cpu_slots = 1;
  o.trainer_path = "/bin/true";
  o.workdir = "/tmp";
  EXPECT_NE(o.Validate().message().find("agent_id"), std::string::npos);
  o.agent_id = "ok-id";
  EXPECT_TRUE(o.Validate().ok());
  o.cpu_slots = 0;
  EXPECT_NE(o.Validate().message().find("slot"), std::string::npos);
  o.cpu_slots = 1;
  o.kill_grace = milliseconds(0);
  EXPECT_NE(o.Validate().message().find("kill_grace"), std::string::npos);
}

TEST(AgentOptionsTest, ConfineReadsRefusesSecretsTrainersCouldRead) {
  AgentOptions o;
  o.agent_id = "a";
  o.cpu_slots = 1;
  o.trainer_path = "/opt/tern/bin/tern-trainer";
  o.workdir = "/tmp";
  o.confine_reads = AgentOptions::ConfineReads::kOn;
  o.trainer_readable = {"/srv/python"};
  o.secret_files = {{"--tls-key", "/etc/tern/agent.key"}, {"--token-file", ""}};
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();  // /etc itself is not readable
  o.secret_files.push_back({"--token-file", "/srv/python/../python/token"});
  EXPECT_EQ(o.Validate().message(),
            "confine_reads: --token-file /srv/python/../python/token would be readable by every "
            "trainer (it lies beneath /srv/python); move it out of the trainers' readable paths");
  o.secret_files = {{"--tls-key", "/opt/tern/bin/agent.key"}};  // beside the trainer
  EXPECT_NE(o.Validate().message().find("beneath /opt"), std::string::npos) << o.Validate();
  o.secret_files = {{"--tls-key", "/srv/python-keys/agent.key"}};  // a sibling, not beneath
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
  o.confine_writes = AgentOptions::ConfineWrites::kOff;
  EXPECT_EQ(o.Validate().message(), "confine_reads: on needs confine_writes auto or on");
  o.confine_writes = AgentOptions::ConfineWrites::kAuto;
  o.trainer_readable = {"relative/dir"};
  EXPECT_NE(o.Validate().message().find("trainer_readable: must be absolute"), std::string::npos);
}

// tern-agent itself, as a process: its first stdout line names the metrics
// port, SIGTERM stops it cleanly, and SIGKILL leaves no trainer behind.
class AgentBinaryTest : public AgentTest {
 protected:
  void StartBinary(const std::string& shutdown_grace_s = "2") {
    ChildProcess::Options o;
    o.argv = {TERN_AGENT_BINARY, "--server", "127.0.0.1:" + std::to_string(port_),
              "--agent-id", "bin-agent", "--cpu-slots", "1", "--trainer", trainer_,
              "--workdir", options_.workdir, "--metrics-listen", "127.0.0.1:0",
              "--shutdown-grace", shutdown_grace_s};
    o.env = {"PATH=/usr/bin:/bin"};
    auto child = ChildProcess::Start(o);
    ASSERT_TRUE(child.ok()) << child.status();
    binary_ = std::move(child).value();
    // First stdout line: "tern-agent metrics on 127.0.0.1:PORT".
    std::string line;
    ASSERT_TRUE(WaitUntil([&] {
      char c;
      while (::read(binary_->stdout_fd(), &c, 1) == 1) {
        if (c == '\n') return true;
        line += c;
      }
      return false;
    })) << line;
    EXPECT_EQ(line.rfind("tern-agent metrics on 127.0.0.1:", 0), 0u) << line;
    EXPECT_GT(std::stoi(line.substr(line.rfind(':') + 1)), 0);
    ASSERT_TRUE(fake_.WaitFor([&] { return fake_.streams_opened_ > 0; }));
  }

  std::optional<ExitStatus> WaitBinary(milliseconds timeout) {
    std::optional<ExitStatus> s;
    WaitUntil([&] { return (s = binary_->TryWait()).has_value(); }, timeout);
    return s;
  }

  std::unique_ptr<ChildProcess> binary_;
};

TEST_F(AgentBinaryTest, ConfineReadsRefusesToStartWithASecretBesideTheTrainer) {
  // dir_ holds the fake trainer, so every confined trainer could read it.
  const std::string token = dir_ + "/metrics.token";
  ASSERT_TRUE(WriteFileAtomically(token, "not-a-real-token-0123456789abcdef\n").ok());
  ChildProcess::Options o;
  o.argv = {TERN_AGENT_BINARY, "--server", "127.0.0.1:" + std::to_string(port_),
            "--agent-id", "bin-agent", "--cpu-slots", "1", "--trainer", trainer_,
            "--workdir", options_.workdir, "--metrics-listen", "127.0.0.1:0",
            "--metrics-token-file", token, "--confine-reads", "on"};
  o.env = {"PATH=/usr/bin:/bin"};
  auto child = ChildProcess::Start(o);
  ASSERT_TRUE(child.ok()) << child.status();
  std::optional<ExitStatus> status;
  WaitUntil([&] { return (status = (*child)->TryWait()).has_value(); }, milliseconds(10000));
  std::string err;
  char buf[4096];
  for (ssize_t n; (n = ::read((*child)->stderr_fd(), buf, sizeof buf)) > 0;) err.append(buf, n);
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->exit_code, 2) << err;
  EXPECT_NE(err.find("confine_reads: --metrics-token-file " + token +
                     " would be readable by every trainer"),
            std::string::npos)
      << err;
  EXPECT_EQ(fake_.Locked([&] { return fake_.registrations_.size(); }), 0u);
}

TEST_F(AgentBinaryTest, SigtermStopsTrainersAndExitsZero) {
  StartBinary();
  fake_.Send(MakeAssignment("job-b", 0, "sleeper"));
  const pid_t pid = ReadPid(RankDir("job-b", 0) + "/pid");
  ASSERT_GT(pid, 0);
  ::kill(binary_->pid(), SIGTERM);
  const auto status = WaitBinary(milliseconds(8000));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->ok()) << status->ToString();
  EXPECT_FALSE(Alive(pid));
  const auto exit = WaitForExit("job-b", milliseconds(1000));
  ASSERT_TRUE(exit.has_value());
  EXPECT_TRUE(exit->killed_by_agent());
}

TEST_F(AgentBinaryTest, ASecondSigtermStopsTrainersWithoutWaitingForTheGrace) {
  StartBinary(/*shutdown_grace_s=*/"60");
  fake_.Send(MakeAssignment("job-i", 0, "stubborn"));  // ignores SIGUSR1 and SIGTERM
  const pid_t pid = ReadPid(RankDir("job-i", 0) + "/pid");
  ASSERT_GT(pid, 0);
  ::kill(binary_->pid(), SIGTERM);  // a drain: it would wait 60 s for this trainer
  ASSERT_TRUE(fake_.WaitFor([&] { return !fake_.calls_.empty(); }));  // Drain
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_TRUE(Alive(pid));
  ::kill(binary_->pid(), SIGTERM);  // SIGTERM to the trainer, SIGKILL a second later
  const auto status = WaitBinary(milliseconds(10000));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->ok()) << status->ToString();
  EXPECT_FALSE(Alive(pid));
  const auto exit = WaitForExit("job-i", milliseconds(1000));
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->signal(), SIGKILL);
}

TEST_F(AgentBinaryTest, TrainerDiesWhenTheAgentIsKilled) {
  StartBinary();
  fake_.Send(MakeAssignment("job-o", 0, "sleeper"));
  const pid_t pid = ReadPid(RankDir("job-o", 0) + "/pid");
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(Alive(pid));
  ::kill(binary_->pid(), SIGKILL);  // no chance to clean up: PR_SET_PDEATHSIG must
  ASSERT_TRUE(WaitBinary(milliseconds(5000)).has_value());
  EXPECT_TRUE(WaitUntil([&] { return !Alive(pid); }, milliseconds(3000)));
}

TEST_F(AgentBinaryTest, BadFlagsExitTwo) {
  ChildProcess::Options o;
  o.argv = {TERN_AGENT_BINARY, "--cpu-slots", "1", "--trainer", dir_ + "/missing"};
  auto child = ChildProcess::Start(o);
  ASSERT_TRUE(child.ok());
  binary_ = std::move(child).value();
  const auto status = WaitBinary(milliseconds(5000));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->exit_code, 2);
}

}  // namespace
}  // namespace tern::agent
