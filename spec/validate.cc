#include "spec/validate.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "common/error_reasons.h"
#include "common/utf8.h"
#include "spec/rules.h"

namespace tern::spec {
namespace {

using json = nlohmann::json;

constexpr size_t kMaxNameLength = 128;
constexpr size_t kMaxLabels = 32;
constexpr size_t kMaxLabelKeyLength = 63;
constexpr size_t kMaxLabelValueLength = 256;

std::string Num(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) {
    return std::to_string(static_cast<int64_t>(v));
  }
  std::ostringstream out;
  out << v;
  return out.str();
}

bool IsLabelKey(const std::string& key) {
  if (key.empty() || key.size() > kMaxLabelKeyLength) return false;
  if (key[0] < 'a' || key[0] > 'z') return false;
  for (char c : key) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
                    c == '-' || c == '/';
    if (!ok) return false;
  }
  return true;
}

// An integer given as a JSON integer or a decimal string (proto3 JSON).
std::optional<int64_t> AsInteger(const json& v) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return std::numeric_limits<int64_t>::max();  // out of every field's range
    }
    return v.get<int64_t>();
  }
  if (!v.is_string()) return std::nullopt;
  const std::string s = v.get<std::string>();
  const size_t sign = !s.empty() && s[0] == '-' ? 1 : 0;
  if (s.size() == sign || s.size() > 19 + sign) return std::nullopt;
  for (size_t i = sign; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return std::nullopt;
  }
  return std::stoll(s);
}

class Checker {
 public:
  std::vector<Violation> Run(const json& spec, json* normalized) {
    json out = json::object();
    Walk(spec, "", normalized != nullptr ? &out : nullptr);
    CheckFields();
    CheckCrossFields();
    if (normalized != nullptr) *normalized = std::move(out);
    return std::move(violations_);
  }

 private:
  void Fail(const std::string& path, const std::string& rule) {
    violations_.push_back({path, rule});
    bad_.insert(path);
  }

  // Type checks, key by key; valid values go to `values_` and, unless it is
  // null, `out`.
  void Walk(const json& object, const std::string& prefix, json* out) {
    for (const auto& item : object.items()) {
      const std::string path = prefix.empty() ? item.key() : prefix + "." + item.key();
      const Field* field = FindField(path);
      if (field == nullptr) {
        Fail(path, "unknown field");
        continue;
      }
      const json& v = item.value();
      if (v.is_null()) continue;
      if (field->type == Type::kMessage) {
        if (!v.is_object()) {
          Fail(path, "expected an object");
          continue;
        }
        if (out == nullptr) {
          Walk(v, path, nullptr);
          continue;
        }
        json child = json::object();
        Walk(v, path, &child);
        (*out)[item.key()] = std::move(child);
        continue;
      }
      std::optional<json> value = Read(*field, v);
      if (!value) continue;
      if (out != nullptr) (*out)[item.key()] = *value;
      values_[path] = std::move(*value);
    }
  }

  std::optional<json> Read(const Field& f, const json& v) {
    switch (f.type) {
      case Type::kString:
        if (v.is_string()) return v;
        Fail(f.path, "expected a string");
        return std::nullopt;
      case Type::kBool:
        if (v.is_boolean()) return v;
        Fail(f.path, "expected true or false");
        return std::nullopt;
      case Type::kInt32:
      case Type::kUint32:
        return ReadInteger(f.path, f.type, v);
      case Type::kDouble:
        if (v.is_number()) return v.get<double>();
        if (v.is_string()) {
          const std::string s = v.get<std::string>();
          const double inf = std::numeric_limits<double>::infinity();
          if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
          if (s == "Infinity") return inf;
          if (s == "-Infinity") return -inf;
        }
        Fail(f.path, "expected a number");
        return std::nullopt;
      case Type::kEnum:
        return ReadEnum(f, v);
      case Type::kRepeatedInt32: {
        json list = json::array();
        bool ok = v.is_array();
        for (size_t i = 0; ok && i < v.size(); ++i) {
          const std::optional<int64_t> e = AsInteger(v[i]);
          ok = e && *e >= std::numeric_limits<int32_t>::min() &&
               *e <= std::numeric_limits<int32_t>::max();
          if (ok) list.push_back(*e);
        }
        if (ok) return list;
        Fail(f.path, "expected a list of integers");
        return std::nullopt;
      }
      case Type::kStringMap: {
        bool ok = v.is_object();
        if (ok) {
          for (const auto& item : v.items()) ok = ok && item.value().is_string();
        }
        if (ok) return v;
        Fail(f.path, "expected an object of strings");
        return std::nullopt;
      }
      case Type::kMessage:
        break;
    }
    return std::nullopt;
  }

