#include "worker/trainer/init_from.h"

#include <torch/serialize/input-archive.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <system_error>
#include <utility>

#include "common/file_util.h"
#include "model_io/safetensors.h"
#include "quant/artifact.h"
#include "quant/ternary_model.h"
#include "worker/trainer/checkpoint_layout.h"

namespace tern::trainer {
namespace {

namespace fs = std::filesystem;

// Source tensors by state-dict name ("layer1.0.conv1.weight"), on the CPU.
using TensorMap = std::map<std::string, at::Tensor>;

std::string ShapeString(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

// The message of a LibTorch exception without its C++ backtrace.
std::string ExceptionMessage(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) {
    return c10_error->what_without_backtrace();
  }
  return e.what();
}

// The file to read: `path` itself, or rank-0.pt of the committed step that a
// directory names.
StatusOr<std::string> ResolveSourceFile(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) {
    if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory) {
      return UnavailableError("init_from: cannot stat " + path + ": " + ec.message());
    }
    return NotFoundError("init_from: " + path + " does not exist");
  }
  if (!fs::is_directory(status)) return path;

  fs::path step_dir = path;
  if (!fs::exists(step_dir / kCommittedMarker, ec)) {
    if (ParseStepDirName(step_dir.filename().string()) >= 0) {
      return FailedPreconditionError("init_from: checkpoint step directory " + path +
                                     " is not committed (no " + kCommittedMarker +
                                     " marker); its training step never finished saving");
    }
    const int64_t step = NewestCommittedStep(path);
    if (step < 0) {
      return FailedPreconditionError("init_from: directory " + path +
                                     " holds no committed checkpoint (no step-*/" +
                                     kCommittedMarker + ")");
    }
    step_dir /= StepDirName(step);
  }
  const fs::path file = step_dir / RankFileName(0);
  if (!fs::exists(file, ec)) {
    return DataLossError("init_from: committed checkpoint " + step_dir.string() + " lacks " +
                         RankFileName(0));
  }
  return file.string();
}

// Every tensor below `archive`, named "<prefix><key>" with sub-archives
// (child modules) joined by dots, as Module::save nests them.
void FlattenArchive(torch::serialize::InputArchive& archive, const std::string& prefix,
                    TensorMap& out) {
  for (const std::string& key : archive.keys()) {
    c10::IValue value;
    archive.read(key, value);
    if (value.isTensor()) {
      out[prefix + key] = value.toTensor();
    } else if (value.isModule()) {
      torch::serialize::InputArchive child;
      archive.read(key, child);
      FlattenArchive(child, prefix + key + ".", out);
    }  // other attributes (a module's "training" flag) carry no weights
  }
}

StatusOr<TensorMap> ReadArchiveTensors(const std::string& path, const std::string& bytes) {
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(bytes.data(), bytes.size(), torch::Device(torch::kCPU));
    TensorMap tensors;
    torch::serialize::InputArchive model_archive;
    if (archive.try_read("model", model_archive)) {
      FlattenArchive(model_archive, "", tensors);  // a trainer checkpoint
    } else {
      FlattenArchive(archive, "", tensors);  // torch::save(module, path)
    }
    return tensors;
  } catch (const std::exception& e) {
    return DataLossError("init_from: cannot read " + path +
                         " as a trainer checkpoint or .tern artifact: " + ExceptionMessage(e));
  }
}

// Artifact tensors as the model saw them: ternary ones dequantized with the
// same function the training forward uses.
StatusOr<TensorMap> ReadArtifactTensors(const std::string& path, const std::string& bytes) {
  auto artifact = quant::ParseArtifact(bytes);
  if (!artifact.ok()) return artifact.status().WithContext("init_from: " + path);
  try {
    TensorMap tensors;
    for (const quant::ArtifactTensor& t : artifact->tensors) {
      tensors[t.name] = quant::ArtifactTensorValue(t);
    }
    return tensors;
  } catch (const std::exception& e) {
    return DataLossError("init_from: " + path + ": " + ExceptionMessage(e));
  }
}

at::ScalarType ScalarTypeOf(model_io::Dtype dtype) {
  switch (dtype) {
    case model_io::Dtype::kF64:
      return at::kDouble;
    case model_io::Dtype::kF32:
      return at::kFloat;
    case model_io::Dtype::kF16:
      return at::kHalf;
    case model_io::Dtype::kBF16:
      return at::kBFloat16;
    case model_io::Dtype::kI64:
      return at::kLong;
    case model_io::Dtype::kI32:
      return at::kInt;
    case model_io::Dtype::kI16:
      return at::kShort;
    case model_io::Dtype::kI8:
      return at::kChar;
    case model_io::Dtype::kU8:
      return at::kByte;
    case model_io::Dtype::kBool:
      return at::kBool;
  }
  return at::kFloat;
}

