// Validation of a submitted tern.v1.JobSpec: the rules of spec/ (every
// field's range, enum values and defaults, and the cross-field rules), the
// same ones tern-trainer applies to the spec it reads, so a spec accepted
// here does not fail later in the trainer.
//
// The message is printed as proto3 JSON (as tern-agent prints it for the
// trainer) and checked by spec::CheckJobSpec. Enum numbers that name no
// enumerator are violations (protobuf's parsers accept them). Optional fields
// that are unset are valid (their documented default applies); a field set
// explicitly to a value outside its range is not. Pure function, thread-safe.
#ifndef TERN_SERVER_SPEC_VALIDATION_H_
#define TERN_SERVER_SPEC_VALIDATION_H_

#include <google/protobuf/message.h>

#include <string>

#include "common/status.h"
#include "tern/v1/job.pb.h"

namespace tern::server {

// OK, or INVALID_ARGUMENT listing every violation as
// "<prefix><field path>: <rule>" (e.g. "spec.optimization.epochs: must be > 0
// (required), got 0"), joined by "; ". The `owner` field is not checked (the
// server sets it).
Status ValidateJobSpec(const v1::JobSpec& spec,
                       const std::string& prefix = "spec.");

// OK, or INVALID_ARGUMENT (reason SPEC_UNKNOWN_FIELD) when `message` or any
// message inside it (set singular fields, repeated and map entries) holds
// fields this build does not know: protobuf keeps them as unknown fields, so
// a newer client's field would be stored, echoed back and then silently
// dropped on the way to the trainer. One FieldViolation per unknown field:
// field = the path of the message holding it ("spec.optimization",
// "spec.schedule.milestones[2]", "spec.labels[\"k\"]"), description =
// "unknown field number 99"; the message lists them as "<path>: <description>".
Status RefuseUnknownFields(const google::protobuf::Message& message,
                           const std::string& path = "spec");

}  // namespace tern::server

#endif  // TERN_SERVER_SPEC_VALIDATION_H_
