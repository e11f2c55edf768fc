// `ternctl export FILE.tern --format onnx|safetensors -o OUT`: a `.tern`
// artifact in a format other tools read, converted here (no server, no
// LibTorch; model_io/export.h says what each format holds). The output is
// written atomically: on any error nothing is left at OUT.
#ifndef TERN_CLI_EXPORT_H_
#define TERN_CLI_EXPORT_H_

#include <ostream>
#include <string>

namespace tern::cli {

struct ExportOptions {
  std::string format;          // "onnx" or "safetensors"
  std::string output;          // the file to write
  bool float_weights = false;  // onnx: float32 weights instead of int8 codes + scales
  bool codes = false;          // safetensors: codes + scales instead of float32
};

// Prints one line naming what was written; returns a ternctl exit code
// (usage 2 for a bad option combination, 3 for a missing file, 5 for a
// damaged artifact or one the format cannot take, e.g. a detection model).
int ExportArtifactCommand(const std::string& path, const ExportOptions& options, std::ostream& out,
                          std::ostream& err);

}  // namespace tern::cli

#endif  // TERN_CLI_EXPORT_H_
