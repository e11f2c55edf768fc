// MetricsHttpServer: the HTTP endpoint Prometheus scrapes, for ternd and
// tern-agent (Boost.Beast on a thread of its own).
//
// Usage:
//   metrics::MetricsHttpServer server("0.0.0.0:9090", &registry);
//   TERN_RETURN_IF_ERROR(server.Start());  // binds, then serves in background
//   TERN_LOG(INFO) << "metrics on port " << server.port();
//   ...
//   server.Stop();                         // or let the destructor do it
//
// Routes: GET /metrics (text format 0.0.4 from the Registry), GET /healthz
// ("ok"), and paths added with Handle(); 404 for other paths, 405 for methods
// other than GET. HandlePrefix() routes every path under a prefix to a handler
// that sees the request (path, query, Authorization header). With RequireBearerToken(), every path
// but /healthz and /readyz (which probes call bare, and which tell nothing but whether the daemon
// is up or ready; /readyz exists where a daemon adds it with Handle()) answers 401 unless the
// request carries "Authorization: Bearer <token>" with an accepted token. The query string is
// ignored. A malformed request or a connection idle for 10 s is closed; the server keeps serving
// the others.
//
// Thread safety: all methods may be called from any thread. Handlers run on
// the server's thread, one at a time, so they must be quick and not block.
#ifndef TERN_COMMON_HTTP_SERVER_H_
#define TERN_COMMON_HTTP_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/metrics.h"
#include "common/status.h"

namespace tern::metrics {

class MetricsHttpServer {
 public:
  struct Response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
    // Extra response headers (name, value), e.g. Cache-Control.
    std::vector<std::pair<std::string, std::string>> headers;
  };
  // What a prefix handler sees of a GET request.
  struct Request {
    std::string path;           // without the query, e.g. "/api/v1/jobs/7"
    std::string query;          // after '?', undecoded; "" when none
    std::string authorization;  // the Authorization header; "" when absent
  };
  using Handler = std::function<Response()>;
  using RequestHandler = std::function<Response(const Request&)>;
  // Whether a bearer token is accepted; called on the server's thread.
  using TokenCheck = std::function<bool(std::string_view token)>;

  // `bind_address` is "host:port": "127.0.0.1:0" (0 = any free port),
  // "0.0.0.0:9090", "[::1]:9090", "localhost:9090", ":9090" (all IPv4
  // interfaces). `registry` is not owned and must outlive the server.
  MetricsHttpServer(std::string bind_address, const Registry* registry);
  ~MetricsHttpServer();  // Stop()s.
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Binds, listens and starts the serving thread; returns once the port is
  // bound. INVALID_ARGUMENT for a malformed or unresolvable address,
  // UNAVAILABLE when the address cannot be bound (port taken, no such
  // interface), FAILED_PRECONDITION when already started.
  Status Start();
  // Closes the listener and every connection and joins the thread. Blocking,
  // idempotent; Start() may be called again afterwards.
  void Stop();
  // The bound port (the chosen one when started with port 0); 0 when stopped.
  int port() const;

  // Serves GET `path` (exact match, e.g. "/healthz") with `handler`, replacing
  // a built-in route or an earlier handler. Allowed before or after Start().
  void Handle(const std::string& path, Handler handler);
  // Serves GET of every path that starts with `prefix` (e.g. "/api/", "/")
  // and has no exact route (built-in or Handle()); the longest matching
  // prefix wins. Allowed before or after Start().
  void HandlePrefix(const std::string& prefix, RequestHandler handler);

  // Requires a bearer token accepted by `check` (see above). Allowed before
  // or after Start().
  void RequireBearerToken(TokenCheck check);

  // Serves HTTPS (TLS 1.2+) with the PEM certificate (chain) and private
  // key in these files instead of plain HTTP. The files are checked now
  // (INVALID_ARGUMENT naming the file) and re-read when they change (checked
  // at most once a second, when a connection arrives; a pair that does not
  // load is logged and the last good one kept), so a renewed certificate
  // needs no restart. Call before Start().
  Status UseTls(const std::string& cert_file, const std::string& key_file);

 private:
  class Impl;  // Keeps Boost out of this header.
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::metrics

#endif  // TERN_COMMON_HTTP_SERVER_H_
