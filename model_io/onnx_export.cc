// ONNX export of a classification `.tern` (export.h). The graph mirrors the
// trainer's evaluation forward (worker/trainer/models.cc and the loader's
// normalization in data.cc):
//   pixels uint8 [N, C, H, W] -> Cast -> Mul(1 / (255 std)) -> Add(-mean / std)
//   -> Conv -> BatchNormalization -> Relu [-> MaxPool 3x3/2]          (stem)
//   -> per block: Conv -> BN -> Relu ... -> Conv -> BN, + shortcut, Relu
//   -> GlobalAveragePool -> Flatten -> Gemm(fc, transB) -> logits float [N, classes]
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "model_io/export.h"
#include "model_io/onnx_subset.pb.h"
#include "model_io/resnet_structure.h"

namespace tern::model_io {
namespace {

using quant::ArtifactTensor;
namespace pb = ::tern::onnx;

constexpr int64_t kIrVersion = 8;  // ONNX 1.12
constexpr int64_t kOpsetVersion = 13;
constexpr float kBatchNormEpsilon = 1e-5f;  // LibTorch's BatchNorm2d default

// Builds one GraphProto: initializers and nodes, named after the state dict.
class GraphBuilder {
 public:
  GraphBuilder(pb::GraphProto* graph, const quant::Artifact& artifact, bool float_weights)
      : graph_(graph), float_weights_(float_weights) {
    for (const ArtifactTensor& t : artifact.tensors) tensors_[t.name] = &t;
  }

  // A float32 initializer.
  std::string Float(const std::string& name, const std::vector<int64_t>& shape,
                    const std::vector<float>& values) {
    AddInitializer(name, shape, pb::TensorProto::FLOAT, values.data(), values.size() * 4);
    return name;
  }

  // The value holding artifact tensor `name` as float: an initializer, or
  // int8 codes dequantized by nodes.
  std::string Weight(const std::string& name) {
    const ArtifactTensor& t = *tensors_.at(name);  // DescribeResNet checked it exists
    if (t.kind == ArtifactTensor::Kind::kFloat32 || float_weights_) {
      return Float(name, t.shape, DequantizedValues(t));
    }
    const std::string codes = name + ".codes";
    AddInitializer(codes, t.shape, pb::TensorProto::INT8, t.codes.data(), t.codes.size());
    const bool per_channel = t.granularity == quant::Granularity::kChannel;
    const std::vector<int64_t> unit_shape =
        per_channel ? std::vector<int64_t>{t.shape[0]} : std::vector<int64_t>{};
    if (t.pos_scale == t.neg_scale) {  // symmetric: w = code * scale
      const std::string zero = name + ".zero_point";
      const std::vector<int8_t> zeros(t.pos_scale.size(), 0);
      AddInitializer(zero, unit_shape, pb::TensorProto::INT8, zeros.data(), zeros.size());
      pb::NodeProto* dq =
          Node("DequantizeLinear", {codes, Float(name + ".scale", unit_shape, t.pos_scale), zero},
               {name});
      if (per_channel) IntAttribute(dq, "axis", 0);
      return name;
    }
    // Asymmetric (TTQ): w = code > 0 ? code * pos : code * neg, the scales
    // shaped to broadcast over each unit's weights.
    std::vector<int64_t> broadcast(t.shape.size(), 1);
    if (per_channel) broadcast[0] = t.shape[0];
    const std::string as_float = name + ".code_values";
    const std::string zero = name + ".zero_point";
    AddInitializer(zero, {}, pb::TensorProto::INT8, "\0", 1);
    Node("DequantizeLinear", {codes, Float(name + ".unit_scale", {}, {1.0f}), zero}, {as_float});
    Node("Mul", {as_float, Float(name + ".pos_scale", broadcast, t.pos_scale)}, {name + ".pos"});
    Node("Mul", {as_float, Float(name + ".neg_scale", broadcast, t.neg_scale)}, {name + ".neg"});
    Node("Greater", {as_float, Float(name + ".zero", {}, {0.0f})}, {name + ".positive"});
    Node("Where", {name + ".positive", name + ".pos", name + ".neg"}, {name});
    return name;
  }

