#include "auth/metrics_endpoint.h"

#include <string_view>
#include <utility>

#include "auth/bearer_token.h"

namespace tern::tls {

StatusOr<std::unique_ptr<metrics::MetricsHttpServer>> StartMetricsEndpoint(
    const MetricsEndpointOptions& options, const metrics::Registry* registry,
    const MetricsEndpointNames& names) {
  if (options.listen.empty()) return std::unique_ptr<metrics::MetricsHttpServer>();
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return InvalidArgumentError(names.tls + ": both or neither");
  }
  auto http = std::make_unique<metrics::MetricsHttpServer>(options.listen, registry);
  if (!options.tls_cert.empty()) {
    TERN_RETURN_IF_ERROR(http->UseTls(options.tls_cert, options.tls_key).WithContext(names.tls));
  }
  if (!options.token_file.empty()) {
    TERN_ASSIGN_OR_RETURN(std::shared_ptr<TokenFile> token,
                          TokenFile::Open(names.token_file, options.token_file));
    http->RequireBearerToken(
        [token](std::string_view presented) { return token->Matches(presented); });
  }
  TERN_RETURN_IF_ERROR(http->Start().WithContext(names.listen));
  return http;
}

}  // namespace tern::tls
