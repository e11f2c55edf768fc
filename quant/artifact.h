// The packed ternary model file, `.tern`.
//
// Layout (little-endian):
//   0  "TERN"                magic
//   4  u16 major, u16 minor  format version (this build writes and reads 1.x)
//   8  u32 header length H
//  12  u64 payload length P
//  20  header: UTF-8 JSON  {architecture, metadata, packing, tensors: [...]}
//  20+H payload: packed codes, float32 scales and float32 tensors
//  20+H+P u32 CRC-32 (zlib) of every byte before it
// Each header tensor names its byte ranges in the payload; the reader checks
// every length, offset, shape, packed byte and the checksum, so a truncated,
// corrupt or future-version file is a clear DATA_LOSS / FAILED_PRECONDITION
// error and never a crash. No LibTorch here: the service can inspect
// artifacts without it. Functions are thread-safe.
#ifndef TERN_QUANT_ARTIFACT_H_
#define TERN_QUANT_ARTIFACT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "quant/options.h"

namespace tern::quant {

inline constexpr uint16_t kArtifactMajorVersion = 1;
inline constexpr uint16_t kArtifactMinorVersion = 0;

struct ArtifactTensor {
  enum class Kind { kFloat32, kTernary };
  std::string name;             // state-dict key, e.g. "layer1.0.conv1.weight"
  std::vector<int64_t> shape;
  Kind kind = Kind::kFloat32;
  std::vector<float> values;    // kFloat32: row-major, numel values
  // kTernary:
  Granularity granularity = Granularity::kTensor;
  std::vector<int8_t> codes;    // numel codes in {-1, 0, +1}
  std::vector<float> pos_scale; // one per unit (1, or shape[0] per channel)
  std::vector<float> neg_scale;

  int64_t numel() const;
};

struct Artifact {
  std::string architecture = "{}";  // JSON object: how to rebuild the model
  std::string metadata = "{}";      // JSON object: method, metrics, ...
  Packing packing = Packing::kTwoBit;
  std::vector<ArtifactTensor> tensors;

  // Counts over the ternary tensors.
  int64_t TernaryWeights() const;
  // Packed code bits per ternary weight (scales excluded): 2 or ~1.6.
  double BitsPerTernaryWeight() const;
};

// TERN_CHECKs the invariants of a well-formed in-memory artifact.
std::string SerializeArtifact(const Artifact& artifact);
StatusOr<Artifact> ParseArtifact(std::string_view bytes);

// Atomic: writes "<path>.tmp", fsyncs, renames, fsyncs the directory.
Status WriteArtifactFile(const Artifact& artifact, const std::string& path);
StatusOr<Artifact> ReadArtifactFile(const std::string& path);

}  // namespace tern::quant

#endif  // TERN_QUANT_ARTIFACT_H_
