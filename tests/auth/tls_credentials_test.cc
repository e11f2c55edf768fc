#include "auth/tls_credentials.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"

namespace tern::tls {
namespace {

// Certificates made once by tests/auth/make_test_certs.sh (openssl): a CA, a
// server certificate for "localhost" and 127.0.0.1 signed by it, a client
// certificate signed by it, and a second, unrelated CA.
class TlsTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::TempDir() + "tern-tls-" + std::to_string(::getpid()));
    ok_ = std::system(("bash " TERN_MAKE_TEST_CERTS " " + *dir_).c_str()) == 0;
  }
  static void TearDownTestSuite() {
    std::error_code ignored;
    std::filesystem::remove_all(*dir_, ignored);
    delete dir_;
  }
  void SetUp() override { ASSERT_TRUE(ok_) << "openssl could not make the test certificates"; }

  static std::string File(const std::string& name) { return *dir_ + "/" + name; }

  // Always SERVING; remembers the last call's "authorization" metadata.
  class Health final : public grpc::health::v1::Health::Service {
   public:
    std::string last_authorization() {
      std::lock_guard<std::mutex> lock(mu_);
      return last_authorization_;
    }

   private:
    grpc::Status Check(grpc::ServerContext* context, const grpc::health::v1::HealthCheckRequest*,
                       grpc::health::v1::HealthCheckResponse* response) override {
      auto it = context->client_metadata().find("authorization");
      std::lock_guard<std::mutex> lock(mu_);
      last_authorization_ = it == context->client_metadata().end()
                                ? ""
                                : std::string(it->second.data(), it->second.size());
      response->set_status(grpc::health::v1::HealthCheckResponse::SERVING);
      return grpc::Status::OK;
    }
    std::mutex mu_;
    std::string last_authorization_;
  };

  // Starts a server with the health service above on 127.0.0.1:<any>.
  void StartServer(const ServerTlsOptions& options) {
    StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = MakeServerCredentials(options);
    ASSERT_TRUE(creds.ok()) << creds.status();
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", *creds, &port_);
    builder.RegisterService(&health_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }
  // The health check's gRPC status code on `channel`.
  static grpc::StatusCode CheckOn(const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = stub->Check(&context, request, &response);
    if (status.ok()) {
      EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
    }
    return status.error_code();
  }
  std::string Address() const { return "127.0.0.1:" + std::to_string(port_); }
  // The health check's gRPC status code through a new channel with `options`.
  // The address is 127.0.0.1, not "localhost": gRPC 1.51's c-ares resolver
  // leaks 10 bytes per process on a name lookup, which fails the ASan build;
  // server_name "localhost" checks the certificate's DNS name.
  grpc::StatusCode Check(const ClientTlsOptions& options) {
    const std::string host = "127.0.0.1";
    StatusOr<std::shared_ptr<grpc::Channel>> channel =
        MakeChannel(host + ":" + std::to_string(port_), options);
    EXPECT_TRUE(channel.ok()) << channel.status();
    if (!channel.ok()) return grpc::StatusCode::UNKNOWN;
    return CheckOn(*channel);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
  }

  static std::string* dir_;
  static bool ok_;
  Health health_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};
std::string* TlsTest::dir_ = nullptr;
bool TlsTest::ok_ = false;

