// ServerList over real gRPC on loopback: a standby (ternd's own
// StandbyService answering NOT_LEADER) and a leader (a JobService that
// answers WhoAmI); the client must end on the leader whichever address it
// starts with, skip a dead address, and never spin while nobody leads.
#include "failover/server_list.h"

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "server/rpc.h"
#include "server/standby_service.h"
#include "tern/v1/job_service.grpc.pb.h"

namespace tern::failover {
namespace {

using std::chrono::milliseconds;

class Leader final : public v1::JobService::Service {
 public:
  grpc::Status WhoAmI(grpc::ServerContext*, const v1::WhoAmIRequest*,
                      v1::WhoAmIResponse* response) override {
    ++calls;
    response->set_name("leader");
    return grpc::Status::OK;
  }
  std::atomic<int> calls{0};
};

// A standby whose refusal names `leader` (settable), counting calls.
class Standby {
 public:
  Standby()
      : service_([this] {
          ++calls;
          std::lock_guard<std::mutex> lock(mu_);
          return server::NotLeaderError(address, leader_);
        }) {}
  void Start() {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterCallbackGenericService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address = "127.0.0.1:" + std::to_string(port);
  }
  void SetLeader(const std::string& leader) {
    std::lock_guard<std::mutex> lock(mu_);
    leader_ = leader;
  }
  ~Standby() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }
  std::string address;
  std::atomic<int> calls{0};

 private:
  std::mutex mu_;
  std::string leader_;
  server::StandbyService service_;
  std::unique_ptr<grpc::Server> server_;
};

class ServerListTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&leader_);
    leader_server_ = builder.BuildAndStart();
    ASSERT_NE(leader_server_, nullptr);
    leader_address_ = "127.0.0.1:" + std::to_string(port);
    standby_.Start();
    standby_.SetLeader(leader_address_);
    // A port nothing listens on: bound once, then closed.
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    close(fd);
    dead_address_ = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  }
  void TearDown() override { leader_server_->Shutdown(std::chrono::system_clock::now()); }

  static std::shared_ptr<ServerList> List(const std::vector<std::string>& addresses) {
    StatusOr<std::shared_ptr<ServerList>> list =
        ServerList::Create(addresses, [](const std::string& address) {
          return StatusOr<std::shared_ptr<grpc::Channel>>(
              grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
        });
    EXPECT_TRUE(list.ok()) << list.status();
    return *list;
  }

  // WhoAmI through `list`, retried within `timeout`.
  static grpc::Status WhoAmI(ServerList& list, v1::WhoAmIResponse* response,
                             milliseconds timeout = milliseconds(5000)) {
    const auto deadline = std::chrono::system_clock::now() + timeout;
    return list.Run(deadline, [&](const ServerList::Target& target) {
      grpc::ClientContext ctx;
      ctx.set_deadline(deadline);
      return v1::JobService::NewStub(target.channel)->WhoAmI(&ctx, v1::WhoAmIRequest(), response);
    });
  }

  Leader leader_;
  std::unique_ptr<grpc::Server> leader_server_;
  std::string leader_address_;
  std::string dead_address_;
  Standby standby_;
};

TEST(ParseServerAddressesTest, ParsesAListAndRejectsEmptyEntries) {
  StatusOr<std::vector<std::string>> one = ParseServerAddresses("--server", "a:1");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(*one, std::vector<std::string>{"a:1"});
  StatusOr<std::vector<std::string>> many =
      ParseServerAddresses("--server", "a:1, b:2 ,a:1,[::1]:3");
  ASSERT_TRUE(many.ok()) << many.status();
  EXPECT_EQ(*many, (std::vector<std::string>{"a:1", "b:2", "[::1]:3"}));
  for (const char* bad : {"", "a:1,", ",a:1", "a:1,,b:2", "a", "a:"}) {
    const Status status = ParseServerAddresses("--server", bad).status();
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(status.message().find("--server"), std::string::npos) << status;
  }
}

TEST_F(ServerListTest, AStandbyNamingTheLeaderSendsTheClientThere) {
  std::shared_ptr<ServerList> list = List({standby_.address, leader_address_});
  v1::WhoAmIResponse response;
  const grpc::Status status = WhoAmI(*list, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.name(), "leader");
  EXPECT_EQ(standby_.calls.load(), 1);
  EXPECT_EQ(list->Current().index, 1u);
  // And it stays there.
  ASSERT_TRUE(WhoAmI(*list, &response).ok());
  EXPECT_EQ(standby_.calls.load(), 1);
  EXPECT_EQ(leader_.calls.load(), 2);
}

