// Checks a tern.v1.JobSpec against the rules of spec/rules.h plus the
// cross-field rules (dataset.path required by kind, task vs dataset kind,
// warm-up and milestones vs epochs, kappa_end vs kappa_start, batch_size a
// multiple of ranks × micro_batches, what cuda_graph needs, label syntax).
//
// The spec is given in its proto3 JSON form with the proto field names (what
// protobuf's JSON printer writes with preserve_proto_field_names, and what
// tern-agent hands tern-trainer): ternd prints the submitted message, the
// trainer reads the file. Absent keys and nulls are unset. Enums are names or
// numbers; integers numbers or decimal strings; doubles numbers or "NaN",
// "Infinity", "-Infinity". Pure functions; thread-safe.
#ifndef TERN_SPEC_VALIDATE_H_
#define TERN_SPEC_VALIDATE_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"

namespace tern::spec {

struct Violation {
  std::string path;  // "optimization.step_milestones[1]"
  std::string rule;  // "must be strictly increasing"
};

// Every violation, in the table's field order and then the cross-field
// rules; empty when the spec is valid. When `normalized` is given it receives
// the spec's valid values with the same keys: nulls dropped, integers as
// integers, doubles as numbers, enums as names.
std::vector<Violation> CheckJobSpec(const nlohmann::json& spec,
                                    nlohmann::json* normalized = nullptr);

// OK when `violations` is empty, else INVALID_ARGUMENT listing each as
// "<prefix><path>: <rule>", joined by "; ", and carrying them as data too:
// reason SPEC_INVALID and one FieldViolation {"<prefix><path>", rule} each.
Status ViolationsToStatus(const std::vector<Violation>& violations, const std::string& prefix = "");

}  // namespace tern::spec

#endif  // TERN_SPEC_VALIDATE_H_
