#include "quant/artifact.h"

#include <zlib.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "quant/packing.h"

namespace tern::quant {
namespace {

using json = nlohmann::json;

constexpr char kMagic[4] = {'T', 'E', 'R', 'N'};
constexpr size_t kPrefixSize = 20;
constexpr size_t kChecksumSize = 4;
constexpr uint64_t kMaxHeaderBytes = 64ull << 20;
constexpr int64_t kMaxNumel = int64_t{1} << 36;

template <typename T>
void Put(std::string& out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) {
    out.push_back(static_cast<char>((static_cast<uint64_t>(value) >> (8 * i)) & 0xff));
  }
}

template <typename T>
T Get(std::string_view in, size_t offset) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) {
    v |= static_cast<uint64_t>(static_cast<uint8_t>(in[offset + i])) << (8 * i);
  }
  return static_cast<T>(v);
}

uint32_t Crc32(std::string_view bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  size_t done = 0;
  while (done < bytes.size()) {
    const uInt chunk = static_cast<uInt>(
        std::min<size_t>(bytes.size() - done, std::numeric_limits<uInt>::max()));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + done), chunk);
    done += chunk;
  }
  return static_cast<uint32_t>(crc);
}

void AppendFloats(std::string& payload, const std::vector<float>& values) {
  static_assert(sizeof(float) == 4, "float32 expected");
  for (float v : values) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    Put<uint32_t>(payload, bits);
  }
}

std::vector<float> ReadFloats(std::string_view bytes) {
  std::vector<float> out(bytes.size() / 4);
  for (size_t i = 0; i < out.size(); ++i) {
    const uint32_t bits = Get<uint32_t>(bytes, 4 * i);
    std::memcpy(&out[i], &bits, 4);
  }
  return out;
}

int64_t Units(const ArtifactTensor& t) {
  return t.granularity == Granularity::kChannel ? t.shape.at(0) : 1;
}

Status Bad(const std::string& what) {
  return DataLossError("corrupt .tern artifact: " + what);
}

// Reads a [offset, offset+length) range of the payload, checked.
StatusOr<std::string_view> Range(std::string_view payload, const json& entry,
                                 const char* offset_key, const char* length_key,
                                 const std::string& tensor) {
  if (!entry.contains(offset_key) || !entry[offset_key].is_number_unsigned() ||
      !entry.contains(length_key) || !entry[length_key].is_number_unsigned()) {
    return Bad("tensor '" + tensor + "' lacks " + offset_key + "/" + length_key);
  }
  const uint64_t offset = entry[offset_key].get<uint64_t>();
  const uint64_t length = entry[length_key].get<uint64_t>();
  if (offset > payload.size() || length > payload.size() - offset) {
    return Bad("tensor '" + tensor + "' range [" + std::to_string(offset) +
               ", +" + std::to_string(length) + ") outside the payload of " +
               std::to_string(payload.size()) + " bytes");
  }
  return payload.substr(offset, length);
}