  std::optional<json> ReadInteger(const std::string& path, Type type, const json& v) {
    const std::optional<int64_t> n = AsInteger(v);
    if (!n) {
      Fail(path, v.is_string() ? "expected an integer, got " + Quoted(v.get<std::string>())
                               : "expected an integer");
      return std::nullopt;
    }
    const int64_t lo = type == Type::kUint32 ? 0 : std::numeric_limits<int32_t>::min();
    const int64_t hi = type == Type::kUint32 ? std::numeric_limits<uint32_t>::max()
                                             : std::numeric_limits<int32_t>::max();
    if (*n < lo || *n > hi) {
      Fail(path, "out of range");
      return std::nullopt;
    }
    return json(*n);
  }

  std::optional<json> ReadEnum(const Field& f, const json& v) {
    const std::vector<std::string>& names = f.enum_type->values;
    if (v.is_string()) {
      const std::string s = v.get<std::string>();
      for (const std::string& name : names) {
        if (s == name) return v;
      }
      std::string list;
      for (size_t i = 1; i < names.size(); ++i) list += (list.empty() ? "" : ", ") + names[i];
      Fail(f.path, "unknown value " + Quoted(s) + " (one of " + list + ")");
      return std::nullopt;
    }
    if (v.is_number_integer()) {
      const std::optional<int64_t> n = AsInteger(v);
      if (n && *n >= 0 && *n < static_cast<int64_t>(names.size())) return names[*n];
      Fail(f.path, "unknown " + f.enum_type->name + " value " + v.dump());
      return std::nullopt;
    }
    Fail(f.path, "expected an enum name");
    return std::nullopt;
  }

  bool Has(const std::string& path) const { return values_.count(path) > 0; }
  const json* Get(const std::string& path) const {
    auto it = values_.find(path);
    return it == values_.end() ? nullptr : &it->second;
  }
  std::string String(const std::string& path) const {
    const json* v = Get(path);
    return v == nullptr ? "" : v->get<std::string>();
  }
  std::string EnumValue(const std::string& path) const {
    const json* v = Get(path);
    return v == nullptr ? FindField(path)->enum_type->values[0] : v->get<std::string>();
  }
  bool Bool(const std::string& path) const {
    const json* v = Get(path);
    return v != nullptr && v->get<bool>();
  }
  // The value, else the default (0 where none is documented); nullopt when
  // the field itself is invalid.
  std::optional<double> Resolved(const std::string& path) const {
    if (bad_.count(path)) return std::nullopt;
    if (const json* v = Get(path)) return v->get<double>();
    const Field* f = FindField(path);
    return f->default_number.value_or(0);
  }

  void CheckNumber(const Field& f, const std::string& path, double v) {
    const Bounds& b = *f.bounds;
    const std::optional<double> lo = b.lo_field.empty() ? b.lo : Resolved(b.lo_field);
    const std::optional<double> hi = b.hi_field.empty() ? b.hi : Resolved(b.hi_field);
    if (!lo || !hi) return;  // the other field is reported already
    const bool ok = std::isfinite(v) && (b.lo_open ? v > *lo : v >= *lo) &&
                    (b.hi_open || std::isinf(*hi) ? v < *hi : v <= *hi);
    if (ok) return;
    if (std::isinf(*hi)) {
      Fail(path,
           std::string("must be ") + (b.lo_open ? "> " : ">= ") + Num(*lo) + ", got " + Num(v));
      return;
    }
    Fail(path, std::string("must be in ") + (b.lo_open ? "(" : "[") + Num(*lo) + ", " + Num(*hi) +
                   (b.hi_open ? ")" : "]") + ", got " + Num(v));
  }

  // Ranges, required fields and allowed strings.
  // Fields whose bounds name another field come second, once that field
  // has been checked.
  void CheckFields() {
    for (const bool relative : {false, true}) {
      for (const Field& f : JobSpecFields()) {
        const bool is_relative =
            f.bounds && (!f.bounds->lo_field.empty() || !f.bounds->hi_field.empty());
        if (is_relative == relative) CheckField(f);
      }
    }
  }

  void CheckField(const Field& f) {
    {
      if (bad_.count(f.path)) return;
      const json* v = Get(f.path);
      if (!f.choices.empty() && v != nullptr && !v->get<std::string>().empty()) {
        bool known = false;
        std::string list;
        for (const std::string& c : f.choices) {
          known = known || c == *v;
          list += (list.empty() ? "" : ", ") + c;
        }
        if (!known) {
          Fail(f.path,
               "must be one of " + list + " (or empty), got " + Quoted(v->get<std::string>()));
        }
      }
      if (!f.bounds) return;
      if (f.type == Type::kRepeatedInt32) {
        if (v == nullptr) return;
        for (size_t i = 0; i < v->size(); ++i) {
          CheckNumber(f, f.path + "[" + std::to_string(i) + "]", (*v)[i].get<double>());
        }
        return;
      }
      if (v == nullptr && f.presence) return;
      const double value = v == nullptr ? 0 : v->get<double>();
      if (f.required && !(value > 0)) {
        Fail(f.path, "must be > 0 (required), got " + Num(value));
        return;
      }
      CheckNumber(f, f.path, value);
    }
  }