TEST_F(TlsTest, ClientThatTrustsTheCaConnectsOthersDoNot) {
  StartServer({File("server.pem"), File("server.key"), ""});
  // Files read once (ternctl) and watched (tern-agent): the same checks.
  for (const unsigned int reload : {0u, 60u}) {
    SCOPED_TRACE("reload_interval_s " + std::to_string(reload));
    const auto with = [&](const std::string& ca, const std::string& server_name) {
      ClientTlsOptions options{false, ca, "", "", server_name};
      options.reload_interval_s = reload;
      return Check(options);
    };
    // By IP address, and by the certificate's DNS name.
    EXPECT_EQ(with(File("ca.pem"), ""), grpc::StatusCode::OK);
    EXPECT_EQ(with(File("ca.pem"), "localhost"), grpc::StatusCode::OK);
    // TLS trusting another CA, and a name the certificate does not carry.
    EXPECT_EQ(with(File("other-ca.pem"), ""), grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(with(File("ca.pem"), "ternd.example"), grpc::StatusCode::UNAVAILABLE);
  }
  // Plaintext to a TLS server: no connection.
  EXPECT_EQ(Check({}), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsTest, MutualTlsNeedsAClientCertificateFromTheClientCa) {
  StartServer({File("server.pem"), File("server.key"), File("ca.pem")});
  EXPECT_EQ(Check({false, File("ca.pem"), File("client.pem"), File("client.key"), ""}),
            grpc::StatusCode::OK);
  EXPECT_EQ(Check({false, File("ca.pem"), "", "", ""}), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsTest, MutualTlsRefusesACertificateFromAnotherCa) {
  StartServer({File("server.pem"), File("server.key"), File("other-ca.pem")});
  EXPECT_EQ(Check({false, File("ca.pem"), File("client.pem"), File("client.key"), ""}),
            grpc::StatusCode::UNAVAILABLE);
}

// ternd's certificate renewed on disk is served without a restart.
TEST_F(TlsTest, ServerPicksUpARenewedCertificate) {
  const std::string cert = File("rotating.pem"), key = File("rotating.key");
  std::filesystem::copy_file(File("server.pem"), cert,
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::copy_file(File("server.key"), key,
                             std::filesystem::copy_options::overwrite_existing);
  ServerTlsOptions options{cert, key, ""};
  options.reload_interval_s = 1;
  StartServer(options);
  const ClientTlsOptions trusts_ca{false, File("ca.pem"), "", "", ""};
  const ClientTlsOptions trusts_other_ca{false, File("other-ca.pem"), "", "", ""};
  ASSERT_EQ(Check(trusts_ca), grpc::StatusCode::OK);
  ASSERT_EQ(Check(trusts_other_ca), grpc::StatusCode::UNAVAILABLE);
  // Renew: the key, then the certificate, each renamed into place whole.
  std::filesystem::copy_file(File("other-server.key"), key + ".new");
  std::filesystem::rename(key + ".new", key);
  std::filesystem::copy_file(File("other-server.pem"), cert + ".new");
  std::filesystem::rename(cert + ".new", cert);
  grpc::StatusCode now = grpc::StatusCode::UNAVAILABLE;
  for (int i = 0; i < 100 && now != grpc::StatusCode::OK; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    now = Check(trusts_other_ca);
  }
  EXPECT_EQ(now, grpc::StatusCode::OK) << "the renewed certificate was not served within 10 s";
  EXPECT_EQ(Check(trusts_ca), grpc::StatusCode::UNAVAILABLE);
}

// A long-lived channel (tern-agent's) presents its renewed client
// certificate without being rebuilt.
TEST_F(TlsTest, ClientPicksUpARenewedCertificateOnItsChannel) {
  StartServer({File("server.pem"), File("server.key"), File("ca.pem")});
  // First a certificate from another CA, which the server refuses.
  const std::string cert = File("agent.pem"), key = File("agent.key");
  std::filesystem::copy_file(File("other-server.pem"), cert,
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::copy_file(File("other-server.key"), key,
                             std::filesystem::copy_options::overwrite_existing);
  ClientTlsOptions options{false, File("ca.pem"), cert, key, ""};
  options.reload_interval_s = 1;
  StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel(Address(), options);
  ASSERT_TRUE(channel.ok()) << channel.status();
  ASSERT_EQ(CheckOn(*channel), grpc::StatusCode::UNAVAILABLE);
  std::filesystem::copy_file(File("client.key"), key + ".new");
  std::filesystem::rename(key + ".new", key);
  std::filesystem::copy_file(File("client.pem"), cert + ".new");
  std::filesystem::rename(cert + ".new", cert);
  // Reconnection backs off (1 s, then 1.6 times longer each time).
  grpc::StatusCode now = grpc::StatusCode::UNAVAILABLE;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (now != grpc::StatusCode::OK && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    now = CheckOn(*channel);
  }
  EXPECT_EQ(now, grpc::StatusCode::OK) << "the renewed client certificate was not used";
}

TEST_F(TlsTest, PlaintextWithoutFlags) {
  StartServer({});
  EXPECT_EQ(Check({}), grpc::StatusCode::OK);
}

void ExpectError(const Status& status, StatusCode code, const std::string& message) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_NE(status.message().find(message), std::string::npos) << status;
}

TEST_F(TlsTest, CertificateCommonNameNamesTheAgent) {
  StatusOr<std::string> name = CertificateCommonName("--tls-cert", File("client.pem"));
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(*name, "client");
  EXPECT_EQ(CertificateCommonName("--tls-cert", File("client.key")).status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(TlsTest, BadFilesAreClearErrorsNamingTheFlag) {
  const std::string garbage = File("garbage.pem");
  std::ofstream(garbage) << "not a certificate\n";
  ExpectError(MakeServerCredentials({File("missing.pem"), File("server.key"), ""}).status(),
              StatusCode::kNotFound, "--tls-cert: ");
  ExpectError(MakeServerCredentials({garbage, File("server.key"), ""}).status(),
              StatusCode::kInvalidArgument, "--tls-cert: " + garbage + " holds no PEM certificate");
  ExpectError(MakeServerCredentials({File("server.pem"), garbage, ""}).status(),
              StatusCode::kInvalidArgument, "holds no unencrypted PEM private key");
  ExpectError(MakeServerCredentials({File("server.pem"), File("client.key"), ""}).status(),
              StatusCode::kInvalidArgument,
              "--tls-key: " + File("client.key") + " is not the private key of --tls-cert");
  ExpectError(MakeServerCredentials({File("server.pem"), "", ""}).status(),
              StatusCode::kInvalidArgument, "--tls-cert and --tls-key go together");
  ExpectError(MakeServerCredentials({"", "", File("ca.pem")}).status(),
              StatusCode::kInvalidArgument, "--tls-cert and --tls-key are needed for TLS");
  ExpectError(MakeChannel("localhost:1", {false, garbage, "", "", ""}).status(),
              StatusCode::kInvalidArgument, "--tls-ca: " + garbage + " holds no PEM certificate");
  ExpectError(MakeChannel("localhost:1", {false, "", File("client.pem"), "", ""}).status(),
              StatusCode::kInvalidArgument, "--tls-cert and --tls-key go together");
}

TEST_F(TlsTest, ATokenFileRidesOnEveryCallOverTlsOnly) {
  StartServer({File("server.pem"), File("server.key"), ""});
  const std::string token_file = File("client.token");
  { std::ofstream(token_file) << "tern_first-token-0123456789\n"; }
  ClientTlsOptions options{false, File("ca.pem"), "", "", "localhost"};
  options.token_file = token_file;
  options.reload_interval_s = 0;
  StatusOr<std::shared_ptr<grpc::Channel>> channel =
      MakeChannel("127.0.0.1:" + std::to_string(port_), options);
  ASSERT_TRUE(channel.ok()) << channel.status();
  EXPECT_EQ(CheckOn(*channel), grpc::StatusCode::OK);
  EXPECT_EQ(health_.last_authorization(), "Bearer tern_first-token-0123456789");

  // A rotated token (a new file renamed over the old one) is sent from the
  // next call on, on the same channel.
  { std::ofstream(token_file + ".new") << "tern_second-token-0123456789\n"; }
  std::filesystem::rename(token_file + ".new", token_file);
  EXPECT_EQ(CheckOn(*channel), grpc::StatusCode::OK);
  EXPECT_EQ(health_.last_authorization(), "Bearer tern_second-token-0123456789");

  // Never over plaintext.
  ClientTlsOptions plaintext;
  plaintext.token_file = token_file;
  const Status refused = MakeChannel("127.0.0.1:1", plaintext).status();
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("--token-file needs TLS"), std::string::npos)
      << refused.message();
}

}  // namespace
}  // namespace tern::tls
