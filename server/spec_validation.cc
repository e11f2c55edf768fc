#include "server/spec_validation.h"

#include <google/protobuf/util/json_util.h>

#include <nlohmann/json.hpp>

#include "spec/validate.h"

namespace tern::server {

Status ValidateJobSpec(const v1::JobSpec& spec, const std::string& prefix) {
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;  // as tern-agent writes it
  std::string text;
  if (const auto printed = google::protobuf::util::MessageToJsonString(spec, &text, print);
      !printed.ok()) {
    return InvalidArgumentError("job spec: not printable as JSON: " + printed.ToString());
  }
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return InternalError("the printed spec is not JSON: " + text);
  return spec::ViolationsToStatus(spec::CheckJobSpec(json), prefix);
}

}  // namespace tern::server
