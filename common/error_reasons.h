// The reasons of tern.v1 errors: the stable, machine-readable cause ternd
// sends with every error it decides itself, as google.rpc.ErrorInfo.reason
// with domain kErrorDomain (server/rpc.h). Clients branch on these, never on
// the message text, so a reason is never renamed or reused for another cause.
//
// Each one is documented in proto/tern/v1/job_service.proto (the "Error
// reasons" table), which tests/server checks against kAllErrorReasons: add a
// reason here, to that list and to the table together. An error without a
// more specific reason carries the name of its code ("INTERNAL", ...).
// Constant data; no protobuf (scheduler/ and spec/ use it too).
#ifndef TERN_COMMON_ERROR_REASONS_H_
#define TERN_COMMON_ERROR_REASONS_H_

namespace tern::error_reason {

inline constexpr char kErrorDomain[] = "tern.v1";

// INVALID_ARGUMENT
inline constexpr char kSpecInvalid[] = "SPEC_INVALID";
inline constexpr char kSpecUnknownField[] = "SPEC_UNKNOWN_FIELD";
inline constexpr char kRequestInvalid[] = "REQUEST_INVALID";
inline constexpr char kIdempotencyKeyInvalid[] = "IDEMPOTENCY_KEY_INVALID";
inline constexpr char kPageTokenInvalid[] = "PAGE_TOKEN_INVALID";
inline constexpr char kOwnerInvalid[] = "OWNER_INVALID";
// ALREADY_EXISTS
inline constexpr char kIdempotencyKeyReused[] = "IDEMPOTENCY_KEY_REUSED";
// NOT_FOUND
inline constexpr char kJobNotFound[] = "JOB_NOT_FOUND";
inline constexpr char kArtifactNotFound[] = "ARTIFACT_NOT_FOUND";
// FAILED_PRECONDITION
inline constexpr char kJobStateConflict[] = "JOB_STATE_CONFLICT";
inline constexpr char kQuotaNeverFits[] = "QUOTA_NEVER_FITS";
// PERMISSION_DENIED
inline constexpr char kPriorityNotAllowed[] = "PRIORITY_NOT_ALLOWED";
inline constexpr char kPathNotAllowed[] = "PATH_NOT_ALLOWED";
inline constexpr char kOwnerMismatch[] = "OWNER_MISMATCH";
inline constexpr char kListOtherOwner[] = "LIST_OTHER_OWNER";
inline constexpr char kNotAnAgent[] = "NOT_AN_AGENT";
// UNAUTHENTICATED
inline constexpr char kCredentialMissing[] = "CREDENTIAL_MISSING";
inline constexpr char kCredentialInvalid[] = "CREDENTIAL_INVALID";
// RESOURCE_EXHAUSTED
inline constexpr char kQuotaExceeded[] = "QUOTA_EXCEEDED";
inline constexpr char kWatchStreamLimit[] = "WATCH_STREAM_LIMIT";
// UNAVAILABLE
inline constexpr char kShuttingDown[] = "SHUTTING_DOWN";
inline constexpr char kNotLeader[] = "NOT_LEADER";
inline constexpr char kLeadershipLost[] = "LEADERSHIP_LOST";
// ABORTED
inline constexpr char kEtagMismatch[] = "ETAG_MISMATCH";
// DATA_LOSS
inline constexpr char kArtifactChanged[] = "ARTIFACT_CHANGED";

// Every reason above, for the documentation test.
inline constexpr const char* kAllErrorReasons[] = {
    kSpecInvalid,       kSpecUnknownField,  kRequestInvalid,       kIdempotencyKeyInvalid,
    kPageTokenInvalid,  kOwnerInvalid,      kIdempotencyKeyReused, kJobNotFound,
    kArtifactNotFound,  kJobStateConflict,  kQuotaNeverFits,       kPriorityNotAllowed,
    kPathNotAllowed,    kOwnerMismatch,     kListOtherOwner,       kNotAnAgent,
    kCredentialMissing, kCredentialInvalid, kQuotaExceeded,        kWatchStreamLimit,
    kShuttingDown,      kNotLeader,         kLeadershipLost,       kEtagMismatch,
    kArtifactChanged,
};

}  // namespace tern::error_reason

#endif  // TERN_COMMON_ERROR_REASONS_H_