TEST_F(ServerListTest, FollowsTheNamedLeaderPastOtherAddresses) {
  // The leader is third; the standby names it, so the dead one is skipped.
  std::shared_ptr<ServerList> list = List({standby_.address, dead_address_, leader_address_});
  v1::WhoAmIResponse response;
  ASSERT_TRUE(WhoAmI(*list, &response).ok());
  EXPECT_EQ(list->Current().index, 2u);
}

TEST_F(ServerListTest, AnUnreachableAddressIsSkipped) {
  std::shared_ptr<ServerList> list = List({dead_address_, leader_address_});
  v1::WhoAmIResponse response;
  const grpc::Status status = WhoAmI(*list, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(list->Current().index, 1u);
}

TEST_F(ServerListTest, ALeaderAddressNotInTheListIsNotCalled) {
  standby_.SetLeader("10.255.255.1:7070");  // not given to the client
  std::shared_ptr<ServerList> list = List({standby_.address, leader_address_});
  v1::WhoAmIResponse response;
  ASSERT_TRUE(WhoAmI(*list, &response).ok());
  EXPECT_EQ(list->Current().index, 1u);
}

TEST_F(ServerListTest, WhileNobodyLeadsItBacksOffUntilTheDeadline) {
  standby_.SetLeader("");
  std::shared_ptr<ServerList> list = List({standby_.address, dead_address_});
  v1::WhoAmIResponse response;
  const auto start = std::chrono::steady_clock::now();
  const grpc::Status status = WhoAmI(*list, &response, milliseconds(1500));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(2500));
  // 100, 200, 400, 800 ms between rounds: a handful of calls, not thousands.
  EXPECT_GE(standby_.calls.load(), 2);
  EXPECT_LE(standby_.calls.load(), 6);
}

TEST_F(ServerListTest, OneAddressKeepsTheCallersOwnRetriesForPlainFailures) {
  std::shared_ptr<ServerList> list = List({dead_address_});
  const ServerList::Target target = list->Current();
  EXPECT_FALSE(list->OnFailure(target, grpc::Status(grpc::StatusCode::UNAVAILABLE, "refused")));
  EXPECT_FALSE(list->OnFailure(target, grpc::Status(grpc::StatusCode::NOT_FOUND, "no")));
  // NOT_LEADER is retried there, after a delay (a load balancer moves on).
  const grpc::Status not_leader = server::ToGrpcStatus(server::NotLeaderError("x:1", ""));
  const std::optional<milliseconds> wait = list->OnFailure(target, not_leader);
  ASSERT_TRUE(wait);
  EXPECT_GE(*wait, milliseconds(100));
  EXPECT_TRUE(LeaderHintOf(not_leader).not_leader);
  // After a NOT_LEADER a refused connection is the standby handing its port
  // to its leading server: retried too, after growing delays, until a call
  // succeeds; then plain failures are the caller's again.
  const grpc::Status refused(grpc::StatusCode::UNAVAILABLE, "refused");
  const std::optional<milliseconds> first = list->OnFailure(target, refused);
  ASSERT_TRUE(first);
  const std::optional<milliseconds> second = list->OnFailure(target, refused);
  ASSERT_TRUE(second);
  EXPECT_GE(*second, *first);
  EXPECT_FALSE(list->OnFailure(target, grpc::Status(grpc::StatusCode::NOT_FOUND, "no")));
  list->OnSuccess(target);
  EXPECT_FALSE(list->OnFailure(target, refused));
}

// A single-address call that meets a standby, then the port handed to its
// leading server (refused for a moment), then the leader: one Run() call
// rides through all three.
TEST_F(ServerListTest, OneAddressRidesThroughATakeover) {
  std::shared_ptr<ServerList> list = List({dead_address_});
  std::vector<grpc::Status> answers = {
      server::ToGrpcStatus(server::NotLeaderError("x:1", "")),
      grpc::Status(grpc::StatusCode::UNAVAILABLE, "failed to connect: Connection refused"),
      grpc::Status(grpc::StatusCode::UNAVAILABLE, "failed to connect: Connection refused"),
      grpc::Status::OK};
  size_t calls = 0;
  const grpc::Status status =
      list->Run(std::chrono::system_clock::now() + std::chrono::seconds(10),
                [&](const ServerList::Target&) { return answers[std::min(calls++, size_t{3})]; });
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(calls, 4u);
  // Without the NOT_LEADER first, a refused connection ends the call at once.
  calls = 1;
  const grpc::Status plain = list->Run(std::chrono::system_clock::now() + std::chrono::seconds(10),
                                       [&](const ServerList::Target&) { return answers[calls++]; });
  EXPECT_EQ(plain.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(calls, 2u);
}

}  // namespace
}  // namespace tern::failover
