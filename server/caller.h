// Who is calling: the identity a request acts as, and the access check.
//
// Today the identity is the request metadata `x-tern-owner` (default
// "anonymous"), which any client can set: it scopes idempotency keys and
// becomes JobSpec.owner, but it is not authentication. Authorize() is the
// single hook where a real check (mTLS peer, token) goes later; it allows
// everything now. Plain functions, thread-safe.
#ifndef TERN_SERVER_CALLER_H_
#define TERN_SERVER_CALLER_H_

#include <grpcpp/server_context.h>

#include <string>

#include "common/status.h"
#include "scheduler/job.h"

namespace tern::server {

inline constexpr char kOwnerMetadataKey[] = "x-tern-owner";
inline constexpr char kAnonymousOwner[] = "anonymous";

struct Caller {
  std::string owner;  // 1..128 printable ASCII characters, no spaces
};

// Reads the caller from the request metadata. INVALID_ARGUMENT when
// x-tern-owner is present but empty, too long or not printable ASCII.
StatusOr<Caller> CallerFromContext(const grpc::ServerContext& context);

enum class Action { kRead, kCancel };

// OK when `caller` may perform `action` on `job` (always, for now; the
// future answer for a refusal is PERMISSION_DENIED).
Status Authorize(const Caller& caller, const scheduler::Job& job,
                 Action action);

}  // namespace tern::server

#endif  // TERN_SERVER_CALLER_H_
