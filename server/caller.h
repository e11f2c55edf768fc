// Who is calling: the identity a request acts as, and the access check.
//
// Over mutual TLS (ternd --tls-client-ca) the identity is the client
// certificate's common name: authenticated. With ternd --token-file, a
// bearer token ("authorization: Bearer <token>", token_table.h) names the
// caller instead (and a call with neither is UNAUTHENTICATED; an unknown
// token always is). The request metadata `x-tern-owner` may then only repeat
// the name (a different name is PERMISSION_DENIED). Without either the
// identity is
// `x-tern-owner` (default "anonymous"), which any client can set: it scopes
// idempotency keys and becomes JobSpec.owner, but it is not authentication.
// MayAccess() / ListableOwner(): an authenticated caller reads, lists and
// cancels only its own jobs, unless its name matches the admin glob (ternd
// --tls-admin-names) or its token has the admin role; an unauthenticated
// caller may do everything (no TLS: a trusted network). AuthorizeAgent():
// which certificates and tokens may act as agents (WorkerService). Plain
// functions, thread-safe.
#ifndef TERN_SERVER_CALLER_H_
#define TERN_SERVER_CALLER_H_

#include <grpcpp/server_context.h>

#include <string>

#include "auth/token_table.h"
#include "common/status.h"
#include "scheduler/job.h"

namespace tern::server {

inline constexpr char kOwnerMetadataKey[] = "x-tern-owner";
inline constexpr char kAnonymousOwner[] = "anonymous";

struct Caller {
  std::string owner;  // 1..128 printable ASCII characters, no spaces
  // owner is a verified client certificate's name or a known token's.
  bool authenticated = false;
  bool admin = false;  // a token with the admin role
  // "client certificate", "bearer token", "x-tern-owner claim", "anonymous".
  std::string proven_by = "";
};

// Reads the caller from the peer's certificate, bearer token or request
// metadata; `tokens` is ternd's --token-file table, null without one.
// INVALID_ARGUMENT when x-tern-owner is present but empty, too long or not
// printable ASCII; PERMISSION_DENIED when it differs from the authenticated
// name, or when a verified certificate has no usable common name;
// UNAUTHENTICATED for an unknown token, a token ternd does not take, or no
// credential where tokens are required.
StatusOr<Caller> CallerFromContext(const grpc::ServerContextBase& context, TokenTable* tokens);

// Whether the peer may call WorkerService (act as a tern-agent): always
// without a client certificate or token (returns ""); over mutual TLS when
// the certificate's common name matches the glob `agent_names` (ternd
// --tls-agent-names, e.g. "tern-agent-*"), with a token when its line has the
// agent role; returns the name, which must then be the agent_id it
// registers as. PERMISSION_DENIED or UNAUTHENTICATED otherwise.
StatusOr<std::string> AuthorizeAgent(const grpc::ServerContextBase& context,
                                     const std::string& agent_names, TokenTable* tokens);

// Whether `caller` may read, cancel, update and delete `job` (see the top of
// this file). `admin_names`: a glob, "" for none. JobService answers a job the
// caller may not access exactly like an absent one (NOT_FOUND, job_service.h).
bool MayAccess(const Caller& caller, const scheduler::Job& job, const std::string& admin_names);

// The owner filter a ListJobs request from `caller` runs with: the one asked
// for, or for an authenticated non-admin caller its own name (asking for
// another owner's jobs is PERMISSION_DENIED).
StatusOr<std::string> ListableOwner(const Caller& caller, const std::string& requested_owner,
                                    const std::string& admin_names);

// Whether `caller` may read, list and cancel every owner's jobs.
bool SeesEveryJob(const Caller& caller, const std::string& admin_names);

}  // namespace tern::server

#endif  // TERN_SERVER_CALLER_H_