  void CheckCrossFields() {
    if (const size_t n = String("name").size(); n > kMaxNameLength) {
      Fail("name",
           "at most " + std::to_string(kMaxNameLength) + " characters, got " + std::to_string(n));
    }
    if (const json* labels = Get("labels")) {
      if (labels->size() > kMaxLabels) {
        Fail("labels", "at most " + std::to_string(kMaxLabels) + " entries, got " +
                           std::to_string(labels->size()));
      }
      for (const auto& item : labels->items()) {
        const std::string path = "labels[" + Quoted(item.key()) + "]";
        if (!IsLabelKey(item.key())) {
          Fail(path,
               "key must be 1..63 characters of [a-z0-9_.-/] starting with a lowercase letter");
        }
        if (item.value().get<std::string>().size() > kMaxLabelValueLength) {
          Fail(path, "value must be at most 256 characters");
        }
      }
    }
    const std::string kind = EnumValue("dataset.kind");
    const bool needs_path =
        kind != "DATASET_UNSPECIFIED" && kind != "DATASET_IDX" && kind != "DATASET_SYNTHETIC";
    if (!bad_.count("dataset.kind") && needs_path && String("dataset.path").empty()) {
      Fail("dataset.path", "required for " + kind);
    }
    const bool detection = EnumValue("task") == "TASK_DETECTION";
    if (!bad_.count("task") && !bad_.count("dataset.kind")) {
      if (detection && kind != "DATASET_COCO") {
        Fail("dataset.kind", "TASK_DETECTION needs DATASET_COCO");
      } else if (!detection && kind == "DATASET_COCO") {
        Fail("dataset.kind", "DATASET_COCO needs TASK_DETECTION");
      }
    }
    if (detection && Has("dataset.input_size") && !bad_.count("dataset.input_size")) {
      const int64_t size = Get("dataset.input_size")->get<int64_t>();
      if (size < 64 || size % 32 != 0) {
        Fail("dataset.input_size",
             "detection needs a multiple of 32 in [64, 2048] (unset: 512), got " +
                 std::to_string(size));
      }
    }
    if (const json* milestones = Get("optimization.step_milestones")) {
      int64_t previous = std::numeric_limits<int64_t>::min();
      for (size_t i = 0; i < milestones->size(); ++i) {
        const std::string path = "optimization.step_milestones[" + std::to_string(i) + "]";
        const int64_t m = (*milestones)[i].get<int64_t>();
        if (!bad_.count(path) && m <= previous) Fail(path, "must be strictly increasing");
        previous = m;
      }
    }
    const std::optional<double> batch = Resolved("optimization.batch_size");
    const std::optional<double> ranks = Resolved("resources.ranks");
    const std::optional<double> micro = Resolved("optimization.micro_batches");
    if (batch && ranks && micro) {
      const int64_t group = static_cast<int64_t>(*ranks) * static_cast<int64_t>(*micro);
      if (static_cast<int64_t>(*batch) % group != 0) {
        Fail("optimization.batch_size",
             "must be a multiple of resources.ranks × optimization.micro_batches = " +
                 std::to_string(group) + ", got " + Num(*batch));
      }
    }
    if (Bool("optimization.cuda_graph")) {  // what a captured training step cannot hold
      const char* why = EnumValue("resources.device_kind") != "DEVICE_CUDA"
                            ? "needs resources.device_kind DEVICE_CUDA"
                        : detection ? "needs TASK_CLASSIFICATION (detection batches vary in size)"
                        : micro && *micro != 1 ? "needs optimization.micro_batches 1"
                        : EnumValue("quantization.method") == "METHOD_TTQ"
                            ? "does not support METHOD_TTQ"
                            : nullptr;
      if (why != nullptr) Fail("optimization.cuda_graph", why);
    }
    const std::string directory = String("checkpoint.directory");
    if (!directory.empty() && directory[0] != '/') {
      Fail("checkpoint.directory", "must be an absolute path, got " + Quoted(directory));
    }
  }

  std::vector<Violation> violations_;
  std::set<std::string> bad_;           // paths with a violation
  std::map<std::string, json> values_;  // path -> valid value
};

}  // namespace

std::vector<Violation> CheckJobSpec(const json& spec, json* normalized) {
  if (!spec.is_object()) return {{"(root)", "expected a JSON object"}};
  return Checker().Run(spec, normalized);
}

Status ViolationsToStatus(const std::vector<Violation>& violations, const std::string& prefix) {
  if (violations.empty()) return OkStatus();
  std::string message;
  ErrorDetails details;
  details.reason = error_reason::kSpecInvalid;
  for (const Violation& v : violations) {
    if (!message.empty()) message += "; ";
    message += prefix + v.path + ": " + v.rule;
    details.field_violations.push_back({prefix + v.path, v.rule});
  }
  return InvalidArgumentError(std::move(message)).WithDetails(std::move(details));
}

}  // namespace tern::spec
