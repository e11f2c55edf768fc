// ProtoToJson: a message as the JSON value protobuf's MessageToJsonString
// prints with preserve_proto_field_names (proto field names, fields at their
// default omitted, 64-bit integers as strings, enums by name, bytes in
// base64, NaN and infinities as strings), built by reflection straight into
// nlohmann::json instead of printed and parsed again: SubmitJob checks every
// spec as JSON (spec/validate.h), and protobuf's printer was about a fifth of
// ternd's CPU per submission (docs/BENCHMARKS.md).
//
// nullopt for a message that holds a well-known type (google.protobuf.*,
// whose JSON forms are special) anywhere: print those with protobuf.
// tests/server/proto_json_test.cc compares the two on random messages.
#ifndef TERN_SERVER_PROTO_JSON_H_
#define TERN_SERVER_PROTO_JSON_H_

#include <google/protobuf/message.h>

#include <nlohmann/json.hpp>
#include <optional>

namespace tern::server {

std::optional<nlohmann::json> ProtoToJson(const google::protobuf::Message& message);

}  // namespace tern::server

#endif  // TERN_SERVER_PROTO_JSON_H_