  // Conv (no bias) + BatchNormalization [+ Relu] on `x`; returns the output.
  std::string ConvBn(const ConvLayer& layer, const std::string& x, bool relu) {
    const std::vector<int64_t>& shape = tensors_.at(layer.conv + ".weight")->shape;
    pb::NodeProto* conv = Node("Conv", {x, Weight(layer.conv + ".weight")}, {layer.conv});
    IntsAttribute(conv, "kernel_shape", {shape[2], shape[3]});
    IntsAttribute(conv, "strides", {layer.stride, layer.stride});
    IntsAttribute(conv, "pads", {layer.padding, layer.padding, layer.padding, layer.padding});
    pb::NodeProto* bn =
        Node("BatchNormalization",
             {layer.conv, Weight(layer.bn + ".weight"), Weight(layer.bn + ".bias"),
              Weight(layer.bn + ".running_mean"), Weight(layer.bn + ".running_var")},
             {layer.bn});
    FloatAttribute(bn, "epsilon", kBatchNormEpsilon);
    if (!relu) return layer.bn;
    Node("Relu", {layer.bn}, {layer.bn + ".relu"});
    return layer.bn + ".relu";
  }

  pb::NodeProto* Node(const std::string& op, const std::vector<std::string>& inputs,
                      const std::vector<std::string>& outputs) {
    pb::NodeProto* node = graph_->add_node();
    node->set_op_type(op);
    node->set_name(outputs.at(0));
    for (const std::string& in : inputs) node->add_input(in);
    for (const std::string& out : outputs) node->add_output(out);
    return node;
  }

  static void IntAttribute(pb::NodeProto* node, const std::string& name, int64_t value) {
    pb::AttributeProto* a = node->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto::INT);
    a->set_i(value);
  }
  static void IntsAttribute(pb::NodeProto* node, const std::string& name,
                            const std::vector<int64_t>& values) {
    pb::AttributeProto* a = node->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto::INTS);
    for (int64_t v : values) a->add_ints(v);
  }
  static void FloatAttribute(pb::NodeProto* node, const std::string& name, float value) {
    pb::AttributeProto* a = node->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto::FLOAT);
    a->set_f(value);
  }

 private:
  void AddInitializer(const std::string& name, const std::vector<int64_t>& shape,
                      pb::TensorProto::DataType type, const void* data, size_t bytes) {
    pb::TensorProto* t = graph_->add_initializer();
    t->set_name(name);
    t->set_data_type(type);
    for (int64_t d : shape) t->add_dims(d);
    t->set_raw_data(data, bytes);  // little-endian hosts (safetensors.cc checks)
  }

  pb::GraphProto* graph_;
  bool float_weights_;
  std::map<std::string, const ArtifactTensor*> tensors_;
};

void SetTensorType(pb::ValueInfoProto* value, const std::string& name,
                   pb::TensorProto::DataType type, const std::vector<std::string>& dims) {
  value->set_name(name);
  pb::TypeProto::Tensor* tensor = value->mutable_type()->mutable_tensor_type();
  tensor->set_elem_type(type);
  for (const std::string& d : dims) {
    pb::TensorShapeProto::Dimension* dim = tensor->mutable_shape()->add_dim();
    if (!d.empty() && d.find_first_not_of("0123456789") == std::string::npos) {
      dim->set_dim_value(std::stoll(d));
    } else {
      dim->set_dim_param(d);
    }
  }
}

}  // namespace

