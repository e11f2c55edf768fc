#include "model_io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "common/check.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this code copies it as host memory"
#endif

namespace tern::model_io {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // as the format's reference reader
constexpr int64_t kMaxNumel = int64_t{1} << 40;

constexpr std::pair<Dtype, const char*> kDtypeNames[] = {
    {Dtype::kF64, "F64"}, {Dtype::kF32, "F32"},   {Dtype::kF16, "F16"}, {Dtype::kBF16, "BF16"},
    {Dtype::kI64, "I64"}, {Dtype::kI32, "I32"},   {Dtype::kI16, "I16"}, {Dtype::kI8, "I8"},
    {Dtype::kU8, "U8"},   {Dtype::kBool, "BOOL"},
};

Status Bad(const std::string& what) { return DataLossError("corrupt safetensors file: " + what); }

uint64_t ReadU64(std::string_view bytes) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v |= uint64_t{static_cast<uint8_t>(bytes[i])} << (8 * i);
  return v;
}

StatusOr<SafetensorsTensor> ParseEntry(const std::string& name, const json& entry,
                                       std::string_view data) {
  SafetensorsTensor t;
  t.name = name;
  if (!entry.is_object() || !entry.contains("dtype") || !entry["dtype"].is_string() ||
      !entry.contains("shape") || !entry["shape"].is_array() || !entry.contains("data_offsets") ||
      !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2) {
    return Bad("tensor '" + name + "' lacks dtype, shape or data_offsets [begin, end]");
  }
  const std::string dtype = entry["dtype"].get<std::string>();
  const auto* found = std::find_if(std::begin(kDtypeNames), std::end(kDtypeNames),
                                   [&](const auto& d) { return dtype == d.second; });
  if (found == std::end(kDtypeNames)) {
    return Bad("tensor '" + name + "' has unsupported dtype '" + dtype + "'");
  }
  t.dtype = found->first;
  int64_t numel = 1;
  for (const json& d : entry["shape"]) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t{1} << 40)) {
      return Bad("tensor '" + name + "' has a bad dimension");
    }
    t.shape.push_back(d.get<int64_t>());
    if (t.shape.back() > 0 && numel > kMaxNumel / t.shape.back()) {
      return Bad("tensor '" + name + "' is too large");
    }
    numel *= t.shape.back();
  }
  const json& offsets = entry["data_offsets"];
  if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
    return Bad("tensor '" + name + "' has non-integer data_offsets");
  }
  const uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
  if (begin > end || end > data.size()) {
    return Bad("tensor '" + name + "' range [" + std::to_string(begin) + ", " +
               std::to_string(end) + ") outside the " + std::to_string(data.size()) +
               " data bytes (truncated?)");
  }
  if (end - begin != static_cast<uint64_t>(numel) * DtypeSize(t.dtype)) {
    return Bad("tensor '" + name + "' has " + std::to_string(end - begin) + " bytes for " +
               std::to_string(numel) + " " + dtype + " elements");
  }
  t.data.assign(data.substr(begin, end - begin));
  return t;
}

}  // namespace

const char* DtypeName(Dtype dtype) {
  for (const auto& [d, name] : kDtypeNames) {
    if (d == dtype) return name;
  }
  TERN_CHECK(false) << "unknown dtype";
  return "";
}

size_t DtypeSize(Dtype dtype) {
  switch (dtype) {
    case Dtype::kF64:
    case Dtype::kI64:
      return 8;
    case Dtype::kF32:
    case Dtype::kI32:
      return 4;
    case Dtype::kF16:
    case Dtype::kBF16:
    case Dtype::kI16:
      return 2;
    case Dtype::kI8:
    case Dtype::kU8:
    case Dtype::kBool:
      return 1;
  }
  return 1;
}

int64_t SafetensorsTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsTensor FloatTensor(std::string name, std::vector<int64_t> shape,
                              const std::vector<float>& values) {
  SafetensorsTensor t{std::move(name), Dtype::kF32, std::move(shape), {}};
  t.data.assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  return t;
}

SafetensorsTensor Int8Tensor(std::string name, std::vector<int64_t> shape,
                             const std::vector<int8_t>& values) {
  SafetensorsTensor t{std::move(name), Dtype::kI8, std::move(shape), {}};
  t.data.assign(reinterpret_cast<const char*>(values.data()), values.size());
  return t;
}

std::string SerializeSafetensors(const SafetensorsFile& file) {
  json header = json::object();
  if (!file.metadata.empty()) header["__metadata__"] = file.metadata;
  uint64_t offset = 0;
  for (const SafetensorsTensor& t : file.tensors) {
    TERN_CHECK(!header.contains(t.name) && t.name != "__metadata__") << "duplicate " << t.name;
    TERN_CHECK(t.data.size() == static_cast<uint64_t>(t.numel()) * DtypeSize(t.dtype)) << t.name;
    header[t.name] = {{"dtype", DtypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  std::string out;
  out.reserve(8 + text.size() + offset);
  for (size_t i = 0; i < 8; ++i) out.push_back(static_cast<char>((text.size() >> (8 * i)) & 0xff));
  out += text;
  for (const SafetensorsTensor& t : file.tensors) out += t.data;
  return out;
}

bool LooksLikeSafetensors(std::string_view bytes) {
  if (bytes.size() < 10) return false;
  const uint64_t n = ReadU64(bytes);
  return n >= 2 && n <= kMaxHeaderBytes && n <= bytes.size() - 8 && bytes[8] == '{';
}

StatusOr<SafetensorsFile> ParseSafetensors(std::string_view bytes) {
  if (bytes.size() < 8) {
    return Bad("file is " + std::to_string(bytes.size()) +
               " bytes, shorter than its 8-byte prefix");
  }
  const uint64_t n = ReadU64(bytes);
  if (n > kMaxHeaderBytes || n > bytes.size() - 8) {
    return Bad("header length " + std::to_string(n) + " exceeds the file size " +
               std::to_string(bytes.size()) + " (truncated, or not safetensors)");
  }
  const std::string_view text = bytes.substr(8, n);
  const std::string_view data = bytes.substr(8 + n);
  const json header = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) return Bad("header is not a JSON object");
  SafetensorsFile file;
  std::vector<std::pair<uint64_t, SafetensorsTensor>> by_offset;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) return Bad("__metadata__ is not an object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) return Bad("__metadata__ value '" + k + "' is not a string");
        file.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    TERN_ASSIGN_OR_RETURN(SafetensorsTensor t, ParseEntry(key, value, data));
    by_offset.emplace_back(value["data_offsets"][0].get<uint64_t>(), std::move(t));
  }
  std::stable_sort(by_offset.begin(), by_offset.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  uint64_t end = 0;
  for (auto& [begin, t] : by_offset) {
    if (begin < end) return Bad("tensor '" + t.name + "' overlaps the one before it");
    end = begin + t.data.size();
    file.tensors.push_back(std::move(t));
  }
  return file;
}

}  // namespace tern::model_io
