// The gRPC boundary of ternd: status conversion and the wrapper every handler
// runs its body in.
//
// Usage, in a handler:
//   grpc::Status JobService::GetJob(grpc::ServerContext* ctx, ...) {
//     return RunRpc(state_, "GetJob", [&] { return DoGetJob(ctx, ...); });
//   }
// RunRpc converts the body's tern::Status one to one (tern::StatusCode mirrors
// grpc::StatusCode) with its ErrorDetails as google.rpc error details in the
// grpc-status-details-bin trailer (ToGrpcStatus), turns any exception into INTERNAL so none reaches
// gRPC (which would answer UNKNOWN), logs server-side failures, and records
// tern_grpc_requests_total / tern_grpc_request_duration_seconds. It counts
// running handlers in ServerState::in_flight and answers UNAVAILABLE without
// running the body once ServerState::shutting_down is set, so a shutdown can
// wait for exactly the handlers that started before it. Once
// ServerState::leadership_lost is set (another ternd took over) every call is
// answered UNAVAILABLE, reason LEADERSHIP_LOST, and so is a body whose store
// write was fenced (the store's ABORTED, reason LEADERSHIP_LOST).
// Thread-safe: no state of its own.
#ifndef TERN_SERVER_RPC_H_
#define TERN_SERVER_RPC_H_

#include <google/protobuf/message.h>
#include <grpcpp/support/status.h>

#include <chrono>
#include <exception>
#include <string>
#include <utility>

#include "common/error_reasons.h"
#include "common/status.h"
#include "google/rpc/status.pb.h"
#include "server/server_state.h"

namespace tern::server {

// At most kMaxStatusMessageBytes of the message (common/utf8.h CapMessage),
// and at most kMaxStatusDetailsBytes of details besides it: both trailers
// together stay under a client's default 8 KiB metadata limit.
inline constexpr size_t kMaxStatusMessageBytes = 2048;
inline constexpr size_t kMaxStatusDetailsBytes = 2048;

// The google.rpc.Status of a non-OK status: its code and (capped) message,
// and as details, in this order: RetryInfo (ErrorDetails::retry_delay),
// QuotaFailure (quota_violations), BadRequest (field_violations, as many as
// fit kMaxStatusDetailsBytes; ErrorInfo.metadata "field_violations_omitted"
// counts the rest) and always last an ErrorInfo: domain "tern.v1", the
// reason (the code's name, e.g. "INTERNAL", when the status names none) and
// the metadata. Strings in details are capped at 256 bytes each. An empty
// message for OK.
google::rpc::Status ToRpcStatus(const Status& status);
// The grpc::Status: same code and message, the serialized ToRpcStatus as
// error_details (grpc-status-details-bin).
grpc::Status ToGrpcStatus(const Status& status);

// UNAVAILABLE, reason SHUTTING_DOWN, with a RetryInfo: what every call
// gets once ternd stops (another replica, or this one restarted, answers a
// retry).
inline Status ShuttingDownError() {
  return UnavailableError("ternd is shutting down; retry")
      .WithReason(error_reason::kShuttingDown)
      .WithRetryDelay(std::chrono::seconds(1));
}

// UNAVAILABLE, reason NOT_LEADER: what a standby ternd answers every
// JobService and WorkerService call with. `leader_address`: the leader's
// advertised address, "" while nobody leads (ErrorInfo metadata
// "leader_address", which clients given several addresses follow).
Status NotLeaderError(const std::string& self_address, const std::string& leader_address);
// UNAVAILABLE, reason LEADERSHIP_LOST (metadata leader_address ""): this
// ternd led, but another took over; nothing of the call was stored.
Status LeadershipLostError();

// OK when every field of `request` annotated (google.api.field_behavior) =
// REQUIRED is set: a message field present, a scalar not at its default ("",
// 0, false), a repeated field not empty. Else INVALID_ARGUMENT "<field>:
// required", reason REQUEST_INVALID, with a field violation, for the first
// unset one in field-number order. So the annotations define what is
// required: WorkerService's handlers call this first, after authorization.
// (JobService checks its few REQUIRED fields where it parses them, with
// messages of their own; api_surface_test.cc holds it to the annotations.)
// Thread-safe.
Status RequireFields(const google::protobuf::Message& request);

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
    status = ShuttingDownError();
  } else if (state->leadership_lost.load()) {
    status = LeadershipLostError();
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
  // A fenced store write (ABORTED, LEADERSHIP_LOST) is, to the caller, a
  // ternd that no longer leads: UNAVAILABLE, to be retried on the leader.
  if (!status.ok() && status.code() != StatusCode::kUnavailable &&
      status.reason() == error_reason::kLeadershipLost) {
    status = LeadershipLostError();
  }
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
