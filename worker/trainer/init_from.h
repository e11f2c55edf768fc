// model.init_from: initialises a freshly built model from the weights of an
// earlier run (e.g. a trained FP model before ternary fine-tuning).
//
// The source may be
//   - a `.tern` artifact (recognised by its "TERN" magic, whatever its name):
//     ternary tensors are dequantized (pos/neg scale per unit), float tensors
//     copied;
//   - a trainer checkpoint file (`rank-N.pt`): its "model" sub-archive; an
//     archive without one (torch::save of a module) is read from its top;
//   - a checkpoint step directory (`step-0000000100/`, must be committed):
//     its rank-0.pt;
//   - a checkpoint directory: its newest committed step;
//   - a `.safetensors` file (recognised by its header, whatever its name),
//     e.g. a PyTorch state dict (F32/F64/F16/BF16/integer tensors, converted
//     to the model's dtype). With SourceNames::kTorchvision (or kAuto, when
//     the file has torchvision's "layer<S>.<B>." names) torchvision ResNet
//     names are mapped to tern's: "layer<S>.<B>.*" -> "blocks.<i>.*" (i counts
//     the blocks of earlier stages), "downsample.0" -> "shortcut_conv",
//     "downsample.1" -> "shortcut_bn"; a leading "module." (DataParallel) is
//     dropped.
// Every parameter and buffer of the model whose name and shape match a source
// tensor is copied (to the model tensor's device and dtype); the rest keep
// their initial values and are reported. Nothing else (optimizer, quantizer
// state, step) is read.
//
// Usage:
//   TERN_ASSIGN_OR_RETURN(InitReport report, InitializeFrom(path, *model));
//   TERN_LOG(INFO) << report.Summary();
// Thread-safe for distinct models.
#ifndef TERN_WORKER_TRAINER_INIT_FROM_H_
#define TERN_WORKER_TRAINER_INIT_FROM_H_

#include <torch/nn/module.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"

namespace tern::trainer {

// How source tensor names map to the model's.
enum class SourceNames {
  kAuto,         // torchvision's when a safetensors file has "layer<S>.<B>." names, else as stored
  kAsStored,     // state-dict names as they are
  kTorchvision,  // torchvision ResNet names (safetensors files)
};

// model.init_from_names: "as_stored", "torchvision", anything else (the
// spec allows "auto" and empty) kAuto.
SourceNames ParseSourceNames(const std::string& name);

struct InitReport {
  struct Skipped {
    std::string name;    // model tensor left at its initial value
    std::string reason;  // "missing in source" or "shape [10, 64] in source, [100, 64] in model"
  };
  std::string source;                // the file read (rank-0.pt of a step, or the .tern)
  std::string format;                // "checkpoint", "artifact" or "safetensors"
  std::string names = "as stored";   // or "torchvision" (mapped)
  int64_t loaded = 0;                // model tensors copied from the source
  std::vector<Skipped> skipped;      // model tensors not copied, in model order
  std::vector<std::string> unused;   // source tensors the model has no name for, sorted

  // One line for logs: source, loaded/total, the first few skipped and unused.
  std::string Summary() const;
  // For the `started` event: the counts, and the first `limit` skipped
  // tensors (with why) and unused source names.
  nlohmann::json ToJson(size_t limit = 20) const;
};

// Copies matching tensors from `path` into `model` (under NoGradGuard).
// Fails, leaving `model` untouched, with NOT_FOUND when `path` does not
// exist; DATA_LOSS when the file is corrupt, truncated or neither format;
// FAILED_PRECONDITION when a directory holds no committed checkpoint (or a
// step directory is not committed); INVALID_ARGUMENT when no parameter
// matched (the wrong file; matching buffers alone do not count), naming
// example names from both sides. Blocking file I/O; never throws.
StatusOr<InitReport> InitializeFrom(const std::string& path, torch::nn::Module& model,
                                    SourceNames names = SourceNames::kAuto);

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_INIT_FROM_H_