StatusOr<std::string> ExportOnnx(const quant::Artifact& artifact,
                                 const OnnxExportOptions& options) {
  TERN_ASSIGN_OR_RETURN(const ResNetStructure net, DescribeResNet(artifact));
  pb::ModelProto model;
  model.set_ir_version(kIrVersion);
  pb::OperatorSetIdProto* opset = model.add_opset_import();
  opset->set_domain("");
  opset->set_version(kOpsetVersion);
  model.set_producer_name("tern");
  model.set_doc_string("tern " + net.arch +
                       " classifier: uint8 pixels [N, C, H, W] in, logits "
                       "[N, classes] out (the training normalization is part of the graph)");
  const auto meta = [&](const std::string& key, const std::string& value) {
    pb::StringStringEntryProto* e = model.add_metadata_props();
    e->set_key(key);
    e->set_value(value);
  };
  meta("tern.architecture", artifact.architecture);
  meta("tern.metadata", artifact.metadata);
  meta("tern.weights", options.float_weights ? "float32" : "int8 codes + scales");

  pb::GraphProto* graph = model.mutable_graph();
  graph->set_name("tern_" + net.arch);
  const std::string channels = std::to_string(net.in_channels);
  SetTensorType(graph->add_input(), "pixels", pb::TensorProto::UINT8,
                {"batch", channels, "height", "width"});
  SetTensorType(graph->add_output(), "logits", pb::TensorProto::FLOAT,
                {"batch", std::to_string(net.num_classes)});
  graph->mutable_output(0)->set_doc_string("unnormalized class scores");

  GraphBuilder g(graph, artifact, options.float_weights);
  // The loader's normalization, with its float constants: x * scale + bias.
  std::vector<float> scale, bias;
  for (size_t c = 0; c < net.mean.size(); ++c) {
    scale.push_back(1.0f / (255.0f * net.std[c]));
    bias.push_back(-net.mean[c] / net.std[c]);
  }
  const std::vector<int64_t> per_channel = {1, net.in_channels, 1, 1};
  GraphBuilder::IntAttribute(g.Node("Cast", {"pixels"}, {"input.float"}), "to",
                             pb::TensorProto::FLOAT);
  g.Node("Mul", {"input.float", g.Float("input.scale", per_channel, scale)}, {"input.scaled"});
  g.Node("Add", {"input.scaled", g.Float("input.bias", per_channel, bias)}, {"input"});

  std::string x = g.ConvBn(net.stem, "input", /*relu=*/true);
  if (net.stem_max_pool) {
    pb::NodeProto* pool = g.Node("MaxPool", {x}, {"stem.max_pool"});
    GraphBuilder::IntsAttribute(pool, "kernel_shape", {3, 3});
    GraphBuilder::IntsAttribute(pool, "strides", {2, 2});
    GraphBuilder::IntsAttribute(pool, "pads", {1, 1, 1, 1});
    x = "stem.max_pool";
  }
  for (const ResidualBlockLayers& block : net.blocks) {
    std::string y = x;
    for (size_t i = 0; i < block.layers.size(); ++i) {
      y = g.ConvBn(block.layers[i], y, /*relu=*/i + 1 < block.layers.size());
    }
    const std::string identity = block.has_shortcut ? g.ConvBn(block.shortcut, x, false) : x;
    g.Node("Add", {y, identity}, {block.name + ".sum"});
    g.Node("Relu", {block.name + ".sum"}, {block.name});
    x = block.name;
  }
  g.Node("GlobalAveragePool", {x}, {"pool"});
  GraphBuilder::IntAttribute(g.Node("Flatten", {"pool"}, {"features"}), "axis", 1);
  pb::NodeProto* fc =
      g.Node("Gemm",
             {"features", g.Weight(net.classifier + ".weight"), g.Weight(net.classifier + ".bias")},
             {"logits"});
  GraphBuilder::IntAttribute(fc, "transB", 1);

  std::string bytes;
  if (!model.SerializeToString(&bytes)) return InternalError("ONNX: cannot serialize the model");
  return bytes;
}

}  // namespace tern::model_io
