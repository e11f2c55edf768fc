#include "model_io/resnet_structure.h"

#include <map>
#include <nlohmann/json.hpp>

namespace tern::model_io {
namespace {

using json = nlohmann::json;
using quant::ArtifactTensor;

struct StageCounts {
  std::vector<int64_t> blocks;  // per stage
  bool bottleneck = false;
  bool imagenet_stem = false;
};

// The stage layout of each architecture models.cc builds.
StatusOr<StageCounts> StagesOf(const std::string& arch) {
  if (arch == "resnet20" || arch == "resnet32" || arch == "resnet56") {
    const int64_t n = (std::stoi(arch.substr(6)) - 2) / 6;
    return StageCounts{{n, n, n}, false, false};
  }
  if (arch == "resnet18") return StageCounts{{2, 2, 2, 2}, false, true};
  if (arch == "resnet34") return StageCounts{{3, 4, 6, 3}, false, true};
  if (arch == "resnet50") return StageCounts{{3, 4, 6, 3}, true, true};
  return UnimplementedError("architecture '" + arch + "' is not supported by the export");
}

Status Missing(const std::string& what) { return FailedPreconditionError("the artifact " + what); }

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

class TensorIndex {
 public:
  explicit TensorIndex(const quant::Artifact& artifact) {
    for (const ArtifactTensor& t : artifact.tensors) by_name_[t.name] = &t;
  }
  bool Has(const std::string& name) const { return by_name_.count(name) > 0; }

  // The tensor `name` with shape `shape` (-1: any size in that dimension).
  StatusOr<const ArtifactTensor*> Get(const std::string& name,
                                      const std::vector<int64_t>& shape) const {
    auto it = by_name_.find(name);
    if (it == by_name_.end()) return Missing("has no tensor '" + name + "'");
    const ArtifactTensor* t = it->second;
    bool ok = t->shape.size() == shape.size();
    for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || shape[i] == t->shape[i];
    if (!ok) {
      return Missing("tensor '" + name + "' has shape " + ShapeText(t->shape) + ", expected " +
                     ShapeText(shape) + " (-1: any)");
    }
    return t;
  }

