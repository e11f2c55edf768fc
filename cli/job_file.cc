#include "cli/job_file.h"

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/utf8.h"

namespace tern::cli {
namespace {

namespace pb = google::protobuf;
using json = nlohmann::json;

std::string Upper(std::string s) {
  for (char& c : s) c = c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::string Where(const std::string& path, const YAML::Node& node) {
  const YAML::Mark m = node.Mark();
  std::string s = path.empty() ? "(top level)" : path;
  if (m.line >= 0) s += " (line " + std::to_string(m.line + 1) + ")";
  return s;
}

bool ParseInt(const std::string& s, long long* out) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 0);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

bool ParseDouble(const std::string& s, double* out) {
  if (s == ".inf" || s == ".Inf" || s == "+.inf") {
    *out = std::numeric_limits<double>::infinity();
    return true;
  }
  if (s == "-.inf" || s == "-.Inf") {
    *out = -std::numeric_limits<double>::infinity();
    return true;
  }
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

StatusOr<json> ConvertMessage(const YAML::Node& node, const pb::Descriptor& type,
                              const std::string& path);

// One scalar (or message) value of `field`.
StatusOr<json> ConvertValue(const YAML::Node& node, const pb::FieldDescriptor& field,
                            const std::string& path) {
  if (field.cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
    return ConvertMessage(node, *field.message_type(), path);
  }
  if (!node.IsScalar()) return InvalidArgumentError(Where(path, node) + ": expected a single value");
  const std::string& s = node.Scalar();
  switch (field.cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_STRING:
      if (!IsValidUtf8(s)) return InvalidArgumentError(Where(path, node) + ": not valid UTF-8 text");
      return json(s);
    case pb::FieldDescriptor::CPPTYPE_BOOL: {
      const std::string u = Upper(s);
      if (u == "TRUE" || u == "YES" || u == "ON") return json(true);
      if (u == "FALSE" || u == "NO" || u == "OFF") return json(false);
      return InvalidArgumentError(Where(path, node) + ": expected true or false, got " + Quoted(s));
    }
    case pb::FieldDescriptor::CPPTYPE_INT32:
    case pb::FieldDescriptor::CPPTYPE_UINT32:
    case pb::FieldDescriptor::CPPTYPE_INT64:
    case pb::FieldDescriptor::CPPTYPE_UINT64: {
      long long v = 0;
      if (!ParseInt(s, &v)) {
        return InvalidArgumentError(Where(path, node) + ": expected an integer, got " + Quoted(s));
      }
      const bool is32 = field.cpp_type() == pb::FieldDescriptor::CPPTYPE_INT32 ||
                        field.cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT32;
      const bool is_unsigned = field.cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT32 ||
                               field.cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT64;
      if ((is_unsigned && v < 0) ||
          (is32 && !is_unsigned && (v < std::numeric_limits<int32_t>::min() ||
                                    v > std::numeric_limits<int32_t>::max())) ||
          (is32 && is_unsigned && v > static_cast<long long>(std::numeric_limits<uint32_t>::max()))) {
        return InvalidArgumentError(Where(path, node) + ": " + s + " is out of range");
      }
      return json(v);
    }
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
    case pb::FieldDescriptor::CPPTYPE_DOUBLE: {
      double v = 0;
      if (!ParseDouble(s, &v)) {
        return InvalidArgumentError(Where(path, node) + ": expected a number, got " + Quoted(s));
      }
      if (std::isinf(v)) return json(v > 0 ? "Infinity" : "-Infinity");
      return json(v);
    }
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      StatusOr<int> v = ParseEnumValue(*field.enum_type(), s);
      if (!v.ok()) return InvalidArgumentError(Where(path, node) + ": " + v.status().message());
      return json(field.enum_type()->FindValueByNumber(*v)->name());
    }
    default:
      return InvalidArgumentError(Where(path, node) + ": unsupported field type");
  }
}

StatusOr<json> ConvertMessage(const YAML::Node& node, const pb::Descriptor& type,
                              const std::string& path) {
  json out = json::object();
  if (node.IsNull()) return out;
  if (!node.IsMap()) {
    return InvalidArgumentError(Where(path, node) + ": expected a mapping of " + type.name() +
                                " fields");
  }
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    const std::string field_path = path.empty() ? key : path + "." + key;
    const pb::FieldDescriptor* field = type.FindFieldByName(key);
    for (int i = 0; !field && i < type.field_count(); ++i) {
      if (type.field(i)->json_name() == key) field = type.field(i);  // lowerCamelCase
    }
    if (!field) return InvalidArgumentError(Where(field_path, kv.first) + ": unknown field");
    const YAML::Node& value = kv.second;
    if (value.IsNull()) continue;  // `key:` with nothing: unset
    if (field->is_map()) {
      if (!value.IsMap()) return InvalidArgumentError(Where(field_path, value) + ": expected a mapping");
      const pb::FieldDescriptor* value_field = field->message_type()->FindFieldByName("value");
      json m = json::object();
      for (const auto& entry : value) {
        const std::string k = entry.first.as<std::string>();
        if (!IsValidUtf8(k)) {
          return InvalidArgumentError(Where(field_path, entry.first) + ": a key is not valid UTF-8 text");
        }
        TERN_ASSIGN_OR_RETURN(json v, ConvertValue(entry.second, *value_field, field_path + "." + k));
        m[k] = std::move(v);
      }
      out[field->name()] = std::move(m);
    } else if (field->is_repeated()) {
      json a = json::array();
      if (value.IsSequence()) {
        for (size_t i = 0; i < value.size(); ++i) {
          TERN_ASSIGN_OR_RETURN(json v, ConvertValue(value[i], *field,
                                                     field_path + "[" + std::to_string(i) + "]"));
          a.push_back(std::move(v));
        }
      } else {  // a single value for a list
        TERN_ASSIGN_OR_RETURN(json v, ConvertValue(value, *field, field_path));
        a.push_back(std::move(v));
      }
      out[field->name()] = std::move(a);
    } else {
      TERN_ASSIGN_OR_RETURN(json v, ConvertValue(value, *field, field_path));
      out[field->name()] = std::move(v);
    }
  }
  return out;
}

bool LooksLikeJson(const std::string& path, std::string_view text) {
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) return true;
  const size_t first = text.find_first_not_of(" \t\r\n");
  return first != std::string_view::npos && text[first] == '{';
}

}  // namespace

