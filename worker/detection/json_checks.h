// Internal to tern_detection_data: typed field access on nlohmann::json
// values that returns INVALID_ARGUMENT "<source>: <json path>: <problem>"
// instead of throwing. Not installed, not for use outside this folder.
#ifndef TERN_WORKER_DETECTION_JSON_CHECKS_H_
#define TERN_WORKER_DETECTION_JSON_CHECKS_H_

#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "common/status.h"

namespace tern::detection::internal {

using Json = nlohmann::json;

// Builds "<source>: <path>: <problem>" errors while walking the document.
class Checker {
 public:
  // `source` must outlive the checker.
  explicit Checker(const std::string& source) : source_(source) {}

  Status Invalid(const std::string& path, const std::string& problem) const {
    return InvalidArgumentError(source_ + ": " + path + ": " + problem);
  }

  // The member `key` of the object `obj` (at `path`), which must exist.
  StatusOr<const Json*> Member(const Json& obj, const std::string& path,
                               const char* key) const {
    const auto it = obj.find(key);
    if (it == obj.end())
      return Invalid(path, std::string("missing \"") + key + "\"");
    return &*it;
  }

  StatusOr<const Json*> Array(const Json& obj, const std::string& path,
                              const char* key) const {
    TERN_ASSIGN_OR_RETURN(const Json* v, Member(obj, path, key));
    if (!v->is_array()) {
      return Invalid(Join(path, key),
                     std::string("expected an array, got ") + v->type_name());
    }
    return v;
  }

  StatusOr<int64_t> Int(const Json& obj, const std::string& path,
                        const char* key) const {
    TERN_ASSIGN_OR_RETURN(const Json* v, Member(obj, path, key));
    if (v->is_number_unsigned()) {
      const uint64_t u = v->get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Invalid(Join(path, key), "integer out of range");
      }
      return static_cast<int64_t>(u);
    }
    if (v->is_number_integer()) return v->get<int64_t>();
    return Invalid(Join(path, key),
                   std::string("expected an integer, got ") + TypeOf(*v));
  }

  StatusOr<double> Number(const Json& v, const std::string& path) const {
    if (!v.is_number()) {
      return Invalid(path, std::string("expected a number, got ") + TypeOf(v));
    }
    const double d = v.get<double>();
    if (!std::isfinite(d)) return Invalid(path, "expected a finite number");
    return d;
  }

  StatusOr<std::string> String(const Json& obj, const std::string& path,
                               const char* key) const {
    TERN_ASSIGN_OR_RETURN(const Json* v, Member(obj, path, key));
    if (!v->is_string()) {
      return Invalid(Join(path, key),
                     std::string("expected a string, got ") + TypeOf(*v));
    }
    return v->get<std::string>();
  }

  // obj[key] as 4 finite numbers (a COCO [x, y, w, h] box).
  Status Box(const Json& obj, const std::string& path, const char* key,
             double out[4]) const {
    TERN_ASSIGN_OR_RETURN(const Json* v, Member(obj, path, key));
    const std::string box_path = Join(path, key);
    if (!v->is_array() || v->size() != 4) {
      return Invalid(box_path, "expected 4 numbers");
    }
    for (size_t k = 0; k < 4; ++k) {
      if (!(*v)[k].is_number()) return Invalid(box_path, "expected 4 numbers");
      out[k] = (*v)[k].get<double>();
      if (!std::isfinite(out[k])) {
        return Invalid(box_path, "expected 4 finite numbers");
      }
    }
    return OkStatus();
  }

  static std::string Join(const std::string& path, const char* key) {
    return path.empty() ? key : path + "." + key;
  }
  static std::string Index(const char* array, size_t i) {
    return std::string(array) + "[" + std::to_string(i) + "]";
  }
  static std::string TypeOf(const Json& v) {
    return v.is_number_float() ? "a fractional number" : v.type_name();
  }

 private:
  const std::string& source_;
};

// Parses `text`; DATA_LOSS "<source>: not valid JSON: ..." when it is not
// JSON (e.g. a truncated file).
inline StatusOr<Json> ParseJson(std::string_view text,
                                const std::string& source) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    return DataLossError(source + ": not valid JSON: " + e.what());
  }
}

}  // namespace tern::detection::internal

#endif  // TERN_WORKER_DETECTION_JSON_CHECKS_H_
