// WebApi: the JSON view of tern.v1.JobService that the web console (web/)
// reads, and the console's static files, served on ternd --web-listen.
//
// Every /api/v1 request becomes one call of ternd's own JobService over an
// in-process gRPC channel (grpc::Server::InProcessChannel), carrying the
// request's "Authorization: Bearer <token>" as the call's metadata: identity,
// visibility and errors are exactly the gRPC API's (server/caller.h), with no
// second bookkeeping. Responses are protobuf's JSON mapping (lowerCamelCase
// fields, enum names).
//   GET /api/v1/whoami                       WhoAmI
//   GET /api/v1/jobs?state=S&owner=O&label=K=V&page_size=N&page_token=T
//                                            ListJobs (state, label repeatable;
//                                            state as RUNNING or JOB_STATE_RUNNING)
//   GET /api/v1/jobs/{id}                    GetJob
//   GET /api/v1/jobs/{id}/events?after=N     the stored events with sequence > N
//                                            (WatchJob history_only), at most
//                                            kMaxEventsPerPage: {"events": [...],
//                                            "more": bool}
//   GET /api/v1/jobs/{id}/artifact           GetArtifact, as one download
//   GET /api/v1/jobs/{id}/inspect            `ternctl inspect` of that artifact
//                                            (cli/inspect.h): {"fileName", "text",
//                                            "summary": its --json object}
//   GET /api/v1/agents                       ListAgents
// Status mapping: INVALID_ARGUMENT 400 (an unknown or malformed query
// parameter is 400 naming it), UNAUTHENTICATED 401 (nothing but the error),
// NOT_FOUND and a job of another owner 404 with the same body, other
// PERMISSION_DENIED 403, FAILED_PRECONDITION 409, RESOURCE_EXHAUSTED 429,
// UNAVAILABLE 503, the rest 500. Errors are {"error": {"code", "message"}}.
// Static files (web_assets.h) need no token: they hold nothing secret.
// Thread-safe; Serve() blocks for one in-process call (an artifact download
// for as long as it is read).
#ifndef TERN_SERVER_WEB_API_H_
#define TERN_SERVER_WEB_API_H_

#include <grpcpp/channel.h>

#include <memory>

#include "common/http_server.h"
#include "tern/v1/job_service.grpc.pb.h"

namespace tern::server {

class WebApi {
 public:
  static constexpr int kMaxEventsPerPage = 2000;
  // `channel` reaches ternd's JobService (its in-process channel).
  explicit WebApi(std::shared_ptr<grpc::Channel> channel);

  // Answers one GET under /api/.
  metrics::MetricsHttpServer::Response ServeApi(
      const metrics::MetricsHttpServer::Request& request) const;
  // Answers one GET of a static file ("/" is index.html); 404 when none.
  static metrics::MetricsHttpServer::Response ServeStatic(
      const metrics::MetricsHttpServer::Request& request);
  // Routes /api/ to ServeApi and every other path to ServeStatic on `http`,
  // and hides /metrics there (404: the metrics have their own endpoint).
  void InstallOn(metrics::MetricsHttpServer* http) const;

 private:
  std::unique_ptr<v1::JobService::Stub> stub_;
};

}  // namespace tern::server

#endif  // TERN_SERVER_WEB_API_H_