StatusOr<int> ParseEnumValue(const pb::EnumDescriptor& type, const std::string& text) {
  long long number = 0;
  if (ParseInt(text, &number)) {
    if (const pb::EnumValueDescriptor* v = type.FindValueByNumber(static_cast<int>(number))) {
      return v->number();
    }
  }
  const std::string u = Upper(text);
  // METHOD_HLA matches "METHOD_HLA" and "HLA" (the name after its prefix).
  for (int i = 0; i < type.value_count(); ++i) {
    const std::string& name = type.value(i)->name();
    const size_t underscore = name.find('_');
    if (name == u || (underscore != std::string::npos && name.substr(underscore + 1) == u)) {
      return type.value(i)->number();
    }
  }
  // JOB_STATE_QUEUED: also "QUEUED" (a longer prefix), when unambiguous.
  const pb::EnumValueDescriptor* suffix_match = nullptr;
  int suffix_matches = 0;
  std::string all;
  for (int i = 0; i < type.value_count(); ++i) {
    const std::string& name = type.value(i)->name();
    if (name.find("UNSPECIFIED") != std::string::npos) continue;
    all += (all.empty() ? "" : ", ") + name;
    if (name.size() > u.size() + 1 && name.compare(name.size() - u.size(), u.size(), u) == 0 &&
        name[name.size() - u.size() - 1] == '_') {
      suffix_match = type.value(i);
      ++suffix_matches;
    }
  }
  if (suffix_matches == 1) return suffix_match->number();
  return InvalidArgumentError("unknown " + type.name() + " '" + text + "' (one of " + all + ")");
}

StatusOr<std::string> YamlToProtoJson(std::string_view yaml, const pb::Descriptor& type) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(std::string("YAML: ") + e.what());
  }
  try {
    TERN_ASSIGN_OR_RETURN(json j, ConvertMessage(root, type, ""));
    return j.dump();
  } catch (const YAML::Exception& e) {  // e.g. a non-scalar mapping key
    return InvalidArgumentError(std::string("YAML: ") + e.what());
  }
}

StatusOr<v1::JobSpec> ParseJobSpec(std::string_view text, bool yaml) {
  std::string json_text;
  if (yaml) {
    TERN_ASSIGN_OR_RETURN(json_text, YamlToProtoJson(text, *v1::JobSpec::descriptor()));
  } else {
    json_text = std::string(text);
  }
  v1::JobSpec spec;
  const auto parsed = pb::util::JsonStringToMessage(json_text, &spec, pb::util::JsonParseOptions());
  if (!parsed.ok()) {
    return InvalidArgumentError(std::string(yaml ? "" : "JSON: ") + std::string(parsed.message()));
  }
  return spec;
}

StatusOr<v1::JobSpec> LoadJobSpec(const std::string& path) {
  StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return NotFoundError(text.status().message());
  StatusOr<v1::JobSpec> spec = ParseJobSpec(*text, !LooksLikeJson(path, *text));
  if (!spec.ok()) return spec.status().WithContext(path);
  return spec;
}

Status ApplyOverrides(const SpecOverrides& o, v1::JobSpec* spec) {
  if (o.name) spec->set_name(*o.name);
  if (o.method) {
    StatusOr<int> m = ParseEnumValue(*v1::QuantMethod_descriptor(), *o.method);
    if (!m.ok()) return InvalidArgumentError("--method: " + m.status().message());
    spec->mutable_quantization()->set_method(static_cast<v1::QuantMethod>(*m));
  }
  if (o.device) {
    StatusOr<int> d = ParseEnumValue(*v1::DeviceKind_descriptor(), *o.device);
    if (!d.ok()) return InvalidArgumentError("--device: " + d.status().message());
    spec->mutable_resources()->set_device_kind(static_cast<v1::DeviceKind>(*d));
  }
  if (o.epochs) spec->mutable_optimization()->set_epochs(*o.epochs);
  if (o.ranks) spec->mutable_resources()->set_ranks(*o.ranks);
  if (o.batch_size) spec->mutable_optimization()->set_batch_size(*o.batch_size);
  if (o.priority) spec->set_priority(*o.priority);
  if (o.lr) spec->mutable_optimization()->set_lr(*o.lr);
  if (o.cuda_graph) spec->mutable_optimization()->set_cuda_graph(*o.cuda_graph);
  for (const std::string& label : o.labels) {
    const size_t eq = label.find('=');
    if (eq == std::string::npos || eq == 0) {
      return InvalidArgumentError("--label: expected KEY=VALUE, got " + Quoted(label));
    }
    (*spec->mutable_labels())[label.substr(0, eq)] = label.substr(eq + 1);
  }
  return OkStatus();
}

}  // namespace tern::cli
