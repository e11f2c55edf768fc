// The web console's JSON API (server/web_api.h) over real HTTP on loopback,
// against an in-process ternd with bearer tokens (--token-file, which needs
// TLS on the gRPC port: test certificates from tests/auth/make_test_certs.sh).
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
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common/sha256.h"
#include "server/ternd.h"
#include "tern/v1/job_service.grpc.pb.h"

namespace tern::server {
namespace {

const std::string kAliceToken = "tern_alice-token-0123456789abcdef";
const std::string kBobToken = "tern_bob-token-0123456789abcdef";
const std::string kAdminToken = "tern_admin-token-0123456789abcdef";

struct HttpReply {
  int status = 0;
  std::string headers;
  std::string body;
};

// GET `path` with an optional Authorization header over a plain socket.
HttpReply Get(int port, const std::string& path, const std::string& authorization = "") {
  HttpReply reply;
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return reply;
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    std::string request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
    if (!authorization.empty()) request += "Authorization: " + authorization + "\r\n";
    request += "\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      for (;;) {
        const ssize_t n = read(fd, buffer, sizeof(buffer));
        if (n <= 0) break;
        response.append(buffer, static_cast<size_t>(n));
      }
    }
  }
  close(fd);
  const size_t end = response.find("\r\n\r\n");
  if (response.size() < 12 || end == std::string::npos) return reply;
  reply.status = std::stoi(response.substr(9, 3));
  reply.headers = response.substr(0, end);
  reply.body = response.substr(end + 4);
  return reply;
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class WebApiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    certs_ = new std::filesystem::path(std::filesystem::temp_directory_path() /
                                       ("tern-web-certs-" + std::to_string(getpid())));
    certs_ok_ = std::system(("bash " TERN_MAKE_TEST_CERTS " " + certs_->string()).c_str()) == 0;
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    std::filesystem::remove_all(*certs_, ec);
    delete certs_;
  }

  void SetUp() override {
    ASSERT_TRUE(certs_ok_) << "make_test_certs.sh failed";
    dir_ = std::filesystem::temp_directory_path() /
           ("tern-web-test-" + std::to_string(getpid()) + "-" + std::to_string(counter_++));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    const std::filesystem::path tokens = dir_ / "tokens";
    {
      std::ofstream out(tokens);
      out << "sha256:" << Sha256Hex(kAliceToken) << " alice\n"
          << "sha256:" << Sha256Hex(kBobToken) << " bob\n"
          << "sha256:" << Sha256Hex(kAdminToken) << " root admin\n";
    }
    std::filesystem::permissions(
        tokens, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    TerndOptions options;
    options.listen = "127.0.0.1:0";
    options.metrics_listen = "";
    options.web_listen = "127.0.0.1:0";
    options.db_path = (dir_ / "ternd.db").string();
    options.artifact_root = (dir_ / "artifacts").string();
    options.checkpoint_root = (dir_ / "checkpoints").string();
    options.tick_interval = std::chrono::milliseconds(50);
    options.shutdown_grace = std::chrono::seconds(2);
    options.tls.cert_file = (*certs_ / "server.pem").string();
    options.tls.key_file = (*certs_ / "server.key").string();
    options.token_file = tokens.string();
    auto ternd = Ternd::Start(options);
    ASSERT_TRUE(ternd.ok()) << ternd.status();
    ternd_ = std::move(ternd).value();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ReadFile(*certs_ / "ca.pem");
    jobs_ =
        v1::JobService::NewStub(grpc::CreateChannel(ternd_->address(), grpc::SslCredentials(ssl)));
  }

  void TearDown() override {
    jobs_.reset();
    ternd_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // Submits a tiny job as the owner of `token` over gRPC; returns its id.
  std::string Submit(const std::string& token, const std::string& name) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    context.AddMetadata("authorization", "Bearer " + token);
    v1::SubmitJobRequest request;
    v1::JobSpec* spec = request.mutable_spec();
    spec->set_name(name);
    spec->mutable_model()->set_arch("resnet20");
    spec->mutable_optimization()->set_epochs(1);
    spec->mutable_optimization()->set_batch_size(32);
    spec->mutable_resources()->set_ranks(1);
    spec->mutable_dataset()->set_max_train_examples(64);
    v1::SubmitJobResponse response;
    const grpc::Status status = jobs_->SubmitJob(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.job().id();
  }

  int port() const { return ternd_->web_port(); }

  static inline std::filesystem::path* certs_ = nullptr;
  static inline bool certs_ok_ = false;
  static inline int counter_ = 0;
  std::filesystem::path dir_;
  std::unique_ptr<Ternd> ternd_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
};

TEST_F(WebApiTest, EveryApiPathWithoutAValidTokenIs401WithNothingElse) {
  const std::string id = Submit(kAliceToken, "secret-name");
  const std::vector<std::string> paths = {"/api/v1/jobs", "/api/v1/jobs/" + id, "/api/v1/whoami",
                                          "/api/v1/agents", "/api/v1/jobs/" + id + "/events"};
  for (const std::string& path : paths) {
    for (const std::string authorization : {"", "Bearer wrong-token", "Basic abc"}) {
      const HttpReply reply = Get(port(), path, authorization);
      EXPECT_EQ(reply.status, 401) << path << " with '" << authorization << "'";
      EXPECT_EQ(reply.body.find("secret-name"), std::string::npos) << reply.body;
      EXPECT_EQ(reply.body.find("\"jobs\""), std::string::npos) << reply.body;
      EXPECT_NE(reply.body.find("UNAUTHENTICATED"), std::string::npos) << reply.body;
      EXPECT_NE(reply.headers.find("WWW-Authenticate: Bearer"), std::string::npos);
    }
  }
}

TEST_F(WebApiTest, StaticFilesNeedNoTokenAndCarryNoData) {
  const std::string id = Submit(kAliceToken, "secret-name");
  const HttpReply index = Get(port(), "/");
  EXPECT_EQ(index.status, 200);
  EXPECT_NE(index.headers.find("text/html"), std::string::npos) << index.headers;
  EXPECT_NE(index.body.find("app.js"), std::string::npos);
  EXPECT_NE(index.headers.find("Content-Security-Policy"), std::string::npos);
  const HttpReply app = Get(port(), "/app.js");
  EXPECT_EQ(app.status, 200);
  EXPECT_NE(app.headers.find("text/javascript"), std::string::npos) << app.headers;
  EXPECT_EQ(app.body.find("secret-name"), std::string::npos);
  EXPECT_EQ(Get(port(), "/vendor/uPlot.esm.js").status, 200);
  EXPECT_EQ(Get(port(), "/no-such-file.js").status, 404);
  // The metrics are not served here (they have their own endpoint).
  EXPECT_EQ(Get(port(), "/metrics").status, 404);
}

TEST_F(WebApiTest, OwnersSeeOnlyTheirJobsAndAdminsAll) {
  const std::string alice_job = Submit(kAliceToken, "alice-job");
  const std::string bob_job = Submit(kBobToken, "bob-job");

  const HttpReply alice = Get(port(), "/api/v1/jobs", "Bearer " + kAliceToken);
  ASSERT_EQ(alice.status, 200) << alice.body;
  EXPECT_NE(alice.headers.find("application/json"), std::string::npos);
  EXPECT_NE(alice.body.find("\"id\":\"" + alice_job + "\""), std::string::npos) << alice.body;
  EXPECT_EQ(alice.body.find("bob-job"), std::string::npos) << alice.body;

  const HttpReply root = Get(port(), "/api/v1/jobs", "Bearer " + kAdminToken);
  ASSERT_EQ(root.status, 200) << root.body;
  EXPECT_NE(root.body.find("alice-job"), std::string::npos);
  EXPECT_NE(root.body.find("bob-job"), std::string::npos);

  // Filters reach ListJobs: alice asking for bob's jobs is refused.
  EXPECT_EQ(Get(port(), "/api/v1/jobs?owner=bob", "Bearer " + kAliceToken).status, 403);
  const HttpReply queued =
      Get(port(), "/api/v1/jobs?state=QUEUED&state=JOB_STATE_RUNNING", "Bearer " + kAdminToken);
  ASSERT_EQ(queued.status, 200) << queued.body;
  EXPECT_NE(queued.body.find("bob-job"), std::string::npos);
  const HttpReply succeeded = Get(port(), "/api/v1/jobs?state=succeeded", "Bearer " + kAdminToken);
  ASSERT_EQ(succeeded.status, 200) << succeeded.body;
  EXPECT_EQ(succeeded.body.find("bob-job"), std::string::npos) << succeeded.body;

  const HttpReply own = Get(port(), "/api/v1/jobs/" + alice_job, "Bearer " + kAliceToken);
  ASSERT_EQ(own.status, 200) << own.body;
  EXPECT_NE(own.body.find("\"state\":\"JOB_STATE_QUEUED\""), std::string::npos) << own.body;
  EXPECT_NE(own.body.find("\"owner\":\"alice\""), std::string::npos) << own.body;

  const HttpReply whoami = Get(port(), "/api/v1/whoami", "Bearer " + kAliceToken);
  ASSERT_EQ(whoami.status, 200);
  EXPECT_NE(whoami.body.find("\"name\":\"alice\""), std::string::npos) << whoami.body;

  const HttpReply events =
      Get(port(), "/api/v1/jobs/" + alice_job + "/events?after=0", "Bearer " + kAliceToken);
  ASSERT_EQ(events.status, 200) << events.body;
  EXPECT_NE(events.body.find("\"sequence\":\"1\""), std::string::npos) << events.body;
  EXPECT_NE(events.body.find("\"more\":false"), std::string::npos) << events.body;
  const HttpReply later =
      Get(port(), "/api/v1/jobs/" + alice_job + "/events?after=1000", "Bearer " + kAliceToken);
  ASSERT_EQ(later.status, 200) << later.body;
  EXPECT_NE(later.body.find("{\"events\":[],"), std::string::npos) << later.body;

  EXPECT_EQ(Get(port(), "/api/v1/agents", "Bearer " + kAliceToken).status, 200);
}

TEST_F(WebApiTest, AnotherOwnersJobAnswersExactlyLikeAnAbsentOne) {
  const std::string bob_job = Submit(kBobToken, "bob-job");
  const std::string absent = "987654";
  for (const std::string suffix : {"", "/events", "/artifact", "/inspect"}) {
    const HttpReply other =
        Get(port(), "/api/v1/jobs/" + bob_job + suffix, "Bearer " + kAliceToken);
    const HttpReply missing =
        Get(port(), "/api/v1/jobs/" + absent + suffix, "Bearer " + kAliceToken);
    EXPECT_EQ(other.status, 404) << suffix << ": " << other.body;
    EXPECT_EQ(missing.status, 404) << suffix << ": " << missing.body;
    EXPECT_EQ(other.body.find("bob"), std::string::npos) << other.body;
    // The same words but for the id itself.
    std::string other_body = other.body, missing_body = missing.body;
    other_body.replace(other_body.find(bob_job), bob_job.size(), "ID");
    missing_body.replace(missing_body.find(absent), absent.size(), "ID");
    EXPECT_EQ(other_body, missing_body);
  }
  EXPECT_EQ(Get(port(), "/api/v1/jobs/" + bob_job, "Bearer " + kBobToken).status, 200);
}

TEST_F(WebApiTest, BadQueryParametersAre400NamingTheParameter) {
  const std::string id = Submit(kAliceToken, "a");
  const std::string alice = "Bearer " + kAliceToken;
  struct Case {
    std::string path, names;
  };
  for (const Case& c :
       std::initializer_list<Case>{{"/api/v1/jobs?state=SLEEPING", "state"},
                                   {"/api/v1/jobs?page_size=-1", "page_size"},
                                   {"/api/v1/jobs?page_size=abc", "page_size"},
                                   {"/api/v1/jobs?page_size=100000", "page_size"},
                                   {"/api/v1/jobs?label=novalue", "label"},
                                   {"/api/v1/jobs?colour=red", "colour"},
                                   {"/api/v1/jobs?owner=%zz", "owner"},
                                   {"/api/v1/jobs?owner=%ff", "owner"},
                                   {"/api/v1/jobs?label=k%3D%c0%af", "label"},
                                   {"/api/v1/jobs/" + id + "/events?after=x", "after"},
                                   {"/api/v1/jobs/" + id + "/events?after=-3", "after"},
                                   {"/api/v1/jobs/" + id + "?verbose=1", "verbose"},
                                   {"/api/v1/whoami?x=1", "x"}}) {
    const HttpReply reply = Get(port(), c.path, alice);
    EXPECT_EQ(reply.status, 400) << c.path << ": " << reply.body;
    EXPECT_NE(reply.body.find("query parameter " + c.names), std::string::npos)
        << c.path << ": " << reply.body;
  }
  EXPECT_EQ(Get(port(), "/api/v1/jobs?page_token=garbage", alice).status, 400);
  EXPECT_EQ(Get(port(), "/api/v1/nothing", alice).status, 404);
  EXPECT_EQ(Get(port(), "/api/v2/jobs", alice).status, 404);
}

// Without --token-file the console is open, like the gRPC API then.
TEST(WebOpenTest, WithoutTokensEveryCallerSeesEveryJob) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("tern-web-open-" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  TerndOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.web_listen = "127.0.0.1:0";
  options.db_path = (dir / "ternd.db").string();
  options.artifact_root = (dir / "artifacts").string();
  options.checkpoint_root = (dir / "checkpoints").string();
  options.shutdown_grace = std::chrono::seconds(2);
  auto ternd = Ternd::Start(options);
  ASSERT_TRUE(ternd.ok()) << ternd.status();
  auto stub = v1::JobService::NewStub(
      grpc::CreateChannel((*ternd)->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  context.AddMetadata("x-tern-owner", "carol");
  v1::SubmitJobRequest request;
  request.mutable_spec()->set_name("carols-job");
  request.mutable_spec()->mutable_model()->set_arch("resnet20");
  request.mutable_spec()->mutable_resources()->set_ranks(1);
  request.mutable_spec()->mutable_optimization()->set_epochs(1);
  request.mutable_spec()->mutable_optimization()->set_batch_size(32);
  request.mutable_spec()->mutable_dataset()->set_max_train_examples(64);
  v1::SubmitJobResponse response;
  const grpc::Status status = stub->SubmitJob(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const int port = (*ternd)->web_port();
  const HttpReply whoami = Get(port, "/api/v1/whoami");
  EXPECT_EQ(whoami.status, 200) << whoami.body;
  EXPECT_NE(whoami.body.find("\"seesEveryJob\":true"), std::string::npos) << whoami.body;
  const HttpReply jobs = Get(port, "/api/v1/jobs");
  EXPECT_EQ(jobs.status, 200) << jobs.body;
  EXPECT_NE(jobs.body.find("carols-job"), std::string::npos) << jobs.body;
  EXPECT_EQ(Get(port, "/api/v1/jobs/" + response.job().id()).status, 200);
  // A token where ternd takes none is refused, as over gRPC.
  EXPECT_EQ(Get(port, "/api/v1/jobs", "Bearer something").status, 401);
  ternd->reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

TEST(WebOptionsTest, TokensOverPlainHttpOnlyOnLoopback) {
  TerndOptions options;
  options.tls.cert_file = "cert.pem";
  options.token_file = "tokens";
  options.web_listen = "0.0.0.0:8080";
  const Status status = options.Validate();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("web_listen"), std::string::npos) << status;
  options.web_listen = "127.0.0.1:8080";
  EXPECT_TRUE(options.Validate().ok());
  options.token_file.clear();
  options.tls.client_ca_file = "ca.pem";
  EXPECT_NE(options.Validate().message().find("web_listen: with tls_client_ca"), std::string::npos)
      << options.Validate();
  options.token_file = "tokens";
  EXPECT_TRUE(options.Validate().ok()) << options.Validate();
  options.web_tls_cert = "web.pem";
  EXPECT_NE(options.Validate().message().find("web_tls_cert, web_tls_key"), std::string::npos);
}

}  // namespace
}  // namespace tern::server
