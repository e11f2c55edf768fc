#include "common/http_server.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "common/metrics.h"

namespace tern::metrics {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

// Sends one request on a fresh connection and returns the response.
http::response<http::string_body> Fetch(int port, http::verb method,
                                        const std::string& target,
                                        const std::string& authorization = "") {
  asio::io_context io;
  beast::tcp_stream stream(io);
  stream.expires_after(std::chrono::seconds(10));
  stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"),
                               static_cast<unsigned short>(port)));
  http::request<http::string_body> request(method, target, 11);
  request.set(http::field::host, "127.0.0.1");
  if (!authorization.empty()) request.set(http::field::authorization, authorization);
  request.prepare_payload();
  http::write(stream, request);
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  http::read(stream, buffer, response);
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  return response;
}

class MetricsHttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_.AddCounter("tern_test_requests_total", "Requests.", {"code"})
        .WithLabels({"200"})
        ->Increment(5);
    ASSERT_TRUE(server_.Start().ok());
    ASSERT_GT(server_.port(), 0);
  }

  Registry registry_;
  MetricsHttpServer server_{"127.0.0.1:0", &registry_};
};

TEST_F(MetricsHttpServerTest, ServesMetrics) {
  const auto response = Fetch(server_.port(), http::verb::get, "/metrics");
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_EQ(response[http::field::content_type],
            "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(response.body(), registry_.Serialize());
  EXPECT_NE(response.body().find("tern_test_requests_total{code=\"200\"} 5\n"),
            std::string::npos);
  // The query string does not matter.
  EXPECT_EQ(Fetch(server_.port(), http::verb::get, "/metrics?x=1").result_int(),
            200);
}

TEST_F(MetricsHttpServerTest, ServesHealthz) {
  const auto response = Fetch(server_.port(), http::verb::get, "/healthz");
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_EQ(response.body(), "ok");
}

TEST_F(MetricsHttpServerTest, PrefixHandlersSeeTheRequestAndTheLongestPrefixWins) {
  auto echo = [](const std::string& name) {
    return [name](const MetricsHttpServer::Request& request) {
      MetricsHttpServer::Response response;
      response.body = name + "|" + request.path + "|" + request.query + "|" + request.authorization;
      response.headers.emplace_back("X-Handler", name);
      return response;
    };
  };
  server_.HandlePrefix("/", echo("root"));
  server_.HandlePrefix("/api/", echo("api"));
  const auto api =
      Fetch(server_.port(), http::verb::get, "/api/v1/jobs?state=RUNNING&x=%20", "Bearer abc");
  EXPECT_EQ(api.result_int(), 200);
  EXPECT_EQ(api.body(), "api|/api/v1/jobs|state=RUNNING&x=%20|Bearer abc");
  EXPECT_EQ(api["X-Handler"], "api");
  EXPECT_EQ(Fetch(server_.port(), http::verb::get, "/app.js").body(), "root|/app.js||");
  EXPECT_EQ(Fetch(server_.port(), http::verb::get, "/apix").body(), "root|/apix||");
  // Exact routes still win over prefixes.
  EXPECT_EQ(Fetch(server_.port(), http::verb::get, "/healthz").body(), "ok");
  EXPECT_EQ(Fetch(server_.port(), http::verb::post, "/api/v1/jobs").result_int(), 405);
}

TEST_F(MetricsHttpServerTest, ABearerTokenGuardsEveryPathButHealthz) {
  server_.RequireBearerToken([](std::string_view token) { return token == "tern_secret"; });
  server_.Handle("/extra", [] { return MetricsHttpServer::Response{200, "text/plain", "x", {}}; });
  for (const char* path : {"/metrics", "/extra", "/nope"}) {
    for (const char* authorization : {"", "Bearer tern_wrong", "Basic dGVybjpzZWNyZXQ=",
                                      "Bearer", "tern_secret"}) {
      const auto response = Fetch(server_.port(), http::verb::get, path, authorization);
      EXPECT_EQ(response.result_int(), 401) << path << " with '" << authorization << "'";
      EXPECT_EQ(response[http::field::www_authenticate], "Bearer realm=\"tern\"");
      EXPECT_EQ(response.body().find("tern_test_requests_total"), std::string::npos);
    }
  }
  const auto ok = Fetch(server_.port(), http::verb::get, "/metrics", "Bearer tern_secret");
  EXPECT_EQ(ok.result_int(), 200);
  EXPECT_EQ(ok.body(), registry_.Serialize());
  EXPECT_EQ(Fetch(server_.port(), http::verb::get, "/metrics", "bearer tern_secret").result_int(),
            200);  // the scheme is case-insensitive (RFC 7235)
  EXPECT_EQ(Fetch(server_.port(), http::verb::get, "/nope", "Bearer tern_secret").result_int(),
            404);
  EXPECT_EQ(Fetch(server_.port(), http::verb::get, "/healthz").result_int(), 200);
}

TEST_F(MetricsHttpServerTest, UnknownPathIs404) {
  EXPECT_EQ(Fetch(server_.port(), http::verb::get, "/nope").result_int(), 404);
}

TEST_F(MetricsHttpServerTest, NonGetIs405) {
  const auto response = Fetch(server_.port(), http::verb::post, "/metrics");
  EXPECT_EQ(response.result_int(), 405);
  EXPECT_EQ(response[http::field::allow], "GET");
}

TEST_F(MetricsHttpServerTest, ServesSeveralRequestsOnOneConnection) {
  asio::io_context io;
  beast::tcp_stream stream(io);
  stream.expires_after(std::chrono::seconds(10));
  stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"),
                               static_cast<unsigned short>(server_.port())));
  beast::flat_buffer buffer;
  for (const char* target : {"/healthz", "/metrics", "/healthz"}) {
    http::request<http::empty_body> request(http::verb::get, target, 11);
    request.set(http::field::host, "127.0.0.1");
    http::write(stream, request);
    http::response<http::string_body> response;
    http::read(stream, buffer, response);
    EXPECT_EQ(response.result_int(), 200) << target;
  }
}