StatusOr<ArtifactTensor> ParseTensor(const json& entry, std::string_view payload,
                                     Packing packing) {
  if (!entry.is_object() || !entry.contains("name") ||
      !entry["name"].is_string()) {
    return Bad("tensor entry without a name");
  }
  ArtifactTensor t;
  t.name = entry["name"].get<std::string>();
  if (!entry.contains("shape") || !entry["shape"].is_array() ||
      entry["shape"].size() > 8) {
    return Bad("tensor '" + t.name + "' has no valid shape");
  }
  int64_t numel = 1;
  for (const json& d : entry["shape"]) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t{1} << 31) {
      return Bad("tensor '" + t.name + "' has a bad dimension");
    }
    t.shape.push_back(d.get<int64_t>());
    numel *= t.shape.back();
    if (numel > kMaxNumel) return Bad("tensor '" + t.name + "' is too large");
  }
  const std::string kind = entry.value("kind", std::string());
  if (kind == "float32") {
    t.kind = ArtifactTensor::Kind::kFloat32;
    TERN_ASSIGN_OR_RETURN(std::string_view bytes,
                          Range(payload, entry, "offset", "length", t.name));
    if (bytes.size() != static_cast<uint64_t>(numel) * 4) {
      return Bad("tensor '" + t.name + "' has " + std::to_string(bytes.size()) +
                 " bytes for " + std::to_string(numel) + " floats");
    }
    t.values = ReadFloats(bytes);
    return t;
  }
  if (kind != "ternary") return Bad("tensor '" + t.name + "' has unknown kind '" + kind + "'");
  t.kind = ArtifactTensor::Kind::kTernary;
  const std::string granularity = entry.value("granularity", std::string());
  if (granularity == "tensor") {
    t.granularity = Granularity::kTensor;
  } else if (granularity == "channel" && !t.shape.empty()) {
    t.granularity = Granularity::kChannel;
  } else {
    return Bad("tensor '" + t.name + "' has bad granularity '" + granularity + "'");
  }
  TERN_ASSIGN_OR_RETURN(std::string_view codes,
                        Range(payload, entry, "codes_offset", "codes_length", t.name));
  auto unpacked = UnpackCodes(codes, static_cast<uint64_t>(numel), packing);
  if (!unpacked.ok()) {
    return unpacked.status().WithContext("corrupt .tern artifact: tensor '" + t.name + "'");
  }
  t.codes = std::move(unpacked).value();
  TERN_ASSIGN_OR_RETURN(std::string_view scales,
                        Range(payload, entry, "scales_offset", "scales_length", t.name));
  const int64_t units = Units(t);
  if (scales.size() != static_cast<uint64_t>(units) * 8) {
    return Bad("tensor '" + t.name + "' has " + std::to_string(scales.size()) +
               " scale bytes for " + std::to_string(units) + " units");
  }
  const std::vector<float> all = ReadFloats(scales);
  t.pos_scale.assign(all.begin(), all.begin() + units);
  t.neg_scale.assign(all.begin() + units, all.end());
  for (float s : all) {
    if (!std::isfinite(s)) return Bad("tensor '" + t.name + "' has a non-finite scale");
  }
  return t;
}

}  // namespace

int64_t ArtifactTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t Artifact::TernaryWeights() const {
  int64_t n = 0;
  for (const ArtifactTensor& t : tensors) {
    if (t.kind == ArtifactTensor::Kind::kTernary) n += t.numel();
  }
  return n;
}

double Artifact::BitsPerTernaryWeight() const {
  const int64_t n = TernaryWeights();
  if (n == 0) return 0;
  uint64_t bytes = 0;
  for (const ArtifactTensor& t : tensors) {
    if (t.kind == ArtifactTensor::Kind::kTernary) {
      bytes += PackedSize(static_cast<uint64_t>(t.numel()), packing);
    }
  }
  return 8.0 * static_cast<double>(bytes) / static_cast<double>(n);
}

std::string SerializeArtifact(const Artifact& artifact) {
  std::string payload;
  json tensors = json::array();
  for (const ArtifactTensor& t : artifact.tensors) {
    json entry = {{"name", t.name}, {"shape", t.shape}};
    const auto numel = static_cast<size_t>(t.numel());
    if (t.kind == ArtifactTensor::Kind::kFloat32) {
      TERN_CHECK(t.values.size() == numel) << t.name;
      entry["kind"] = "float32";
      entry["offset"] = payload.size();
      AppendFloats(payload, t.values);
      entry["length"] = payload.size() - entry["offset"].get<size_t>();
    } else {
      TERN_CHECK(t.codes.size() == numel) << t.name;
      const auto units = static_cast<size_t>(Units(t));
      TERN_CHECK(t.pos_scale.size() == units && t.neg_scale.size() == units) << t.name;
      entry["kind"] = "ternary";
      entry["granularity"] = GranularityName(t.granularity);
      const std::vector<uint8_t> packed = PackCodes(t.codes, artifact.packing);
      entry["codes_offset"] = payload.size();
      entry["codes_length"] = packed.size();
      payload.append(reinterpret_cast<const char*>(packed.data()), packed.size());
      entry["scales_offset"] = payload.size();
      AppendFloats(payload, t.pos_scale);
      AppendFloats(payload, t.neg_scale);
      entry["scales_length"] = payload.size() - entry["scales_offset"].get<size_t>();
    }
    tensors.push_back(std::move(entry));
  }
  json header = {
      {"architecture", json::parse(artifact.architecture)},
      {"metadata", json::parse(artifact.metadata)},
      {"packing", PackingName(artifact.packing)},
      {"tensors", std::move(tensors)},
  };
  const std::string header_text = header.dump();
  std::string out(kMagic, 4);
  Put<uint16_t>(out, kArtifactMajorVersion);
  Put<uint16_t>(out, kArtifactMinorVersion);
  Put<uint32_t>(out, static_cast<uint32_t>(header_text.size()));
  Put<uint64_t>(out, payload.size());
  out += header_text;
  out += payload;
  Put<uint32_t>(out, Crc32(out));
  return out;
}

