#include "auth/metrics_endpoint.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace tern::tls {
namespace {

TEST(MetricsEndpointTest, NoListenAddressNoEndpoint) {
  metrics::Registry registry;
  StatusOr<std::unique_ptr<metrics::MetricsHttpServer>> http =
      StartMetricsEndpoint(MetricsEndpointOptions(), &registry);
  ASSERT_TRUE(http.ok()) << http.status();
  EXPECT_EQ(*http, nullptr);
}

TEST(MetricsEndpointTest, ServesOnTheChosenPort) {
  metrics::Registry registry;
  MetricsEndpointOptions options;
  options.listen = "127.0.0.1:0";
  StatusOr<std::unique_ptr<metrics::MetricsHttpServer>> http =
      StartMetricsEndpoint(options, &registry);
  ASSERT_TRUE(http.ok()) << http.status();
  ASSERT_NE(*http, nullptr);
  EXPECT_GT((*http)->port(), 0);
}

TEST(MetricsEndpointTest, ErrorsNameTheOptions) {
  metrics::Registry registry;
  MetricsEndpointOptions options;
  options.listen = "127.0.0.1:0";
  options.tls_cert = "/nonexistent/cert.pem";  // without its key
  MetricsEndpointNames names;
  names.tls = "--metrics-tls-cert, --metrics-tls-key";
  Status status = StartMetricsEndpoint(options, &registry, names).status();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message().rfind("--metrics-tls-cert, --metrics-tls-key", 0), 0u) << status;

  options.tls_cert.clear();
  options.token_file = "/nonexistent/token";
  status = StartMetricsEndpoint(options, &registry).status();
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("metrics_token_file"), std::string::npos) << status;

  options.token_file.clear();
  options.listen = "not an address";
  status = StartMetricsEndpoint(options, &registry).status();
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.message().rfind("metrics_listen", 0), 0u) << status;
}

}  // namespace
}  // namespace tern::tls
