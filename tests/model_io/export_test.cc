#include "model_io/export.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "model_io/onnx_subset.pb.h"
#include "model_io/resnet_structure.h"
#include "model_io/safetensors.h"

namespace tern::model_io {
namespace {

using quant::Artifact;
using quant::ArtifactTensor;

// A ResNet-20 artifact as tern-trainer writes one, at stem width `w`
// (stages w, 2w, 4w): ternary convolutions (first conv and fc float), with
// symmetric scales unless `asymmetric`.
class ResNet20Artifact {
 public:
  ResNet20Artifact(int64_t w, quant::Granularity g, bool asymmetric)
      : granularity_(g), asymmetric_(asymmetric) {
    artifact.architecture =
        R"({"arch":"resnet20","in_channels":1,"num_classes":10,"width_multiplier":0.25})";
    artifact.metadata =
        R"({"task":"classification","method":"hla","normalization":{"mean":[0.28],"std":[0.35]}})";
    Float("conv1.weight", {w, 1, 3, 3});
    Bn("bn1", w);
    int64_t in = w, b = 0;
    for (int64_t stage = 0; stage < 3; ++stage) {
      const int64_t planes = w << stage;
      for (int64_t i = 0; i < 3; ++i, ++b) {
        const std::string name = "blocks." + std::to_string(b);
        Ternary(name + ".conv1.weight", {planes, in, 3, 3});
        Bn(name + ".bn1", planes);
        Ternary(name + ".conv2.weight", {planes, planes, 3, 3});
        Bn(name + ".bn2", planes);
        if (in != planes) {
          Ternary(name + ".shortcut_conv.weight", {planes, in, 1, 1});
          Bn(name + ".shortcut_bn", planes);
        }
        in = planes;
      }
    }
    Float("fc.weight", {10, in});
    Float("fc.bias", {10});
  }

  ArtifactTensor* Find(const std::string& name) {
    for (ArtifactTensor& t : artifact.tensors) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }
  void Remove(const std::string& name) {
    for (auto it = artifact.tensors.begin(); it != artifact.tensors.end(); ++it) {
      if (it->name == name) {
        artifact.tensors.erase(it);
        return;
      }
    }
  }

  Artifact artifact;

