// Two Ternd sharing one SQLite file and a FakeLeaderElection: one leads, the
// other is a standby that refuses calls naming the leader and takes over when
// the leader releases the lease; a leader that loses the lease stops serving
// and takes the exit path (TerndOptions::on_leadership_lost). Real gRPC over
// loopback, real HTTP for /readyz and /metrics.
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/server/fake_leader_election.h"
#include "tests/server/test_util.h"

namespace tern::server::testing {
namespace {

using std::chrono::milliseconds;

// The ErrorInfo and RetryInfo of a failed call.
struct Details {
  std::string reason;
  std::map<std::string, std::string> metadata;
  bool has_retry_info = false;
};

Details DetailsOf(const grpc::Status& status) {
  Details out;
  google::rpc::Status rpc;
  if (!rpc.ParseFromString(status.error_details())) return out;
  for (const google::protobuf::Any& any : rpc.details()) {
    google::rpc::ErrorInfo info;
    google::rpc::RetryInfo retry;
    if (any.UnpackTo(&info)) {
      out.reason = info.reason();
      out.metadata = {info.metadata().begin(), info.metadata().end()};
    } else if (any.UnpackTo(&retry)) {
      out.has_retry_info = true;
    }
  }
  return out;
}

class StandbyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tern-standby-test-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    for (auto& t : ternds_) t.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  TerndOptions Options(const std::string& id) {
    TerndOptions options;
    options.listen = "127.0.0.1:0";
    options.metrics_listen = "127.0.0.1:0";
    options.db_path = (dir_ / "ternd.db").string();                    // shared
    options.rendezvous_key_file = (dir_ / "rendezvous-key").string();  // shared
    options.artifact_root = (dir_ / "artifacts").string();
    options.checkpoint_root = (dir_ / "checkpoints").string();
    options.tick_interval = milliseconds(50);
    options.long_poll = milliseconds(100);
    options.shutdown_grace = milliseconds(500);
    options.election = &election_;
    options.holder_id = id;
    options.leader_lease_ttl = milliseconds(1500);
    options.standby_poll = milliseconds(50);
    return options;
  }

  std::unique_ptr<Ternd> StartOk(TerndOptions options) {
    auto ternd = Ternd::Start(std::move(options));
    EXPECT_TRUE(ternd.ok()) << ternd.status();
    return ternd.ok() ? std::move(ternd).value() : nullptr;
  }

  static std::unique_ptr<v1::JobService::Stub> Jobs(const Ternd& ternd) {
    return v1::JobService::NewStub(
        grpc::CreateChannel(ternd.address(), grpc::InsecureChannelCredentials()));
  }

