// Validation of a submitted tern.v1.JobSpec against the rules documented on
// its fields in proto/tern/v1/job.proto (ranges, required fields, enum values,
// label syntax, cross-field rules such as batch_size being a multiple of
// ranks × micro_batches).
//
// Enum fields are checked with *_IsValid: protobuf's parsers (binary and
// JSON) accept numbers that name no enumerator. Optional fields that are
// unset are valid (their documented default applies); a field set explicitly
// to a value outside its range is not. Pure function, thread-safe.
#ifndef TERN_SERVER_SPEC_VALIDATION_H_
#define TERN_SERVER_SPEC_VALIDATION_H_

#include <string>

#include "common/status.h"
#include "tern/v1/job.pb.h"

namespace tern::server {

// OK, or INVALID_ARGUMENT listing every violation as
// "<prefix><field path>: <rule>" (e.g. "spec.optimization.epochs: must be > 0
// (required)"), joined by "; ". The `owner` field is not checked (the server
// sets it).
Status ValidateJobSpec(const v1::JobSpec& spec,
                       const std::string& prefix = "spec.");

}  // namespace tern::server

#endif  // TERN_SERVER_SPEC_VALIDATION_H_
