// Job files for `ternctl submit`: a tern.v1.JobSpec written as YAML or JSON,
// plus the command-line overrides of its common fields.
//
// JSON files (".json", or text starting with '{') are proto3 JSON, parsed by
// protobuf (snake_case or lowerCamelCase keys, exact enum names). YAML files
// are converted to JSON field by field, guided by JobSpec's descriptor, so a
// scalar takes its field's type (`name: 123` stays a string) and enums may be
// short and lower case: `method: hla`, `device_kind: cuda`,
// `lr_schedule: step` (or the full METHOD_HLA, or the number). Unknown keys
// are INVALID_ARGUMENT naming the path ("optimization.epoch: unknown field").
// Plain functions; thread-safe.
#ifndef TERN_CLI_JOB_FILE_H_
#define TERN_CLI_JOB_FILE_H_

#include <google/protobuf/descriptor.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "tern/v1/job.pb.h"

namespace tern::cli {

// Reads and parses `path` (see above). NOT_FOUND when it cannot be read,
// INVALID_ARGUMENT for a syntax error or a bad field.
StatusOr<v1::JobSpec> LoadJobSpec(const std::string& path);
// The same for text already read; `yaml` picks the format.
StatusOr<v1::JobSpec> ParseJobSpec(std::string_view text, bool yaml);
// YAML text to the proto3 JSON of message type `type` (as described above).
StatusOr<std::string> YamlToProtoJson(std::string_view yaml,
                                      const google::protobuf::Descriptor& type);
// An enum value from its full name, its name without the enum's prefix, in
// any case, '-' for '_' ("hla-no-rescale"), or its number.
StatusOr<int> ParseEnumValue(const google::protobuf::EnumDescriptor& type,
                             const std::string& text);

// `ternctl submit` flags that override the file; unset ones change nothing.
struct SpecOverrides {
  std::optional<std::string> name;
  std::optional<std::string> method;  // as ParseEnumValue accepts: "twn"
  std::optional<std::string> device;  // "cpu" or "cuda"
  std::optional<int> epochs;
  std::optional<int> ranks;
  std::optional<int> batch_size;
  std::optional<int> priority;
  std::optional<double> lr;
  std::optional<bool> cuda_graph;     // optimization.cuda_graph
  std::vector<std::string> labels;    // "key=value"; the value may be empty
};

// INVALID_ARGUMENT naming the flag for an unknown method or device or a
// label without '='. Ranges are left to the server.
Status ApplyOverrides(const SpecOverrides& overrides, v1::JobSpec* spec);

}  // namespace tern::cli

#endif  // TERN_CLI_JOB_FILE_H_
