// Shared fixture of the server tests: a real Ternd on 127.0.0.1:0 (gRPC and
// /metrics) in a fresh temp dir, with stubs; every client call carries a
// deadline. Fast timings (50 ms ticks, 100 ms long-polls, no restart backoff)
// keep the tests quick without sleeping for fixed times: they poll with
// Eventually().
#ifndef TERN_TESTS_SERVER_TEST_UTIL_H_
#define TERN_TESTS_SERVER_TEST_UTIL_H_

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "google/api/field_behavior.pb.h"
#include "server/ternd.h"
#include "tern/v1/job_service.grpc.pb.h"
#include "tern/v1/worker_service.grpc.pb.h"

namespace tern::server::testing {

inline void SetDeadline(
    grpc::ClientContext* ctx,
    std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
}

// A complete, well-formed request of one RPC and how to make the call.
struct RequestCase {
  std::unique_ptr<google::protobuf::Message> request;
  std::function<grpc::Status(const google::protobuf::Message&)> call;
};

// For each method of `service`, in the service's order, whose request has
// fields annotated (google.api.field_behavior) = REQUIRED: `cases` (by method
// name) must hold it; its request without each such field must answer
// INVALID_ARGUMENT (with the message "<field>: required" when
// `exact_message`), the complete request anything else. Returns the number of
// fields checked.
inline int ExpectRequiredFieldsEnforced(const google::protobuf::ServiceDescriptor& service,
                                        const std::map<std::string, RequestCase>& cases,
                                        bool exact_message) {
  int checked = 0;
  for (int m = 0; m < service.method_count(); ++m) {
    const google::protobuf::MethodDescriptor* method = service.method(m);
    const google::protobuf::Descriptor* input = method->input_type();
    std::vector<const google::protobuf::FieldDescriptor*> required;
    for (int i = 0; i < input->field_count(); ++i) {
      const auto& options = input->field(i)->options();
      for (int j = 0; j < options.ExtensionSize(google::api::field_behavior); ++j) {
        if (options.GetExtension(google::api::field_behavior, j) == google::api::REQUIRED) {
          required.push_back(input->field(i));
        }
      }
    }
    if (required.empty()) continue;
    const auto it = cases.find(method->name());
    if (it == cases.end()) {
      ADD_FAILURE() << method->name() << " has REQUIRED fields: add a case for it to this test";
      continue;
    }
    for (const google::protobuf::FieldDescriptor* field : required) {
      std::unique_ptr<google::protobuf::Message> without(it->second.request->New());
      without->CopyFrom(*it->second.request);
      without->GetReflection()->ClearField(without.get(), field);
      const grpc::Status status = it->second.call(*without);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
          << method->name() << " without " << field->name() << ": " << status.error_message();
      if (exact_message) {
        EXPECT_EQ(status.error_message(), field->name() + ": required") << method->name();
      }
      ++checked;
    }
    const grpc::Status status = it->second.call(*it->second.request);
    EXPECT_NE(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << method->name() << " with every field: " << status.error_message();
  }
  return checked;
}

// Polls `condition` every 20 ms until it holds or `timeout` passes.
inline bool Eventually(
    const std::function<bool()>& condition,
    std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return condition();
}

// GET `path` over a plain socket; returns the whole response ("" on error).
inline std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = "GET " + path +
                                " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                "Connection: close\r\n\r\n";
    if (write(fd, request.data(), request.size()) ==
        static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      for (;;) {
        const ssize_t n = read(fd, buffer, sizeof(buffer));
        if (n <= 0) break;
        response.append(buffer, static_cast<size_t>(n));
      }
    }
  }
  close(fd);
  return response;
}

// A spec that passes validation: a tiny classification job.
inline v1::JobSpec ValidSpec(int ranks = 1) {
  v1::JobSpec spec;
  spec.set_name("test-job");
  spec.mutable_model()->set_arch("resnet20");
  spec.mutable_optimization()->set_epochs(1);
  spec.mutable_optimization()->set_batch_size(32);
  spec.mutable_resources()->set_ranks(ranks);
  spec.mutable_dataset()->set_max_train_examples(64);
  return spec;
}

class TerndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tern-server-test-" + std::to_string(getpid()) + "-" +
            std::to_string(counter_++));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    StartTernd();
  }

  void TearDown() override {
    StopTernd();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  virtual void Customize(TerndOptions* /*options*/) {}

  // Loopback on any ports, files in dir_, fast ticks; before Customize().
  TerndOptions TestOptions() const {
    TerndOptions options;
    options.listen = "127.0.0.1:0";
    options.metrics_listen = "127.0.0.1:0";
    options.db_path = (dir_ / "ternd.db").string();
    options.artifact_root = (dir_ / "artifacts").string();
    options.checkpoint_root = (dir_ / "checkpoints").string();
    options.tick_interval = std::chrono::milliseconds(50);
    options.long_poll = std::chrono::milliseconds(100);
    options.scheduler.restart_backoff = std::chrono::milliseconds(0);
    options.shutdown_grace = std::chrono::seconds(2);
    return options;
  }

  void StartTernd() {
    TerndOptions options = TestOptions();
    Customize(&options);
    auto ternd = Ternd::Start(options);
    ASSERT_TRUE(ternd.ok()) << ternd.status();
    ternd_ = std::move(ternd).value();
    channel_ = grpc::CreateChannel(ternd_->address(),
                                   grpc::InsecureChannelCredentials());
    jobs_ = v1::JobService::NewStub(channel_);
    workers_ = v1::WorkerService::NewStub(channel_);
  }

  void StopTernd() {
    jobs_.reset();
    workers_.reset();
    channel_.reset();
    ternd_.reset();
  }

  void RestartTernd() {
    StopTernd();
    StartTernd();
  }

  grpc::Status Submit(const v1::JobSpec& spec, v1::SubmitJobResponse* out,
                      const std::string& key = "",
                      const std::string& owner = "") {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    if (!owner.empty()) ctx.AddMetadata("x-tern-owner", owner);
    v1::SubmitJobRequest request;
    *request.mutable_spec() = spec;
    request.set_idempotency_key(key);
    return jobs_->SubmitJob(&ctx, request, out);
  }

  // Submits `spec` and returns the new job's id ("" on failure).
  std::string SubmitOk(const v1::JobSpec& spec) {
    v1::SubmitJobResponse response;
    const grpc::Status status = Submit(spec, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.job().id();
  }

  grpc::Status GetJob(const std::string& id, v1::Job* out) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::GetJobRequest request;
    request.set_job_id(id);
    return jobs_->GetJob(&ctx, request, out);
  }

  v1::Job GetJobOk(const std::string& id) {
    v1::Job job;
    const grpc::Status status = GetJob(id, &job);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return job;
  }

  grpc::Status Cancel(const std::string& id, v1::Job* out,
                      const std::string& reason = "") {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::CancelJobRequest request;
    request.set_job_id(id);
    request.set_reason(reason);
    return jobs_->CancelJob(&ctx, request, out);
  }

  // Every event of a WatchJob stream until it ends (or 10 s pass).
  grpc::Status Watch(const std::string& id, uint64_t from,
                     std::vector<v1::JobEvent>* events,
                     bool include_logs = false) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::WatchJobRequest request;
    request.set_job_id(id);
    request.set_from_sequence(from);
    request.set_include_logs(include_logs);
    auto reader = jobs_->WatchJob(&ctx, request);
    v1::JobEvent event;
    while (reader->Read(&event)) events->push_back(event);
    return reader->Finish();
  }

  // A job's events from its first, for a stream that stays open: reads until
  // `enough(events so far)` or the deadline, then cancels the stream.
  std::vector<v1::JobEvent> WatchUntil(
      const std::string& id, const std::function<bool(const std::vector<v1::JobEvent>&)>& enough,
      std::chrono::milliseconds deadline = std::chrono::seconds(2)) {
    std::vector<v1::JobEvent> events;
    grpc::ClientContext ctx;
    SetDeadline(&ctx, deadline);
    v1::WatchJobRequest request;
    request.set_job_id(id);
    auto reader = jobs_->WatchJob(&ctx, request);
    v1::JobEvent event;
    while (!enough(events) && reader->Read(&event)) events.push_back(event);
    ctx.TryCancel();
    reader->Finish();
    return events;
  }

  std::string Metrics() { return HttpGet(ternd_->metrics_port(), "/metrics"); }

  std::filesystem::path dir_;
  std::unique_ptr<Ternd> ternd_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::WorkerService::Stub> workers_;

 private:
  static inline int counter_ = 0;
};

}  // namespace tern::server::testing

#endif  // TERN_TESTS_SERVER_TEST_UTIL_H_
