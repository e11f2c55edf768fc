// A `.tern` artifact in formats other tools read, without LibTorch:
//   - ONNX (opset 13, standard operators): the classifier as a graph that
//     takes uint8 pixels [N, C, H, W] (the training normalization is part of
//     the graph) and returns float logits [N, classes]. Each ternary weight
//     is stored as int8 codes in {-1, 0, +1} with its per-tensor or
//     per-channel scale, dequantized by DequantizeLinear (or, when its
//     positive and negative scales differ, by Where over the two scales);
//     with `float_weights` every weight is a float32 initializer instead.
//   - safetensors: every tensor under its PyTorch state-dict name, ternary
//     ones dequantized to float32 (or, with `codes`, as "<name>.codes" int8
//     plus "<name>.pos_scale" / "<name>.neg_scale" float32 [units]).
// Both return the file's bytes; writing them is the caller's (atomically).
// Thread-safe.
#ifndef TERN_MODEL_IO_EXPORT_H_
#define TERN_MODEL_IO_EXPORT_H_

#include <string>

#include "common/status.h"
#include "quant/artifact.h"

namespace tern::model_io {

struct OnnxExportOptions {
  bool float_weights = false;  // float32 initializers instead of int8 codes + scales
};

// FAILED_PRECONDITION when the artifact lacks what the graph needs (naming
// it), UNIMPLEMENTED for detection models and unknown architectures.
StatusOr<std::string> ExportOnnx(const quant::Artifact& artifact, const OnnxExportOptions& options);

struct SafetensorsExportOptions {
  bool codes = false;  // codes + scales instead of dequantized float32
};

std::string ExportSafetensors(const quant::Artifact& artifact,
                              const SafetensorsExportOptions& options);

}  // namespace tern::model_io

#endif  // TERN_MODEL_IO_EXPORT_H_
