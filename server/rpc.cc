#include "server/rpc.h"

#include "common/logging.h"
#include "common/utf8.h"

namespace tern::server {
namespace {

#define TERN_SAME_CODE(ours, grpcs)                   \
  static_assert(static_cast<int>(StatusCode::ours) == \
                static_cast<int>(grpc::StatusCode::grpcs))
TERN_SAME_CODE(kOk, OK);
TERN_SAME_CODE(kCancelled, CANCELLED);
TERN_SAME_CODE(kUnknown, UNKNOWN);
TERN_SAME_CODE(kInvalidArgument, INVALID_ARGUMENT);
TERN_SAME_CODE(kDeadlineExceeded, DEADLINE_EXCEEDED);
TERN_SAME_CODE(kNotFound, NOT_FOUND);
TERN_SAME_CODE(kAlreadyExists, ALREADY_EXISTS);
TERN_SAME_CODE(kPermissionDenied, PERMISSION_DENIED);
TERN_SAME_CODE(kResourceExhausted, RESOURCE_EXHAUSTED);
TERN_SAME_CODE(kFailedPrecondition, FAILED_PRECONDITION);
TERN_SAME_CODE(kAborted, ABORTED);
TERN_SAME_CODE(kOutOfRange, OUT_OF_RANGE);
TERN_SAME_CODE(kUnimplemented, UNIMPLEMENTED);
TERN_SAME_CODE(kInternal, INTERNAL);
TERN_SAME_CODE(kUnavailable, UNAVAILABLE);
TERN_SAME_CODE(kDataLoss, DATA_LOSS);
TERN_SAME_CODE(kUnauthenticated, UNAUTHENTICATED);
#undef TERN_SAME_CODE

}  // namespace

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // The enumerators have the same values by construction (status.h). The
  // message travels in a trailer: capped so that no message, however many
  // violations it lists, exceeds a client's metadata limit (8 KiB by
  // default) and turns into RESOURCE_EXHAUSTED there.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      CapMessage(status.message(), kMaxStatusMessageBytes));
}

namespace internal {

void LogRpcFailure(const char* method, const Status& status) {
  switch (status.code()) {
    case StatusCode::kInternal:
    case StatusCode::kDataLoss:
    case StatusCode::kUnknown:
      TERN_LOG(ERROR) << method << ": " << status;
      break;
    default:
      TERN_LOG(DEBUG) << method << ": " << status;
  }
}

}  // namespace internal
}  // namespace tern::server
