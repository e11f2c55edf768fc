// The safetensors file format (Hugging Face's, as PyTorch users save state
// dicts): no LibTorch, no protobuf, so both ternctl and tern-trainer use it.
//
// Layout (little-endian):
//   0  u64 header length N
//   8  header: UTF-8 JSON object {name: {dtype, shape, data_offsets: [begin, end]},
//      "__metadata__": {string: string}} (padded with spaces to a multiple of 8)
//   8+N  data: every tensor's bytes, row-major, at its offsets (relative to 8+N)
// The reader checks every dtype, shape, offset and length, so a truncated or
// damaged file is a clear DATA_LOSS error and never a crash.
//
// Usage:
//   SafetensorsFile file;
//   file.tensors.push_back(FloatTensor("fc.weight", {10, 64}, values));
//   std::string bytes = SerializeSafetensors(file);
//   TERN_ASSIGN_OR_RETURN(SafetensorsFile back, ParseSafetensors(bytes));
// Functions are thread-safe.
#ifndef TERN_MODEL_IO_SAFETENSORS_H_
#define TERN_MODEL_IO_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace tern::model_io {

enum class Dtype { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// "F32", "I8", ... as the format spells them; bytes per element.
const char* DtypeName(Dtype dtype);
size_t DtypeSize(Dtype dtype);

struct SafetensorsTensor {
  std::string name;  // e.g. "blocks.0.conv1.weight"
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;  // [] for a scalar
  std::string data;            // numel * DtypeSize bytes, little-endian

  int64_t numel() const;
};

struct SafetensorsFile {
  std::map<std::string, std::string> metadata;  // "__metadata__"
  std::vector<SafetensorsTensor> tensors;       // in data order
};

// An F32 tensor (an I8 one) holding `values`.
SafetensorsTensor FloatTensor(std::string name, std::vector<int64_t> shape,
                              const std::vector<float>& values);
SafetensorsTensor Int8Tensor(std::string name, std::vector<int64_t> shape,
                             const std::vector<int8_t>& values);

// TERN_CHECKs that names are unique and data sizes match the shapes.
std::string SerializeSafetensors(const SafetensorsFile& file);
// DATA_LOSS naming what is wrong for anything but a well-formed file.
StatusOr<SafetensorsFile> ParseSafetensors(std::string_view bytes);

// True when `bytes` starts like a safetensors file (a plausible header
// length followed by '{'): how init_from tells it from other formats.
bool LooksLikeSafetensors(std::string_view bytes);

}  // namespace tern::model_io

#endif  // TERN_MODEL_IO_SAFETENSORS_H_