// A safetensors file's tensors (copied into aligned CPU tensors).
StatusOr<TensorMap> ReadSafetensorsTensors(const std::string& path, const std::string& bytes) {
  auto file = model_io::ParseSafetensors(bytes);
  if (!file.ok()) return file.status().WithContext("init_from: " + path);
  try {
    TensorMap tensors;
    for (const model_io::SafetensorsTensor& t : file->tensors) {
      at::Tensor value = at::empty(t.shape, at::TensorOptions().dtype(ScalarTypeOf(t.dtype)));
      if (!t.data.empty()) std::memcpy(value.data_ptr(), t.data.data(), t.data.size());
      tensors[t.name] = value;
    }
    return tensors;
  } catch (const std::exception& e) {
    return DataLossError("init_from: " + path + ": " + ExceptionMessage(e));
  }
}

// torchvision ResNet keys: "layer<S>.<B>.<rest>", optionally after "module.".
const std::regex& TorchvisionBlockKey() {
  static const std::regex re(R"(^(?:module\.)?layer(\d{1,6})\.(\d{1,6})\.(.*)$)");
  return re;
}

bool HasTorchvisionNames(const TensorMap& source) {
  return std::any_of(source.begin(), source.end(), [](const auto& item) {
    return std::regex_match(item.first, TorchvisionBlockKey());
  });
}

// The source with torchvision ResNet names renamed to tern's (init_from.h).
TensorMap MapTorchvisionNames(const TensorMap& source) {
  std::map<int64_t, int64_t> blocks;  // stage -> blocks in it
  std::smatch m;
  for (const auto& [name, tensor] : source) {
    (void)tensor;
    if (std::regex_match(name, m, TorchvisionBlockKey())) {
      int64_t& count = blocks[std::stoll(m[1])];
      count = std::max<int64_t>(count, std::stoll(m[2]) + 1);
    }
  }
  std::map<int64_t, int64_t> first_block;  // stage -> index of its first block
  int64_t next = 0;
  for (const auto& [stage, count] : blocks) {
    first_block[stage] = next;
    next += count;
  }
  TensorMap out;
  for (const auto& [name, tensor] : source) {
    std::string mapped = name.rfind("module.", 0) == 0 ? name.substr(7) : name;
    if (std::regex_match(name, m, TorchvisionBlockKey())) {
      std::string rest = m[3];
      if (rest.rfind("downsample.0.", 0) == 0) rest = "shortcut_conv." + rest.substr(13);
      if (rest.rfind("downsample.1.", 0) == 0) rest = "shortcut_bn." + rest.substr(13);
      mapped =
          "blocks." + std::to_string(first_block[std::stoll(m[1])] + std::stoll(m[2])) + "." + rest;
    }
    out[mapped] = tensor;
  }
  return out;
}

// Lists at most `limit` items, then "(+N more)".
template <typename T, typename F>
std::string Abbreviated(const std::vector<T>& items, size_t limit, F&& format) {
  std::string out;
  for (size_t i = 0; i < items.size() && i < limit; ++i) {
    if (i > 0) out += ", ";
    out += format(items[i]);
  }
  if (items.size() > limit) out += " (+" + std::to_string(items.size() - limit) + " more)";
  return out;
}

}  // namespace

std::string InitReport::Summary() const {
  const int64_t total = loaded + static_cast<int64_t>(skipped.size());
  std::string out = "init_from " + source + " (" + format + "): loaded " +
                    std::to_string(loaded) + "/" + std::to_string(total) + " model tensors";
  if (!skipped.empty()) {
    out += "; skipped " + std::to_string(skipped.size()) + ": " +
           Abbreviated(skipped, 3, [](const Skipped& s) { return s.name + " (" + s.reason + ")"; });
  }
  if (!unused.empty()) {
    out += "; " + std::to_string(unused.size()) + " source tensors unused: " +
           Abbreviated(unused, 3, [](const std::string& s) { return s; });
  }
  return out;
}

SourceNames ParseSourceNames(const std::string& name) {
  if (name == "as_stored") return SourceNames::kAsStored;
  if (name == "torchvision") return SourceNames::kTorchvision;
  return SourceNames::kAuto;
}

