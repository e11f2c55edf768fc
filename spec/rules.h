// The rules of a valid tern.v1.JobSpec, in one place: every field's JSON
// path, type, range, default and allowed values (this table), and the
// cross-field rules (spec/validate.h). ternd checks a submitted spec with them
// and tern-trainer checks the spec it reads, so a spec ternd accepts is one
// the trainer accepts. proto/tern/v1/job.proto documents the same numbers;
// tests/spec checks the table against the proto's descriptors and comments.
//
// No protobuf and no LibTorch here. Constant data; thread-safe.
#ifndef TERN_SPEC_RULES_H_
#define TERN_SPEC_RULES_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tern::spec {

// Defaults of string fields that a spec leaves empty (job.proto).
inline constexpr char kDefaultIdxPath[] = "/usr/share/datasets/fashion-mnist";
inline constexpr char kDefaultTrainAnnotations[] = "annotations/instances_train.json";
inline constexpr char kDefaultValAnnotations[] = "annotations/instances_val.json";
inline constexpr char kDefaultTrainImages[] = "train";
inline constexpr char kDefaultValImages[] = "val";

enum class Type {
  kString,
  kBool,
  kInt32,
  kUint32,
  kDouble,
  kEnum,
  kRepeatedInt32,
  kStringMap,
  kMessage
};

// A proto enum: its value names, indexed by number (tern's enums are dense).
struct EnumType {
  std::string name;                 // "DatasetKind"
  std::string prefix;               // "DATASET_", shared by every value
  std::vector<std::string> values;  // "DATASET_UNSPECIFIED", "DATASET_IDX", ...
};

// A numeric range. An end given by `*_field` is that field's value (or its
// default when unset); `lo`/`hi` are then unused. An infinite end is open.
struct Bounds {
  double lo = 0;
  double hi = 0;
  bool lo_open = false;
  bool hi_open = false;
  std::string lo_field;  // e.g. "quantization.kappa_start"
  std::string hi_field;  // e.g. "optimization.epochs"
};

struct Field {
  std::string path;  // JSON key path: "optimization.lr"
  Type type = Type::kString;
  bool presence = false;                 // proto3 `optional`: unset means the default
  bool required = false;                 // must be set (and > 0 for numbers)
  std::optional<Bounds> bounds;          // numbers (each element of a repeated field)
  std::optional<double> default_number;  // where the default is one number
  const EnumType* enum_type = nullptr;   // kEnum
  std::vector<std::string> choices;      // kString: allowed values ("" too)
};

// Every field of JobSpec and its sub-messages, messages before their fields.
const std::vector<Field>& JobSpecFields();
// nullptr when `path` names no field.
const Field* FindField(std::string_view path);

// "DATASET_IMAGE_FOLDER" -> "image_folder": the trainer's spelling.
std::string EnumSuffix(const EnumType& type, const std::string& value);

}  // namespace tern::spec

#endif  // TERN_SPEC_RULES_H_