 private:
  float Next() { return static_cast<float>((seed_ = seed_ * 1103515245 + 12345) % 1000) / 1000; }
  void Float(const std::string& name, std::vector<int64_t> shape) {
    ArtifactTensor t;
    t.name = name;
    t.shape = std::move(shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.values.push_back(Next() - 0.5f);
    artifact.tensors.push_back(std::move(t));
  }
  void Bn(const std::string& name, int64_t c) {
    Float(name + ".weight", {c});
    Float(name + ".bias", {c});
    Float(name + ".running_mean", {c});
    Float(name + ".running_var", {c});
    for (float& v : artifact.tensors.back().values) v += 1;  // > 0
    Float(name + ".num_batches_tracked", {});
    artifact.tensors.back().values = {42};
  }
  void Ternary(const std::string& name, std::vector<int64_t> shape) {
    ArtifactTensor t;
    t.name = name;
    t.shape = std::move(shape);
    t.kind = ArtifactTensor::Kind::kTernary;
    t.granularity = granularity_;
    for (int64_t i = 0; i < t.numel(); ++i) t.codes.push_back(static_cast<int8_t>(i % 3 - 1));
    const int64_t units = granularity_ == quant::Granularity::kChannel ? t.shape[0] : 1;
    for (int64_t u = 0; u < units; ++u) {
      t.pos_scale.push_back(0.1f + Next());
      t.neg_scale.push_back(asymmetric_ ? 0.2f + Next() : t.pos_scale.back());
    }
    artifact.tensors.push_back(std::move(t));
  }

  quant::Granularity granularity_;
  bool asymmetric_;
  uint32_t seed_ = 1;
};

onnx::ModelProto Parse(const std::string& bytes) {
  onnx::ModelProto model;
  EXPECT_TRUE(model.ParseFromString(bytes));
  return model;
}

std::multiset<std::string> Ops(const onnx::ModelProto& model) {
  std::multiset<std::string> ops;
  for (const onnx::NodeProto& n : model.graph().node()) ops.insert(n.op_type());
  return ops;
}

TEST(OnnxExportTest, TernaryWeightsAreInt8CodesWithDequantizeLinear) {
  ResNet20Artifact a(8, quant::Granularity::kChannel, /*asymmetric=*/false);
  StatusOr<std::string> bytes = ExportOnnx(a.artifact, {});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const onnx::ModelProto model = Parse(*bytes);
  EXPECT_EQ(model.ir_version(), 8);
  ASSERT_EQ(model.opset_import_size(), 1);
  EXPECT_EQ(model.opset_import(0).version(), 13);
  ASSERT_EQ(model.graph().input_size(), 1);
  EXPECT_EQ(model.graph().input(0).type().tensor_type().elem_type(), onnx::TensorProto::UINT8);
  EXPECT_EQ(model.graph().output(0).name(), "logits");
  const std::multiset<std::string> ops = Ops(model);
  // 18 block convolutions + 2 shortcuts are ternary; conv1 and fc float.
  EXPECT_EQ(ops.count("DequantizeLinear"), 20u);
  EXPECT_EQ(ops.count("Conv"), 21u);
  EXPECT_EQ(ops.count("BatchNormalization"), 21u);
  EXPECT_EQ(ops.count("Gemm"), 1u);
  EXPECT_EQ(ops.count("Where"), 0u);
  std::map<std::string, const onnx::TensorProto*> init;
  for (const onnx::TensorProto& t : model.graph().initializer()) init[t.name()] = &t;
  const onnx::TensorProto& codes = *init.at("blocks.4.conv2.weight.codes");
  EXPECT_EQ(codes.data_type(), onnx::TensorProto::INT8);
  EXPECT_EQ(codes.raw_data().size(), 16u * 16 * 3 * 3);
  EXPECT_EQ(init.at("blocks.4.conv2.weight.scale")->dims_size(), 1);  // per channel
  EXPECT_EQ(init.count("blocks.4.conv2.weight"), 0u);                 // computed, not stored
  EXPECT_EQ(init.at("conv1.weight")->data_type(), onnx::TensorProto::FLOAT);

  StatusOr<std::string> float_bytes = ExportOnnx(a.artifact, {/*float_weights=*/true});
  ASSERT_TRUE(float_bytes.ok());
  EXPECT_EQ(Ops(Parse(*float_bytes)).count("DequantizeLinear"), 0u);
  EXPECT_GT(float_bytes->size(), 3 * bytes->size());  // int8 codes: ~4x smaller
}

TEST(OnnxExportTest, AsymmetricScalesUseWhereOverBothScales) {
  ResNet20Artifact a(4, quant::Granularity::kTensor, /*asymmetric=*/true);
  StatusOr<std::string> bytes = ExportOnnx(a.artifact, {});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const std::multiset<std::string> ops = Ops(Parse(*bytes));
  EXPECT_EQ(ops.count("Where"), 20u);
  EXPECT_EQ(ops.count("DequantizeLinear"), 20u);
}

TEST(OnnxExportTest, RefusesWhatItCannotExportNamingWhy) {
  {
    ResNet20Artifact a(4, quant::Granularity::kTensor, false);
    a.artifact.metadata = R"({"task":"detection"})";
    StatusOr<std::string> r = ExportOnnx(a.artifact, {});
    EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
    EXPECT_NE(r.status().message().find("detection models is not supported yet"), std::string::npos)
        << r.status().message();
  }
  {
    ResNet20Artifact a(4, quant::Granularity::kTensor, false);
    a.Remove("blocks.7.bn2.running_var");
    StatusOr<std::string> r = ExportOnnx(a.artifact, {});
    EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(r.status().message().find("blocks.7.bn2.running_var"), std::string::npos);
  }
  {
    ResNet20Artifact a(4, quant::Granularity::kTensor, false);
    a.artifact.architecture =
        R"({"arch":"resnet20","in_channels":1,"num_classes":12,"width_multiplier":0.25})";
    StatusOr<std::string> r = ExportOnnx(a.artifact, {});
    EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(r.status().message().find("12 classes"), std::string::npos);
    EXPECT_NE(r.status().message().find("10 outputs"), std::string::npos);
  }
  {
    ResNet20Artifact a(4, quant::Granularity::kTensor, false);
    a.artifact.metadata = R"({"task":"classification"})";  // no normalization
    StatusOr<std::string> r = ExportOnnx(a.artifact, {});
    EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(r.status().message().find("normalization"), std::string::npos);
  }
  {
    ResNet20Artifact a(4, quant::Granularity::kTensor, false);
    a.Find("blocks.3.conv1.weight")->shape[1] = 3;  // does not chain
    StatusOr<std::string> r = ExportOnnx(a.artifact, {});
    EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(r.status().message().find("blocks.3.conv1.weight"), std::string::npos);
  }
}

TEST(SafetensorsExportTest, DequantizedOrCodesUnderStateDictNames) {
  ResNet20Artifact a(4, quant::Granularity::kChannel, /*asymmetric=*/true);
  StatusOr<SafetensorsFile> plain = ParseSafetensors(ExportSafetensors(a.artifact, {}));
  ASSERT_TRUE(plain.ok()) << plain.status();
  std::map<std::string, const SafetensorsTensor*> by_name;
  for (const SafetensorsTensor& t : plain->tensors) by_name[t.name] = &t;
  EXPECT_EQ(by_name.size(), a.artifact.tensors.size());
  EXPECT_EQ(by_name.at("bn1.num_batches_tracked")->dtype, Dtype::kI64);
  EXPECT_EQ(by_name.at("bn1.num_batches_tracked")->data[0], 42);
  const SafetensorsTensor& w = *by_name.at("blocks.0.conv1.weight");
  EXPECT_EQ(w.dtype, Dtype::kF32);
  const ArtifactTensor& t = *a.Find("blocks.0.conv1.weight");
  const std::vector<float> want = DequantizedValues(t);
  ASSERT_EQ(w.data.size(), want.size() * 4);
  EXPECT_EQ(std::memcmp(w.data.data(), want.data(), w.data.size()), 0);
  // codes[0] = -1 in unit 0, codes[2] = +1.
  EXPECT_EQ(want[0], -t.neg_scale[0]);
  EXPECT_EQ(want[1], 0.0f);
  EXPECT_EQ(want[2], t.pos_scale[0]);
  EXPECT_EQ(plain->metadata.at("tern.tensors"), "dequantized");

  StatusOr<SafetensorsFile> codes = ParseSafetensors(ExportSafetensors(a.artifact, {true}));
  ASSERT_TRUE(codes.ok());
  by_name.clear();
  for (const SafetensorsTensor& s : codes->tensors) by_name[s.name] = &s;
  EXPECT_EQ(by_name.count("blocks.0.conv1.weight"), 0u);
  EXPECT_EQ(by_name.at("blocks.0.conv1.weight.codes")->dtype, Dtype::kI8);
  EXPECT_EQ(by_name.at("blocks.0.conv1.weight.pos_scale")->shape, std::vector<int64_t>{4});
  EXPECT_EQ(by_name.at("blocks.0.conv1.weight.neg_scale")->shape, std::vector<int64_t>{4});
  EXPECT_EQ(by_name.at("conv1.weight")->dtype, Dtype::kF32);
}

}  // namespace
}  // namespace tern::model_io