nlohmann::json InitReport::ToJson(size_t limit) const {
  nlohmann::json skipped_json = nlohmann::json::array();
  for (size_t i = 0; i < skipped.size() && i < limit; ++i) {
    skipped_json.push_back({{"name", skipped[i].name}, {"reason", skipped[i].reason}});
  }
  const std::vector<std::string> unused_shown(unused.begin(),
                                              unused.begin() + std::min(limit, unused.size()));
  return {{"source", source},
          {"format", format},
          {"names", names},
          {"loaded", loaded},
          {"skipped", skipped.size()},
          {"skipped_tensors", skipped_json},
          {"unused", unused.size()},
          {"unused_tensors", unused_shown}};
}

StatusOr<InitReport> InitializeFrom(const std::string& path, torch::nn::Module& model,
                                    SourceNames names) {
  InitReport report;
  TERN_ASSIGN_OR_RETURN(report.source, ResolveSourceFile(path));
  TERN_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(report.source));
  const bool is_artifact = bytes.size() >= 4 && bytes.compare(0, 4, "TERN") == 0;
  const bool is_safetensors = !is_artifact && model_io::LooksLikeSafetensors(bytes);
  report.format = is_artifact ? "artifact" : is_safetensors ? "safetensors" : "checkpoint";
  TERN_ASSIGN_OR_RETURN(TensorMap source, is_artifact ? ReadArtifactTensors(report.source, bytes)
                                          : is_safetensors
                                              ? ReadSafetensorsTensors(report.source, bytes)
                                              : ReadArchiveTensors(report.source, bytes));
  bytes.clear();
  if (names == SourceNames::kTorchvision ||
      (names == SourceNames::kAuto && is_safetensors && HasTorchvisionNames(source))) {
    source = MapTorchvisionNames(source);
    report.names = "torchvision";
  }

  try {
    // Plan every copy first, so a failure leaves the model untouched.
    std::vector<std::pair<at::Tensor, at::Tensor>> copies;  // (model tensor, source tensor)
    std::set<std::string> used;  // source names the model has
    int64_t parameters = 0, parameters_loaded = 0;
    std::optional<InitReport::Skipped> shape_example;  // a parameter of another shape
    auto match = [&](const std::string& name, const at::Tensor& target, bool is_parameter) {
      parameters += is_parameter;
      auto it = source.find(name);
      if (it == source.end()) {
        report.skipped.push_back({name, "missing in source"});
        return;
      }
      used.insert(name);
      if (it->second.sizes() != target.sizes()) {
        report.skipped.push_back({name, "shape " + ShapeString(it->second.sizes()) +
                                            " in source, " + ShapeString(target.sizes()) +
                                            " in model"});
        return;
      }
      parameters_loaded += is_parameter;
      copies.emplace_back(target, it->second);
    };
    std::string model_example;
    for (const auto& item : model.named_parameters(/*recurse=*/true)) {
      if (model_example.empty()) model_example = item.key();
      const size_t skipped_before = report.skipped.size();
      match(item.key(), item.value(), /*is_parameter=*/true);
      if (!shape_example && report.skipped.size() > skipped_before && used.count(item.key())) {
        shape_example = report.skipped.back();
      }
    }
    for (const auto& item : model.named_buffers(/*recurse=*/true)) {
      match(item.key(), item.value(), /*is_parameter=*/false);
    }
    for (const auto& [name, tensor] : source) {
      (void)tensor;
      if (!used.count(name)) report.unused.push_back(name);
    }

    // Buffers alone (BatchNorm's scalar num_batches_tracked fits any BN
    // model) do not count: the wrong file must fail, not train from noise.
    if (parameters_loaded == 0 && (parameters > 0 || copies.empty())) {
      std::string message = "init_from: no parameter of the model (" +
                            std::to_string(parameters) + ") matches " + report.source + " (" +
                            report.format + ", " + std::to_string(source.size()) + " tensors)";
      if (shape_example) {
        message += ": names match but no shape does, e.g. " + shape_example->name + ": " +
                   shape_example->reason;
      } else {
        message += ": no parameter name in common, e.g. source '" +
                   (source.empty() ? std::string("(none)") : source.begin()->first) +
                   "', model '" + (model_example.empty() ? "(none)" : model_example) + "'";
      }
      return InvalidArgumentError(message + "; is it the right file?");
    }

    torch::NoGradGuard no_grad;
    for (auto& [target, value] : copies) target.copy_(value);
    report.loaded = static_cast<int64_t>(copies.size());
    return report;
  } catch (const std::exception& e) {
    return InternalError("init_from " + report.source + ": " + ExceptionMessage(e));
  }
}

}  // namespace tern::trainer