  static grpc::Status GetJob(const Ternd& ternd, const std::string& id, v1::Job* job) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, std::chrono::seconds(5));
    v1::GetJobRequest request;
    request.set_job_id(id);
    return Jobs(ternd)->GetJob(&ctx, request, job);
  }

  static grpc::health::v1::HealthCheckResponse::ServingStatus Health(const Ternd& ternd,
                                                                     const std::string& service) {
    auto stub = grpc::health::v1::Health::NewStub(
        grpc::CreateChannel(ternd.address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    SetDeadline(&ctx, std::chrono::seconds(5));
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = stub->Check(&ctx, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.status();
  }

  static std::string Readyz(const Ternd& ternd) {
    const std::string response = HttpGet(ternd.metrics_port(), "/readyz");
    return response.substr(0, response.find("\r\n"));  // the status line
  }

  std::filesystem::path dir_;
  FakeLeaderElection election_;
  std::unique_ptr<Ternd> ternds_[2];
};

TEST_F(StandbyTest, StandbyNamesTheLeaderAndTakesOverWhenItShutsDown) {
  ternds_[0] = StartOk(Options("ternd-1"));
  ASSERT_NE(ternds_[0], nullptr);
  ASSERT_TRUE(Eventually([&] { return ternds_[0]->leading(); }, std::chrono::seconds(5)));
  ternds_[1] = StartOk(Options("ternd-2"));
  ASSERT_NE(ternds_[1], nullptr);
  Ternd& first = *ternds_[0];
  Ternd& second = *ternds_[1];
  EXPECT_EQ(first.leader_epoch(), 1);

  // The leader takes jobs.
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::SubmitJobRequest request;
    *request.mutable_spec() = ValidSpec();
    request.set_idempotency_key("standby-" + std::to_string(i));
    v1::SubmitJobResponse response;
    const grpc::Status status = Jobs(first)->SubmitJob(&ctx, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ids.push_back(response.job().id());
  }

  // The standby refuses JobService and WorkerService calls, naming the leader,
  // once it has asked the election (every 50 ms).
  ASSERT_TRUE(Eventually([&] {
    v1::Job job;
    const grpc::Status status = GetJob(second, ids[0], &job);
    return DetailsOf(status).metadata["leader_address"] == first.advertise_address();
  }));
  {
    v1::Job job;
    const grpc::Status status = GetJob(second, ids[0], &job);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    const Details details = DetailsOf(status);
    EXPECT_EQ(details.reason, "NOT_LEADER");
    EXPECT_EQ(details.metadata.at("leader_address"), first.address());
    EXPECT_TRUE(details.has_retry_info);
    EXPECT_NE(status.error_message().find(first.address()), std::string::npos)
        << status.error_message();
  }
  {
    auto workers = v1::WorkerService::NewStub(
        grpc::CreateChannel(second.address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::HeartbeatRequest request;
    request.set_agent_id("a");
    v1::HeartbeatResponse response;
    const grpc::Status status = workers->Heartbeat(&ctx, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(DetailsOf(status).reason, "NOT_LEADER");
  }
  // Ready (readiness probes) on the leader only; both alive.
  EXPECT_EQ(Readyz(first), "HTTP/1.1 200 OK");
  EXPECT_EQ(Readyz(second), "HTTP/1.1 503 Service Unavailable");
  EXPECT_EQ(HttpGet(second.metrics_port(), "/healthz").find("HTTP/1.1 200"), 0u);
  using grpc::health::v1::HealthCheckResponse;
  EXPECT_EQ(Health(first, "tern.v1.JobService"), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health(second, "tern.v1.JobService"), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Health(second, ""), HealthCheckResponse::SERVING);
  const std::string leader_metrics = HttpGet(first.metrics_port(), "/metrics");
  const std::string standby_metrics = HttpGet(second.metrics_port(), "/metrics");
  EXPECT_NE(leader_metrics.find("\ntern_leader 1\n"), std::string::npos);
  EXPECT_NE(leader_metrics.find("\ntern_leader_epoch 1\n"), std::string::npos);
  EXPECT_NE(standby_metrics.find("\ntern_leader 0\n"), std::string::npos);

  // A clean shutdown releases the lease: the standby leads within a second
  // (50 ms polls), with the jobs the first one acknowledged.
  const std::string second_address = second.address();
  ternds_[0].reset();
  EXPECT_EQ(election_.release_calls(), 1);
  const auto released = std::chrono::steady_clock::now();
  ASSERT_TRUE(Eventually([&] { return second.leading(); }, std::chrono::seconds(1)));
  EXPECT_LT(std::chrono::steady_clock::now() - released, std::chrono::seconds(1));
  EXPECT_EQ(second.leader_epoch(), 2);
  EXPECT_EQ(second.address(), second_address);  // same port
  for (const std::string& id : ids) {
    v1::Job job;
    const grpc::Status status = GetJob(second, id, &job);
    ASSERT_TRUE(status.ok()) << id << ": " << status.error_message();
    EXPECT_EQ(job.id(), id);
  }
  EXPECT_EQ(Readyz(second), "HTTP/1.1 200 OK");
  EXPECT_EQ(Health(second, "tern.v1.JobService"), HealthCheckResponse::SERVING);
  // A retried submission finds the job the first leader made.
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::SubmitJobRequest request;
    *request.mutable_spec() = ValidSpec();
    request.set_idempotency_key("standby-1");
    v1::SubmitJobResponse response;
    ASSERT_TRUE(Jobs(second)->SubmitJob(&ctx, request, &response).ok());
    EXPECT_FALSE(response.created());
    EXPECT_EQ(response.job().id(), ids[1]);
  }
}

TEST_F(StandbyTest, ALeaderThatLosesTheLeaseStopsServingAndExits) {
  std::atomic<int> exits{0};
  TerndOptions options = Options("ternd-1");
  options.on_leadership_lost = [&] { ++exits; };
  ternds_[0] = StartOk(options);
  ASSERT_NE(ternds_[0], nullptr);
  Ternd& ternd = *ternds_[0];
  ASSERT_TRUE(Eventually([&] { return ternd.leading(); }, std::chrono::seconds(5)));
  v1::Job job;
  EXPECT_EQ(GetJob(ternd, "1", &job).error_code(), grpc::StatusCode::NOT_FOUND);

  // Another process takes the lease: the next Renew (every 500 ms) is ABORTED.
  election_.TakeOver("elsewhere", "10.0.0.9:7070");
  ASSERT_TRUE(Eventually([&] { return exits.load() > 0; }, std::chrono::seconds(3)));
  EXPECT_EQ(exits.load(), 1);
  EXPECT_FALSE(ternd.leading());
  const grpc::Status status = GetJob(ternd, "1", &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(DetailsOf(status).reason, "LEADERSHIP_LOST");
  EXPECT_EQ(Readyz(ternd), "HTTP/1.1 503 Service Unavailable");
  EXPECT_NE(HttpGet(ternd.metrics_port(), "/metrics").find("\ntern_leader 0\n"), std::string::npos);
  // Shutting down does not release a lease that is not its own any more.
  ternds_[0].reset();
  EXPECT_EQ(election_.release_calls(), 0);
}

TEST_F(StandbyTest, ALeaderThatCannotRenewForATtlStops) {
  std::atomic<int> exits{0};
  TerndOptions options = Options("ternd-1");
  options.on_leadership_lost = [&] { ++exits; };
  ternds_[0] = StartOk(options);
  ASSERT_NE(ternds_[0], nullptr);
  ASSERT_TRUE(Eventually([&] { return ternds_[0]->leading(); }, std::chrono::seconds(5)));
  // The store cannot be reached: after a whole TTL (1.5 s) without a
  // renewal another ternd may lead, so this one stops.
  const auto start = std::chrono::steady_clock::now();
  election_.FailRenewals(UnavailableError("connection refused"));
  ASSERT_TRUE(Eventually([&] { return exits.load() > 0; }, std::chrono::seconds(4)));
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(900));
  EXPECT_FALSE(ternds_[0]->leading());
}

TEST_F(StandbyTest, OptionsNeedAnAdvertisedAddressAndASharedKey) {
  TerndOptions options = Options("ternd-1");
  options.listen = "0.0.0.0:0";
  Status status = options.Validate();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("advertise_address"), std::string::npos) << status;
  options.advertise_address = "ternd-0.ternd:7070";
  EXPECT_TRUE(options.Validate().ok()) << options.Validate();
  options.rendezvous_key_file.clear();
  status = options.Validate();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("rendezvous_key_file"), std::string::npos) << status;
  options = Options("ternd-1");
  options.advertise_address = "0.0.0.0:7070";
  EXPECT_EQ(options.Validate().code(), StatusCode::kInvalidArgument);
  // Without an election nothing of this is needed.
  options = Options("ternd-1");
  options.election = nullptr;
  options.listen = "0.0.0.0:0";
  options.rendezvous_key_file.clear();
  EXPECT_TRUE(options.Validate().ok());
}

}  // namespace
}  // namespace tern::server::testing