TEST_F(MetricsHttpServerTest, SurvivesGarbageRequest) {
  {
    asio::io_context io;
    tcp::socket socket(io);
    socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"),
                                 static_cast<unsigned short>(server_.port())));
    const char kGarbage[] = "\x01\xff GARBAGE \0\0 nonsense\r\n\r\n\r\n";
    const std::string garbage(kGarbage, sizeof(kGarbage) - 1);
    asio::write(socket, asio::buffer(garbage));
    // The server closes this connection: the read ends with EOF (or reset).
    char byte;
    beast::error_code ec;
    asio::read(socket, asio::buffer(&byte, 1), ec);
    EXPECT_TRUE(ec) << "expected the server to close the connection";
  }
  {
    // A client that connects and leaves without a word.
    asio::io_context io;
    tcp::socket socket(io);
    socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"),
                                 static_cast<unsigned short>(server_.port())));
  }
  {
    // Oversized header.
    asio::io_context io;
    tcp::socket socket(io);
    socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"),
                                 static_cast<unsigned short>(server_.port())));
    const std::string huge =
        "GET /metrics HTTP/1.1\r\nX-Big: " + std::string(100000, 'a') +
        "\r\n\r\n";
    beast::error_code ec;
    asio::write(socket, asio::buffer(huge), ec);
    char byte;
    asio::read(socket, asio::buffer(&byte, 1), ec);
    EXPECT_TRUE(ec);
  }
  EXPECT_EQ(Fetch(server_.port(), http::verb::get, "/metrics").result_int(),
            200);
}

TEST_F(MetricsHttpServerTest, ExtraHandlersReplaceBuiltIns) {
  server_.Handle("/healthz", [] {
    return MetricsHttpServer::Response{503, "text/plain", "draining", {}};
  });
  server_.Handle("/ready", [] { return MetricsHttpServer::Response{}; });
  const auto health = Fetch(server_.port(), http::verb::get, "/healthz");
  EXPECT_EQ(health.result_int(), 503);
  EXPECT_EQ(health.body(), "draining");
  EXPECT_EQ(Fetch(server_.port(), http::verb::get, "/ready").result_int(), 200);
}

TEST_F(MetricsHttpServerTest, SecondStartFails) {
  EXPECT_EQ(server_.Start().code(), StatusCode::kFailedPrecondition);
}

TEST_F(MetricsHttpServerTest, TakenPortIsUnavailable) {
  Registry other;
  MetricsHttpServer second("127.0.0.1:" + std::to_string(server_.port()),
                           &other);
  const Status status = second.Start();
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status;
  EXPECT_NE(status.message().find("in use"), std::string::npos) << status;
}