StatusOr<Artifact> ParseArtifact(std::string_view bytes) {
  if (bytes.size() < kPrefixSize + kChecksumSize) {
    return Bad("file is " + std::to_string(bytes.size()) +
               " bytes, shorter than the fixed header");
  }
  if (std::memcmp(bytes.data(), kMagic, 4) != 0) {
    return Bad("bad magic (not a .tern file)");
  }
  const uint16_t major = Get<uint16_t>(bytes, 4);
  if (major != kArtifactMajorVersion) {
    return FailedPreconditionError(
        ".tern format version " + std::to_string(major) + "." +
        std::to_string(Get<uint16_t>(bytes, 6)) + " is not supported (this build reads " +
        std::to_string(kArtifactMajorVersion) + ".x)");
  }
  const uint64_t header_len = Get<uint32_t>(bytes, 8);
  const uint64_t payload_len = Get<uint64_t>(bytes, 12);
  const uint64_t body = bytes.size() - kPrefixSize - kChecksumSize;
  if (header_len > kMaxHeaderBytes || header_len > body ||
      payload_len != body - header_len) {
    return Bad("lengths (header " + std::to_string(header_len) + ", payload " +
               std::to_string(payload_len) + ") do not match the file size " +
               std::to_string(bytes.size()) + " (truncated?)");
  }
  const uint32_t stored = Get<uint32_t>(bytes, bytes.size() - kChecksumSize);
  if (Crc32(bytes.substr(0, bytes.size() - kChecksumSize)) != stored) {
    return Bad("checksum mismatch");
  }
  const std::string_view header_text = bytes.substr(kPrefixSize, header_len);
  const std::string_view payload = bytes.substr(kPrefixSize + header_len, payload_len);
  json header = json::parse(header_text.begin(), header_text.end(), nullptr,
                            /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return Bad("header is not a JSON object");
  }
  Artifact artifact;
  if (!header.contains("architecture") || !header["architecture"].is_object() ||
      !header.contains("metadata") || !header["metadata"].is_object() ||
      !header.contains("tensors") || !header["tensors"].is_array() ||
      !header.contains("packing") || !header["packing"].is_string()) {
    return Bad("header lacks architecture, metadata, packing or tensors");
  }
  artifact.architecture = header["architecture"].dump();
  artifact.metadata = header["metadata"].dump();
  auto packing = ParsePacking(header["packing"].get<std::string>());
  if (!packing.ok()) return Bad("unknown packing");
  artifact.packing = *packing;
  for (const json& entry : header["tensors"]) {
    TERN_ASSIGN_OR_RETURN(ArtifactTensor t, ParseTensor(entry, payload, artifact.packing));
    artifact.tensors.push_back(std::move(t));
  }
  return artifact;
}

Status WriteArtifactFile(const Artifact& artifact, const std::string& path) {
  return WriteFileAtomically(path, SerializeArtifact(artifact));
}

StatusOr<Artifact> ReadArtifactFile(const std::string& path) {
  TERN_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  auto artifact = ParseArtifact(bytes);
  if (!artifact.ok()) return artifact.status().WithContext(path);
  return artifact;
}

}  // namespace tern::quant
