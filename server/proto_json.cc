#include "server/proto_json.h"

#include <google/protobuf/descriptor.h>

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace tern::server {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;
using nlohmann::json;

std::string Base64(const std::string& bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (static_cast<uint8_t>(bytes[i]) << 16) |
                       (static_cast<uint8_t>(bytes[i + 1]) << 8) |
                       static_cast<uint8_t>(bytes[i + 2]);
    for (int shift = 18; shift >= 0; shift -= 6) out += kAlphabet[(v >> shift) & 63];
  }
  if (i + 1 == bytes.size()) {
    const uint32_t v = static_cast<uint8_t>(bytes[i]) << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == bytes.size()) {
    const uint32_t v =
        (static_cast<uint8_t>(bytes[i]) << 16) | (static_cast<uint8_t>(bytes[i + 1]) << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

// NaN and the infinities as protobuf spells them; else the number. A float
// goes through the decimal text protobuf prints for it (6 significant
// digits when they give the float back, else 9), so that it equals what
// parsing the printed text gives; a double is exact either way.
template <typename T>
json Floating(T value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  if constexpr (std::is_same_v<T, float>) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.*g", FLT_DIG, static_cast<double>(value));
    if (std::strtof(buffer, nullptr) != value) {
      std::snprintf(buffer, sizeof buffer, "%.*g", FLT_DIG + 3, static_cast<double>(value));
    }
    return json::parse(buffer);
  } else {
    return value;
  }
}

bool IsWellKnown(const google::protobuf::Descriptor* d) {
  return d->file()->package() == "google.protobuf";
}

std::optional<json> Convert(const Message& message);

// One value of `field` (element `index` of a repeated field, -1: singular).
std::optional<json> Value(const Message& m, const Reflection* r, const FieldDescriptor* f,
                          int index) {
  const bool rep = index >= 0;
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      return json(rep ? r->GetRepeatedInt32(m, f, index) : r->GetInt32(m, f));
    case FieldDescriptor::CPPTYPE_UINT32:
      return json(rep ? r->GetRepeatedUInt32(m, f, index) : r->GetUInt32(m, f));
    case FieldDescriptor::CPPTYPE_INT64:
      return json(std::to_string(rep ? r->GetRepeatedInt64(m, f, index) : r->GetInt64(m, f)));
    case FieldDescriptor::CPPTYPE_UINT64:
      return json(std::to_string(rep ? r->GetRepeatedUInt64(m, f, index) : r->GetUInt64(m, f)));
    case FieldDescriptor::CPPTYPE_DOUBLE:
      return Floating(rep ? r->GetRepeatedDouble(m, f, index) : r->GetDouble(m, f));
    case FieldDescriptor::CPPTYPE_FLOAT:
      return Floating(rep ? r->GetRepeatedFloat(m, f, index) : r->GetFloat(m, f));
    case FieldDescriptor::CPPTYPE_BOOL:
      return json(rep ? r->GetRepeatedBool(m, f, index) : r->GetBool(m, f));
    case FieldDescriptor::CPPTYPE_ENUM: {
      const int number = rep ? r->GetRepeatedEnumValue(m, f, index) : r->GetEnumValue(m, f);
      const google::protobuf::EnumValueDescriptor* value =
          f->enum_type()->FindValueByNumber(number);
      if (value == nullptr) return json(number);  // open enum, unknown value
      return json(value->name());
    }
    case FieldDescriptor::CPPTYPE_STRING: {
      std::string scratch;
      const std::string& s = rep ? r->GetRepeatedStringReference(m, f, index, &scratch)
                                 : r->GetStringReference(m, f, &scratch);
      return json(f->type() == FieldDescriptor::TYPE_BYTES ? Base64(s) : s);
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return Convert(rep ? r->GetRepeatedMessage(m, f, index) : r->GetMessage(m, f));
  }
  return std::nullopt;
}

std::optional<json> Convert(const Message& message) {
  const google::protobuf::Descriptor* descriptor = message.GetDescriptor();
  if (IsWellKnown(descriptor)) return std::nullopt;
  const Reflection* r = message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(message, &fields);  // the fields serialization writes
  json out = json::object();
  for (const FieldDescriptor* f : fields) {
    if (f->is_map()) {
      const FieldDescriptor* key = f->message_type()->map_key();
      const FieldDescriptor* value = f->message_type()->map_value();
      json object = json::object();
      for (int i = 0; i < r->FieldSize(message, f); ++i) {
        const Message& entry = r->GetRepeatedMessage(message, f, i);
        const Reflection* er = entry.GetReflection();
        std::optional<json> k = Value(entry, er, key, -1);
        std::optional<json> v = Value(entry, er, value, -1);
        if (!k || !v) return std::nullopt;
        object[k->is_string() ? k->get<std::string>() : k->dump()] = std::move(*v);
      }
      out[f->name()] = std::move(object);
    } else if (f->is_repeated()) {
      json array = json::array();
      for (int i = 0; i < r->FieldSize(message, f); ++i) {
        std::optional<json> v = Value(message, r, f, i);
        if (!v) return std::nullopt;
        array.push_back(std::move(*v));
      }
      out[f->name()] = std::move(array);
    } else {
      std::optional<json> v = Value(message, r, f, -1);
      if (!v) return std::nullopt;
      out[f->name()] = std::move(*v);
    }
  }
  return out;
}

}  // namespace

std::optional<json> ProtoToJson(const Message& message) { return Convert(message); }

}  // namespace tern::server
