// StartMetricsEndpoint: the /metrics and /healthz endpoint of a daemon (ternd,
// tern-agent) as its operator secured it: HTTPS from PEM files and a bearer
// token from a file (both followed when they change; /healthz stays open),
// set up the same way in both daemons.
//
// Usage:
//   MetricsEndpointOptions o{"127.0.0.1:9464", token_file, cert, key};
//   TERN_ASSIGN_OR_RETURN(auto http, StartMetricsEndpoint(o, &registry, names));
//   // http is null when o.listen is empty; else serving on http->port().
// Thread-safe: a plain function; the server it returns is (http_server.h).
#ifndef TERN_AUTH_METRICS_ENDPOINT_H_
#define TERN_AUTH_METRICS_ENDPOINT_H_

#include <memory>
#include <string>

#include "common/http_server.h"
#include "common/metrics.h"
#include "common/status.h"

namespace tern::tls {

struct MetricsEndpointOptions {
  std::string listen;      // "host:port" (http_server.h); "": no endpoint
  std::string token_file;  // the bearer token /metrics requires; "": open
  std::string tls_cert;    // HTTPS: PEM certificate (chain) and key, both
  std::string tls_key;     //   or neither; "": plain HTTP
};

// What errors call the options: the daemon's option fields or flags.
struct MetricsEndpointNames {
  std::string listen = "metrics_listen";
  std::string token_file = "metrics_token_file";
  std::string tls = "metrics_tls_cert, metrics_tls_key";
};

// Checks the options, applies TLS and the token, binds and starts serving
// `registry` (not owned; must outlive the server). Returns null when
// `options.listen` is empty. INVALID_ARGUMENT for a TLS pair given half or
// unreadable, the token file's errors (bearer_token.h), UNAVAILABLE when the
// address cannot be bound; each message starts with the option's name.
StatusOr<std::unique_ptr<metrics::MetricsHttpServer>> StartMetricsEndpoint(
    const MetricsEndpointOptions& options, const metrics::Registry* registry,
    const MetricsEndpointNames& names = MetricsEndpointNames());

}  // namespace tern::tls

#endif  // TERN_AUTH_METRICS_ENDPOINT_H_
