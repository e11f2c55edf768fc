// The gRPC boundary of ternd: status conversion and the wrapper every handler
// runs its body in.
//
// Usage, in a handler:
//   grpc::Status JobService::GetJob(grpc::ServerContext* ctx, ...) {
//     return RunRpc(state_, "GetJob", [&] { return DoGetJob(ctx, ...); });
//   }
// RunRpc converts the body's tern::Status one to one (tern::StatusCode mirrors
// grpc::StatusCode), turns any exception into INTERNAL so none reaches gRPC
// (which would answer UNKNOWN), logs server-side failures, and records
// tern_grpc_requests_total / tern_grpc_request_duration_seconds. It counts
// running handlers in ServerState::in_flight and answers UNAVAILABLE without
// running the body once ServerState::shutting_down is set, so a shutdown can
// wait for exactly the handlers that started before it.
// Thread-safe: no state of its own.
#ifndef TERN_SERVER_RPC_H_
#define TERN_SERVER_RPC_H_

#include <grpcpp/support/status.h>

#include <chrono>
#include <exception>
#include <string>
#include <utility>

#include "common/status.h"
#include "server/server_state.h"

namespace tern::server {

// At most kMaxStatusMessageBytes of the message (common/utf8.h CapMessage).
inline constexpr size_t kMaxStatusMessageBytes = 4096;
grpc::Status ToGrpcStatus(const Status& status);

namespace internal {
// Logs failures that are the server's fault (INTERNAL, DATA_LOSS, UNKNOWN) at
// ERROR and the rest at DEBUG.
void LogRpcFailure(const char* method, const Status& status);
}  // namespace internal

// Runs `body` (returning tern::Status) as the handler of `method`.
template <typename Body>
grpc::Status RunRpc(ServerState* state, const char* method, Body&& body) {
  const auto start = std::chrono::steady_clock::now();
  Status status;
  ++state->in_flight;  // seq_cst, paired with Ternd::Shutdown's order
  if (state->shutting_down.load()) {
    status = UnavailableError("ternd is shutting down; retry");
  } else {
    try {
      status = std::forward<Body>(body)();
    } catch (const std::exception& e) {
      status = InternalError(std::string("unexpected exception: ") + e.what());
    } catch (...) {
      status = InternalError("unexpected exception");
    }
  }
  --state->in_flight;
  if (!status.ok()) internal::LogRpcFailure(method, status);
  if (state->metrics != nullptr) {
    state->metrics->ObserveRpc(
        method, status.code(),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count());
  }
  return ToGrpcStatus(status);
}

}  // namespace tern::server

#endif  // TERN_SERVER_RPC_H_
