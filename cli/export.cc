#include "cli/export.h"

#include "cli/ternctl.h"
#include "common/file_util.h"
#include "model_io/export.h"
#include "quant/artifact.h"

namespace tern::cli {

int ExportArtifactCommand(const std::string& path, const ExportOptions& options, std::ostream& out,
                          std::ostream& err) {
  const auto usage = [&](const std::string& message) {
    err << "ternctl export: " << message << "\n";
    return kExitUsage;
  };
  if (options.format != "onnx" && options.format != "safetensors") {
    return usage("--format must be onnx or safetensors, got '" + options.format + "'");
  }
  if (options.output.empty()) return usage("-o OUTPUT is required");
  if (options.float_weights && options.format != "onnx")
    return usage("--float is for --format onnx");
  if (options.codes && options.format != "safetensors") {
    return usage("--codes is for --format safetensors");
  }
  StatusOr<quant::Artifact> artifact = quant::ReadArtifactFile(path);
  if (!artifact.ok()) {
    err << "ternctl export: " << artifact.status().message() << "\n";
    return ExitCodeFor(artifact.status().code());
  }
  std::string bytes;
  std::string what;
  if (options.format == "onnx") {
    model_io::OnnxExportOptions onnx;
    onnx.float_weights = options.float_weights;
    StatusOr<std::string> model = model_io::ExportOnnx(*artifact, onnx);
    if (!model.ok()) {
      err << "ternctl export: " << path << ": " << model.status().message() << "\n";
      return kExitOther;
    }
    bytes = std::move(model).value();
    what = options.float_weights ? "ONNX, float32 weights" : "ONNX, int8 ternary codes + scales";
  } else {
    model_io::SafetensorsExportOptions st;
    st.codes = options.codes;
    bytes = model_io::ExportSafetensors(*artifact, st);
    what = options.codes ? "safetensors, int8 codes + scales" : "safetensors, float32";
  }
  if (Status s = WriteFileAtomically(options.output, bytes); !s.ok()) {
    err << "ternctl export: " << s.message() << "\n";
    return ExitCodeFor(s.code());
  }
  out << "wrote " << options.output << " (" << what << ", " << bytes.size() << " bytes)\n";
  return kExitOk;
}

}  // namespace tern::cli