 private:
  std::map<std::string, const ArtifactTensor*> by_name_;
};

// Checks conv `name` (+ its BatchNorm) on `channels` inputs; returns its outputs.
StatusOr<int64_t> CheckConv(const TensorIndex& index, const ConvLayer& layer, int64_t channels) {
  TERN_ASSIGN_OR_RETURN(const ArtifactTensor* w,
                        index.Get(layer.conv + ".weight", {-1, channels, -1, -1}));
  const int64_t out = w->shape[0];
  if (w->shape[2] != w->shape[3] || w->shape[2] % 2 == 0 || out < 1) {
    return Missing("tensor '" + layer.conv + ".weight' has shape " + ShapeText(w->shape) +
                   ", not a square odd kernel");
  }
  for (const char* part : {".weight", ".bias", ".running_mean", ".running_var"}) {
    TERN_RETURN_IF_ERROR(index.Get(layer.bn + part, {out}).status());
  }
  return out;
}

ConvLayer Layer(const std::string& conv, const std::string& bn, int64_t stride,
                const TensorIndex& index) {
  ConvLayer layer{conv, bn, stride, 0};
  auto w = index.Get(conv + ".weight", {-1, -1, -1, -1});
  if (w.ok()) layer.padding = (*w)->shape[2] / 2;
  return layer;
}

StatusOr<std::vector<float>> NormalizationValues(const json& metadata, const char* key,
                                                 int64_t channels) {
  if (!metadata.contains("normalization") || !metadata["normalization"].is_object() ||
      !metadata["normalization"].contains(key) || !metadata["normalization"][key].is_array()) {
    return Missing("metadata has no normalization {mean: [...], std: [...]}");
  }
  std::vector<float> out;
  for (const json& v : metadata["normalization"][key]) {
    if (!v.is_number()) return Missing(std::string("normalization ") + key + " is not numeric");
    out.push_back(v.get<float>());
  }
  if (static_cast<int64_t>(out.size()) != channels) {
    return Missing(std::string("normalization ") + key + " has " + std::to_string(out.size()) +
                   " channels; the model takes " + std::to_string(channels));
  }
  return out;
}

}  // namespace

std::string ArtifactTask(const quant::Artifact& artifact) {
  const json metadata = json::parse(artifact.metadata, nullptr, /*allow_exceptions=*/false);
  if (metadata.is_object() && metadata.contains("task") && metadata["task"].is_string()) {
    return metadata["task"].get<std::string>();
  }
  return "classification";  // artifacts written before the field
}

std::vector<float> DequantizedValues(const ArtifactTensor& t) {
  if (t.kind == ArtifactTensor::Kind::kFloat32) return t.values;
  std::vector<float> out(t.codes.size());
  const size_t units = t.pos_scale.size();
  const size_t per_unit = units == 0 ? 0 : out.size() / units;
  for (size_t i = 0; i < out.size(); ++i) {
    const size_t u = per_unit == 0 ? 0 : i / per_unit;
    out[i] = t.codes[i] > 0 ? t.pos_scale[u] : t.codes[i] < 0 ? -t.neg_scale[u] : 0.0f;
  }
  return out;
}

StatusOr<ResNetStructure> DescribeResNet(const quant::Artifact& artifact) {
  const std::string task = ArtifactTask(artifact);
  if (task != "classification") {
    return UnimplementedError("the artifact holds a " + task + " model; exporting " + task +
                              " models is not supported yet "
                              "(classification only)");
  }
  const json arch = json::parse(artifact.architecture, nullptr, /*allow_exceptions=*/false);
  if (!arch.is_object() || !arch.contains("arch") || !arch["arch"].is_string() ||
      !arch.contains("in_channels") || !arch["in_channels"].is_number_integer() ||
      !arch.contains("num_classes") || !arch["num_classes"].is_number_integer()) {
    return Missing("architecture lacks arch, in_channels or num_classes: " +
                   artifact.architecture.substr(0, 200));
  }
  ResNetStructure s;
  s.arch = arch["arch"].get<std::string>();
  s.in_channels = arch["in_channels"].get<int64_t>();
  s.num_classes = arch["num_classes"].get<int64_t>();
  if (s.in_channels < 1 || s.num_classes < 1) {
    return Missing("architecture has in_channels " + std::to_string(s.in_channels) +
                   " and num_classes " + std::to_string(s.num_classes));
  }
  TERN_ASSIGN_OR_RETURN(const StageCounts stages, StagesOf(s.arch));
  const TensorIndex index(artifact);

  s.stem = Layer("conv1", "bn1", stages.imagenet_stem ? 2 : 1, index);
  s.stem_max_pool = stages.imagenet_stem;
  TERN_ASSIGN_OR_RETURN(int64_t channels, CheckConv(index, s.stem, s.in_channels));
  int64_t b = 0;
  for (size_t stage = 0; stage < stages.blocks.size(); ++stage) {
    for (int64_t i = 0; i < stages.blocks[stage]; ++i, ++b) {
      const int64_t stride = (stage > 0 && i == 0) ? 2 : 1;
      ResidualBlockLayers block;
      block.name = "blocks." + std::to_string(b);
      const int convs = stages.bottleneck ? 3 : 2;
      for (int c = 1; c <= convs; ++c) {
        // The stride sits on the 3x3: conv2 of a bottleneck, conv1 of a basic block.
        const bool strided = stages.bottleneck ? c == 2 : c == 1;
        block.layers.push_back(Layer(block.name + ".conv" + std::to_string(c),
                                     block.name + ".bn" + std::to_string(c), strided ? stride : 1,
                                     index));
      }
      const int64_t in = channels;
      for (const ConvLayer& layer : block.layers) {
        TERN_ASSIGN_OR_RETURN(channels, CheckConv(index, layer, channels));
      }
      block.has_shortcut = index.Has(block.name + ".shortcut_conv.weight");
      if (block.has_shortcut) {
        block.shortcut =
            Layer(block.name + ".shortcut_conv", block.name + ".shortcut_bn", stride, index);
        TERN_ASSIGN_OR_RETURN(const int64_t out, CheckConv(index, block.shortcut, in));
        if (out != channels) {
          return Missing(block.name + ": the shortcut has " + std::to_string(out) +
                         " channels, the block " + std::to_string(channels));
        }
      } else if (stride != 1 || in != channels) {
        return Missing("has no tensor '" + block.name + ".shortcut_conv.weight' (the block maps " +
                       std::to_string(in) + " to " + std::to_string(channels) + " channels)");
      }
      s.blocks.push_back(std::move(block));
    }
  }
  if (index.Has("blocks." + std::to_string(b) + ".conv1.weight")) {
    return Missing("has more residual blocks than " + s.arch + " (" + std::to_string(b) + ")");
  }
  TERN_ASSIGN_OR_RETURN(const ArtifactTensor* fc, index.Get("fc.weight", {-1, channels}));
  if (fc->shape[0] != s.num_classes) {
    return Missing("architecture says " + std::to_string(s.num_classes) +
                   " classes but its classifier fc.weight has " + std::to_string(fc->shape[0]) +
                   " outputs");
  }
  TERN_RETURN_IF_ERROR(index.Get("fc.bias", {s.num_classes}).status());
  const json metadata = json::parse(artifact.metadata, nullptr, /*allow_exceptions=*/false);
  TERN_ASSIGN_OR_RETURN(s.mean, NormalizationValues(metadata, "mean", s.in_channels));
  TERN_ASSIGN_OR_RETURN(s.std, NormalizationValues(metadata, "std", s.in_channels));
  for (float v : s.std) {
    if (!(v > 0)) return Missing("normalization has a std that is not > 0");
  }
  return s;
}

}  // namespace tern::model_io
