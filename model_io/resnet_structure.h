// The network a classification `.tern` holds, read from the artifact alone
// (no LibTorch): its architecture JSON names the ResNet, its tensors carry
// every width, and its metadata the input normalization. Mirrors the layers
// worker/trainer/models.cc builds (state-dict names "conv1", "bn1",
// "blocks.<i>.{conv1,bn1,conv2,bn2[,conv3,bn3][,shortcut_conv,shortcut_bn]}",
// "fc"); the ONNX round trip test (tests/model_io) checks the two agree.
// Thread-safe (plain values).
#ifndef TERN_MODEL_IO_RESNET_STRUCTURE_H_
#define TERN_MODEL_IO_RESNET_STRUCTURE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "quant/artifact.h"

namespace tern::model_io {

struct ConvLayer {
  std::string conv;  // weight "<conv>.weight" [out, in, k, k], no bias
  std::string bn;    // BatchNorm "<bn>.{weight,bias,running_mean,running_var}"
  int64_t stride = 1;
  int64_t padding = 0;  // kernel / 2
};

struct ResidualBlockLayers {
  std::string name;               // "blocks.3"
  std::vector<ConvLayer> layers;  // 2 (basic) or 3 (bottleneck); ReLU after all but the last
  bool has_shortcut = false;
  ConvLayer shortcut;  // when has_shortcut: 1x1 conv + BN on the block input
};

struct ResNetStructure {
  std::string arch;  // "resnet20", ...
  int64_t in_channels = 0;
  int64_t num_classes = 0;
  ConvLayer stem;              // conv1 / bn1, then ReLU
  bool stem_max_pool = false;  // ImageNet-style: 3x3/2 max pool (padding 1) after the stem
  std::vector<ResidualBlockLayers> blocks;
  std::string classifier = "fc";  // Linear "fc.weight" [classes, C], "fc.bias" [classes]
  std::vector<float> mean, std;   // input normalization per channel, pixels scaled to [0, 1]
};

// FAILED_PRECONDITION naming what is missing or inconsistent (a tensor, its
// shape, a class count that differs between the architecture and `fc`);
// UNIMPLEMENTED for a detection model or an architecture this reader does not
// know; artifacts written before the metadata carried a task are read as
// classification.
StatusOr<ResNetStructure> DescribeResNet(const quant::Artifact& artifact);

// The float weights of `t` as the trainer's forward sees them (ternary codes
// dequantized: +pos_scale, -neg_scale or 0 per unit; float tensors copied).
std::vector<float> DequantizedValues(const quant::ArtifactTensor& t);

// The artifact's metadata "task" ("classification" when absent).
std::string ArtifactTask(const quant::Artifact& artifact);

}  // namespace tern::model_io

#endif  // TERN_MODEL_IO_RESNET_STRUCTURE_H_
