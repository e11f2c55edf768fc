// safetensors export of a `.tern` (export.h).
#include <string>

#include "model_io/export.h"
#include "model_io/resnet_structure.h"
#include "model_io/safetensors.h"

namespace tern::model_io {
namespace {

using quant::ArtifactTensor;

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The artifact keeps BatchNorm's step counter as float32; PyTorch's state
// dicts hold it as int64.
SafetensorsTensor CounterTensor(const ArtifactTensor& t) {
  SafetensorsTensor out{t.name, Dtype::kI64, t.shape, {}};
  for (float v : t.values) {
    const auto n = static_cast<int64_t>(v);
    out.data.append(reinterpret_cast<const char*>(&n), sizeof(n));
  }
  return out;
}

}  // namespace

std::string ExportSafetensors(const quant::Artifact& artifact,
                              const SafetensorsExportOptions& options) {
  SafetensorsFile file;
  file.metadata["format"] = "pt";  // what PyTorch-side loaders look for
  file.metadata["tern.architecture"] = artifact.architecture;
  file.metadata["tern.metadata"] = artifact.metadata;
  file.metadata["tern.tensors"] = options.codes ? "codes" : "dequantized";
  for (const ArtifactTensor& t : artifact.tensors) {
    if (t.kind == ArtifactTensor::Kind::kFloat32 && EndsWith(t.name, ".num_batches_tracked")) {
      file.tensors.push_back(CounterTensor(t));
    } else if (t.kind == ArtifactTensor::Kind::kTernary && options.codes) {
      const std::vector<int64_t> units = {static_cast<int64_t>(t.pos_scale.size())};
      file.tensors.push_back(Int8Tensor(t.name + ".codes", t.shape, t.codes));
      file.tensors.push_back(FloatTensor(t.name + ".pos_scale", units, t.pos_scale));
      file.tensors.push_back(FloatTensor(t.name + ".neg_scale", units, t.neg_scale));
    } else {
      file.tensors.push_back(FloatTensor(t.name, t.shape, DequantizedValues(t)));
    }
  }
  return SerializeSafetensors(file);
}

}  // namespace tern::model_io