TEST_F(MetricsHttpServerTest, StopClosesAndRestartWorks) {
  const int old_port = server_.port();
  server_.Stop();
  EXPECT_EQ(server_.port(), 0);
  server_.Stop();  // Idempotent.
  asio::io_context io;
  tcp::socket socket(io);
  beast::error_code ec;
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"),
                               static_cast<unsigned short>(old_port)),
                 ec);
  EXPECT_TRUE(ec) << "still accepting after Stop()";
  ASSERT_TRUE(server_.Start().ok());
  EXPECT_EQ(Fetch(server_.port(), http::verb::get, "/healthz").result_int(),
            200);
}

TEST(MetricsHttpServerAddressTest, RejectsBadAddresses) {
  Registry registry;
  for (const char* address : {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999",
                              "127.0.0.1:http", "::1:9090"}) {
    MetricsHttpServer server(address, &registry);
    const Status status = server.Start();
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument)
        << address << ": " << status;
  }
}

TEST(MetricsHttpServerAddressTest, AcceptsIpv6AndEmptyHost) {
  Registry registry;
  MetricsHttpServer any(":0", &registry);
  EXPECT_TRUE(any.Start().ok());
  MetricsHttpServer v6("[::1]:0", &registry);
  const Status status = v6.Start();
  if (!status.ok()) GTEST_SKIP() << "no IPv6 loopback here: " << status;
  EXPECT_GT(v6.port(), 0);
}

// GET `target` over HTTPS, trusting `ca_file`; the error of the handshake
// or the exchange in `error` (empty on success).
http::response<http::string_body> FetchTls(int port, const std::string& target,
                                           const std::string& ca_file, std::string* error) {
  asio::io_context io;
  asio::ssl::context tls(asio::ssl::context::tls_client);
  tls.load_verify_file(ca_file);
  tls.set_verify_mode(asio::ssl::verify_peer);
  beast::ssl_stream<beast::tcp_stream> stream(io, tls);
  http::response<http::string_body> response;
  try {
    beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(10));
    beast::get_lowest_layer(stream).connect(tcp::endpoint(
        asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
    stream.handshake(asio::ssl::stream_base::client);
    http::request<http::string_body> request(http::verb::get, target, 11);
    request.set(http::field::host, "127.0.0.1");
    http::write(stream, request);
    beast::flat_buffer buffer;
    http::read(stream, buffer, response);
  } catch (const std::exception& e) {
    *error = e.what();
  }
  return response;
}

TEST(MetricsHttpsTest, ServesOverTlsOnlyWithAUsableCertificate) {
  const std::string dir = ::testing::TempDir() + "tern-https-" + std::to_string(::getpid());
  ASSERT_EQ(std::system(("bash " TERN_MAKE_TEST_CERTS " " + dir).c_str()), 0)
      << "openssl could not make the test certificates";
  Registry registry;
  registry.AddCounter("tern_test_total", "Test.", {}).WithLabels({})->Increment(3);
  MetricsHttpServer server("127.0.0.1:0", &registry);
  // A key that is not the certificate's, and a missing file: refused, named.
  const Status mismatched = server.UseTls(dir + "/server.pem", dir + "/client.key");
  EXPECT_EQ(mismatched.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(mismatched.message().find("is not the private key of"), std::string::npos)
      << mismatched.message();
  EXPECT_EQ(server.UseTls(dir + "/missing.pem", dir + "/server.key").code(),
            StatusCode::kInvalidArgument);
  ASSERT_TRUE(server.UseTls(dir + "/server.pem", dir + "/server.key").ok());
  ASSERT_TRUE(server.Start().ok());
  EXPECT_EQ(server.UseTls(dir + "/server.pem", dir + "/server.key").code(),
            StatusCode::kFailedPrecondition);

  std::string error;
  const auto response = FetchTls(server.port(), "/metrics", dir + "/ca.pem", &error);
  EXPECT_EQ(error, "");
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_EQ(response.body(), registry.Serialize());
  // A client that trusts another CA does not get through the handshake.
  FetchTls(server.port(), "/metrics", dir + "/other-ca.pem", &error);
  EXPECT_NE(error, "");
  // Plain HTTP on the HTTPS port gets no response.
  bool plain_failed = false;
  try {
    Fetch(server.port(), http::verb::get, "/metrics");
  } catch (const std::exception&) {
    plain_failed = true;
  }
  EXPECT_TRUE(plain_failed);
  // Still serving.
  EXPECT_EQ(FetchTls(server.port(), "/healthz", dir + "/ca.pem", &error).result_int(), 200);
  server.Stop();
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
}

}  // namespace
}  // namespace tern::metrics
