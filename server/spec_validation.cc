#include "server/spec_validation.h"

#include <google/protobuf/util/json_util.h>

#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "common/error_reasons.h"
#include "common/utf8.h"
#include "server/proto_json.h"
#include "spec/validate.h"

namespace tern::server {
namespace {

using google::protobuf::FieldDescriptor;

void CollectUnknownFields(const google::protobuf::Message& message, const std::string& path,
                          std::vector<FieldViolation>* out) {
  const google::protobuf::Reflection* reflection = message.GetReflection();
  const google::protobuf::UnknownFieldSet& unknown = reflection->GetUnknownFields(message);
  std::set<int> numbers;  // a repeated unknown field is one violation
  for (int i = 0; i < unknown.field_count(); ++i) numbers.insert(unknown.field(i).number());
  for (const int number : numbers) {
    out->push_back({path, "unknown field number " + std::to_string(number)});
  }
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    if (field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    const std::string field_path = path + "." + field->name();
    if (!field->is_repeated()) {
      CollectUnknownFields(reflection->GetMessage(message, field), field_path, out);
      continue;
    }
    for (int i = 0; i < reflection->FieldSize(message, field); ++i) {
      const google::protobuf::Message& element = reflection->GetRepeatedMessage(message, field, i);
      std::string index = std::to_string(i);
      if (field->is_map()) {  // name the entry by its key where it is a string
        const FieldDescriptor* key = element.GetDescriptor()->map_key();
        if (key->cpp_type() == FieldDescriptor::CPPTYPE_STRING) {
          index = Quoted(element.GetReflection()->GetString(element, key));
        }
      }
      CollectUnknownFields(element, field_path + "[" + index + "]", out);
    }
  }
}

}  // namespace

Status RefuseUnknownFields(const google::protobuf::Message& message, const std::string& path) {
  ErrorDetails details;
  CollectUnknownFields(message, path, &details.field_violations);
  if (details.field_violations.empty()) return OkStatus();
  std::string text;
  for (const FieldViolation& v : details.field_violations) {
    if (!text.empty()) text += "; ";
    text += v.field + ": " + v.description;
  }
  details.reason = error_reason::kSpecUnknownField;
  return InvalidArgumentError(text +
                              " (fields this ternd does not know, sent by a newer client: "
                              "upgrade ternd or leave them out)")
      .WithDetails(std::move(details));
}

Status ValidateJobSpec(const v1::JobSpec& spec, const std::string& prefix) {
  // The spec as protobuf's JSON printer gives it, without printing it.
  if (std::optional<nlohmann::json> json = ProtoToJson(spec)) {
    return spec::ViolationsToStatus(spec::CheckJobSpec(*json), prefix);
  }
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;  // as tern-agent writes it
  std::string text;
  if (const auto printed = google::protobuf::util::MessageToJsonString(spec, &text, print);
      !printed.ok()) {
    return InvalidArgumentError("job spec: not printable as JSON: " + printed.ToString())
        .WithReason(error_reason::kSpecInvalid)
        .WithFieldViolation("spec", "not printable as JSON: " + printed.ToString());
  }
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return InternalError("the printed spec is not JSON: " + text);
  return spec::ViolationsToStatus(spec::CheckJobSpec(json), prefix);
}

}  // namespace tern::server
