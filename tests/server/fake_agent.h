// A tern-agent played by a server test through the WorkerService stub
// (register, assignments, trainer JSON lines, exits), and trainer lines as
// worker/trainer/trainer.cc writes them.
#ifndef TERN_TESTS_SERVER_FAKE_AGENT_H_
#define TERN_TESTS_SERVER_FAKE_AGENT_H_

#include <grpcpp/grpcpp.h>

#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tern/v1/worker_service.grpc.pb.h"
#include "tests/server/test_util.h"

namespace tern::server::testing {

// An agent played by the test.
class FakeAgent {
 public:
  FakeAgent(v1::WorkerService::Stub* stub, std::string id, int cpu_slots)
      : stub_(stub), id_(std::move(id)), slots_(cpu_slots) {}
  ~FakeAgent() { StopStream(); }

  // `running`: the trainers a rejoining agent still runs.
  grpc::Status Register(const std::vector<v1::RankRef>& running = {}) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::RegisterRequest request;
    request.set_agent_id(id_);
    request.set_host("127.0.0.1");
    request.set_version("test");
    for (const v1::RankRef& ref : running) *request.add_running() = ref;
    v1::Slots* slots = request.add_slots();
    slots->set_device_kind(v1::DEVICE_CPU);
    slots->set_count(slots_);
    v1::RegisterResponse response;
    grpc::Status status = stub_->Register(&ctx, request, &response);
    lease_id_ = response.lease_id();
    register_response_ = response;
    return status;
  }

  void StartStream() {
    stream_ = std::thread([this] {
      v1::StreamAssignmentsRequest request;
      request.set_agent_id(id_);
      request.set_lease_id(lease_id_);
      SetDeadline(&stream_ctx_, std::chrono::seconds(60));
      auto reader = stub_->StreamAssignments(&stream_ctx_, request);
      v1::AssignmentEvent event;
      while (reader->Read(&event)) {
        std::lock_guard<std::mutex> lock(mu_);
        events_.push_back(event);
      }
      const grpc::Status status = reader->Finish();
      std::lock_guard<std::mutex> lock(mu_);
      stream_status_ = status;
      stream_done_ = true;
    });
  }

  void StopStream() {
    if (!stream_.joinable()) return;
    stream_ctx_.TryCancel();
    stream_.join();
  }

  std::vector<v1::AssignmentEvent> Events() {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }
  bool WaitForEvents(size_t n) {
    return Eventually([&] { return Events().size() >= n; });
  }
  bool StreamDone(grpc::Status* status) {
    std::lock_guard<std::mutex> lock(mu_);
    *status = stream_status_;
    return stream_done_;
  }

  grpc::Status Report(const v1::RankRef& ref, const std::vector<std::string>& lines,
                      const std::vector<std::string>& stderr_lines = {}) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::ReportProgressRequest request;
    request.set_agent_id(id_);
    request.set_lease_id(lease_id_);
    *request.mutable_ref() = ref;
    for (const std::string& line : lines) {
      request.add_events()->set_json_line(line);
    }
    for (const std::string& text : stderr_lines) {
      v1::LogLine* log = request.add_events()->mutable_log();
      log->set_rank(ref.rank());
      log->set_text(text);
    }
    v1::ReportProgressResponse response;
    return stub_->ReportProgress(&ctx, request, &response);
  }

  grpc::Status Exit(const v1::RankRef& ref, int exit_code, int signal = 0,
                    bool killed_by_agent = false, const std::string& failure_code = "",
                    bool preempted = false, const std::string& reason = "") {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::ReportExitRequest request;
    request.set_agent_id(id_);
    request.set_lease_id(lease_id_);
    *request.mutable_ref() = ref;
    request.set_exit_code(exit_code);
    request.set_signal(signal);
    request.set_killed_by_agent(killed_by_agent);
    request.set_failure_code(failure_code);
    request.set_preempted(preempted);
    request.set_reason(reason);
    v1::ReportExitResponse response;
    return stub_->ReportExit(&ctx, request, &response);
  }

  grpc::Status Drain() {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::DrainRequest request;
    request.set_agent_id(id_);
    request.set_lease_id(lease_id_);
    v1::DrainResponse response;
    return stub_->Drain(&ctx, request, &response);
  }

  grpc::Status Deregister() {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::DeregisterRequest request;
    request.set_agent_id(id_);
    request.set_lease_id(lease_id_);
    v1::DeregisterResponse response;
    return stub_->Deregister(&ctx, request, &response);
  }

  grpc::Status Heartbeat(const std::vector<v1::RankRef>& running, v1::HeartbeatResponse* response) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::HeartbeatRequest request;
    request.set_agent_id(id_);
    request.set_lease_id(lease_id_);
    for (const v1::RankRef& ref : running) *request.add_running() = ref;
    return stub_->Heartbeat(&ctx, request, response);
  }

  std::string lease_id_;
  v1::RegisterResponse register_response_;

 private:
  v1::WorkerService::Stub* stub_;
  const std::string id_;
  const int slots_;
  std::thread stream_;
  grpc::ClientContext stream_ctx_;
  std::mutex mu_;
  std::vector<v1::AssignmentEvent> events_;
  grpc::Status stream_status_;
  bool stream_done_ = false;
};

// Trainer lines as worker/trainer/trainer.cc writes them.
inline std::string Line(const std::string& event, int rank, const std::string& rest) {
  return "{\"event\":\"" + event + "\",\"job\":\"test-job\",\"rank\":" + std::to_string(rank) +
         ",\"world_size\":2,\"time\":1.7e9" + (rest.empty() ? "" : "," + rest) + "}";
}

inline const char kLayers[] =
    "\"layers\":[{\"name\":\"conv1.weight\",\"quantized\":false,\"numel\":432,"
    "\"sparsity\":0,\"alpha\":0,\"delta\":0,\"cos_wt\":1,\"flips\":0,"
    "\"flips_per_step\":0},{\"name\":\"layer1.0.conv1.weight\",\"quantized\":"
    "true,\"numel\":1000,\"sparsity\":0.4,\"alpha\":0.05,\"delta\":0.02,"
    "\"cos_wt\":0.9,\"flips\":60,\"flips_per_step\":3}]";

}  // namespace tern::server::testing

#endif  // TERN_TESTS_SERVER_FAKE_AGENT_H_
