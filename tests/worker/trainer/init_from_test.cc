#include "worker/trainer/init_from.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "common/file_util.h"
#include "model_io/safetensors.h"
#include "quant/artifact.h"
#include "quant/ternary_model.h"
#include "tests/common/scoped_temp_dir.h"
#include "worker/trainer/checkpoint_layout.h"
#include "worker/trainer/models.h"

namespace tern::trainer {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class TempDir : public ::tern::testing_util::ScopedTempDir {
 public:
  TempDir() : ScopedTempDir("tern_init_from_test") {}
};

std::shared_ptr<Classifier> Build(uint64_t seed, int64_t num_classes = 10) {
  torch::manual_seed(seed);
  auto model = BuildClassifier({"resnet20", 3, num_classes, 1.0});
  TERN_CHECK(model.ok()) << model.status();
  // A few training-mode forwards so the BN running statistics move too.
  torch::NoGradGuard no_grad;
  (*model)->train();
  for (int i = 0; i < 2; ++i) (*model)->forward(torch::randn({4, 3, 16, 16}));
  return *model;
}

// Name -> tensor over parameters and buffers, as InitializeFrom sees them.
std::map<std::string, at::Tensor> StateDict(torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : m.named_parameters(true)) out[item.key()] = item.value();
  for (const auto& item : m.named_buffers(true)) out[item.key()] = item.value();
  return out;
}

// Writes `model` the way the trainer's SaveCheckpoint does.
std::string CheckpointBytes(torch::nn::Module& model, int64_t step) {
  torch::serialize::OutputArchive archive, model_archive, quant_archive, opt_archive;
  model.save(model_archive);
  torch::optim::SGD optimizer(model.parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  optimizer.save(opt_archive);
  archive.write("model", model_archive);
  archive.write("quant", quant_archive);
  archive.write("optimizer", opt_archive);
  archive.write("global_step", torch::tensor(step));
  archive.write("world_size", torch::tensor(int64_t{1}));
  std::ostringstream bytes;
  archive.save_to(bytes);
  return bytes.str();
}

// <root>/step-.../rank-0.pt, committed or not; returns the step directory.
std::string WriteStep(const std::string& root, int64_t step, torch::nn::Module& model,
                      bool committed) {
  const std::string dir = root + "/" + StepDirName(step);
  TERN_CHECK(MakeDirectories(dir).ok());
  TERN_CHECK(WriteFileAtomically(dir + "/" + RankFileName(0), CheckpointBytes(model, step)).ok());
  if (committed) {
    TERN_CHECK(WriteFileAtomically(dir + "/" + kCommittedMarker, std::to_string(step) + "\n").ok());
  }
  return dir;
}

void ExpectSameState(torch::nn::Module& actual, torch::nn::Module& expected) {
  const auto a = StateDict(actual);
  const auto e = StateDict(expected);
  ASSERT_EQ(a.size(), e.size());
  for (const auto& [name, tensor] : e) {
    ASSERT_TRUE(a.count(name)) << name;
    EXPECT_TRUE(torch::equal(a.at(name), tensor)) << name;
  }
}

bool AnyDiffers(torch::nn::Module& a, torch::nn::Module& b) {
  const auto sa = StateDict(a);
  const auto sb = StateDict(b);
  for (const auto& [name, tensor] : sa) {
    if (!torch::equal(tensor, sb.at(name))) return true;
  }
  return false;
}

TEST(InitFromTest, CheckpointOfSameArchitectureLoadsEverything) {
  TempDir dir;
  auto source = Build(1);
  const std::string file = dir.Path("rank-0.pt");
  ASSERT_TRUE(WriteFileAtomically(file, CheckpointBytes(*source, 100)).ok());
  auto target = Build(2);
  ASSERT_TRUE(AnyDiffers(*target, *source));

  auto report = InitializeFrom(file, *target);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->source, file);
  EXPECT_EQ(report->format, "checkpoint");
  EXPECT_EQ(report->loaded, static_cast<int64_t>(StateDict(*target).size()));
  EXPECT_TRUE(report->skipped.empty());
  EXPECT_TRUE(report->unused.empty());
  ExpectSameState(*target, *source);
  EXPECT_NE(report->Summary().find("loaded " + std::to_string(report->loaded) + "/"),
            std::string::npos)
      << report->Summary();
}

TEST(InitFromTest, CheckpointOfTernaryTrainingLoadsLatentWeights) {
  // The trainer saves the model with a TernaryModel attached and its forward
  // weights installed; the checkpoint holds the latent FP weights.
  TempDir dir;
  auto source = Build(1);
  auto quant = quant::TernaryModel::Attach(source, quant::MakePreset(quant::Method::kHla));
  ASSERT_TRUE(quant.ok()) << quant.status();
  (*quant)->SetProgress(1.0);
  (*quant)->BeforeForward();
  const std::string file = dir.Path("rank-0.pt");
  ASSERT_TRUE(WriteFileAtomically(file, CheckpointBytes(*source, 100)).ok());

  auto target = Build(2);
  auto report = InitializeFrom(file, *target);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->skipped.empty()) << report->Summary();
  ExpectSameState(*target, *source);
}

TEST(InitFromTest, OtherClassCountSkipsOnlyTheClassifier) {
  TempDir dir;
  auto source = Build(1, 10);
  const std::string file = dir.Path("rank-0.pt");
  ASSERT_TRUE(WriteFileAtomically(file, CheckpointBytes(*source, 100)).ok());
  auto target = Build(2, 100);
  const auto fc_before = StateDict(*target).at("fc.weight").clone();

  auto report = InitializeFrom(file, *target);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->skipped.size(), 2u) << report->Summary();
  EXPECT_EQ(report->skipped[0].name, "fc.weight");
  EXPECT_EQ(report->skipped[0].reason, "shape [10, 64] in source, [100, 64] in model");
  EXPECT_EQ(report->skipped[1].name, "fc.bias");
  EXPECT_EQ(report->skipped[1].reason, "shape [10] in source, [100] in model");
  EXPECT_TRUE(report->unused.empty());
  EXPECT_EQ(report->loaded, static_cast<int64_t>(StateDict(*target).size()) - 2);

  const auto got = StateDict(*target);
  const auto want = StateDict(*source);
  for (const auto& [name, tensor] : got) {
    if (name.rfind("fc.", 0) == 0) continue;
    EXPECT_TRUE(torch::equal(tensor, want.at(name))) << name;
  }
  EXPECT_TRUE(torch::equal(got.at("fc.weight"), fc_before));
  EXPECT_NE(report->Summary().find("fc.weight (shape [10, 64] in source"), std::string::npos)
      << report->Summary();
}

TEST(InitFromTest, ArtifactLoadsDequantizedTernaryValues) {
  TempDir dir;
  auto source = Build(1);
  quant::QuantOptions options = quant::MakePreset(quant::Method::kHla);
  options.granularity = quant::Granularity::kChannel;
  auto quant = quant::TernaryModel::Attach(source, options);
  ASSERT_TRUE(quant.ok()) << quant.status();
  (*quant)->SetProgress(1.0);
  int quantized_layers = 0;
  for (const auto& layer : (*quant)->Stats(false)) quantized_layers += layer.quantized;
  const quant::Artifact artifact = (*quant)->Export("{}", "{}");
  // No .tern extension: the magic decides.
  const std::string file = dir.Path("exported.bin");
  ASSERT_TRUE(quant::WriteArtifactFile(artifact, file).ok());

  auto target = Build(2);
  auto report = InitializeFrom(file, *target);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->format, "artifact");
  EXPECT_TRUE(report->skipped.empty()) << report->Summary();
  EXPECT_TRUE(report->unused.empty()) << report->Summary();

  // A plain reference: value = code > 0 ? pos[unit] : code < 0 ? -neg[unit] : 0.
  const auto got = StateDict(*target);
  int ternary = 0;
  for (const quant::ArtifactTensor& t : artifact.tensors) {
    const at::Tensor actual = got.at(t.name).to(at::kFloat).contiguous().flatten();
    ASSERT_EQ(actual.numel(), t.numel()) << t.name;
    const float* a = actual.data_ptr<float>();
    if (t.kind == quant::ArtifactTensor::Kind::kFloat32) {
      for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(a[i], t.values[i]) << t.name << " " << i;
      continue;
    }
    ++ternary;
    const bool per_channel = t.granularity == quant::Granularity::kChannel;
    ASSERT_EQ(t.pos_scale.size(), per_channel ? static_cast<size_t>(t.shape[0]) : 1u);
    const int64_t per_unit = per_channel ? t.numel() / t.shape[0] : t.numel();
    for (int64_t i = 0; i < t.numel(); ++i) {
      const size_t unit = static_cast<size_t>(i / per_unit);
      const float want = t.codes[i] > 0   ? t.pos_scale[unit]
                         : t.codes[i] < 0 ? -t.neg_scale[unit]
                                          : 0.0f;
      ASSERT_EQ(a[i], want) << t.name << " " << i;
    }
  }
  EXPECT_GT(ternary, 0);
  EXPECT_EQ(ternary, quantized_layers);
}

TEST(InitFromTest, DirectoryLoadsNewestCommittedStep) {
  TempDir dir;
  auto committed = Build(1);
  auto newer = Build(3);
  const std::string step100 = WriteStep(dir.path(), 100, *committed, /*committed=*/true);
  const std::string step200 = WriteStep(dir.path(), 200, *newer, /*committed=*/false);
  WriteStep(dir.path(), 50, *newer, /*committed=*/true);

  auto target = Build(2);
  auto report = InitializeFrom(dir.path(), *target);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->source, step100 + "/rank-0.pt");
  ExpectSameState(*target, *committed);

  // A step directory by name, with or without the trailing slash.
  auto again = Build(2);
  report = InitializeFrom(step100 + "/", *again);
  ASSERT_TRUE(report.ok()) << report.status();
  ExpectSameState(*again, *committed);

  auto uncommitted = InitializeFrom(step200, *again);
  EXPECT_EQ(uncommitted.status().code(), StatusCode::kFailedPrecondition) << uncommitted.status();
  EXPECT_NE(uncommitted.status().message().find(step200), std::string::npos);

  TempDir empty;
  auto none = InitializeFrom(empty.path(), *again);
  EXPECT_EQ(none.status().code(), StatusCode::kFailedPrecondition) << none.status();
  EXPECT_NE(none.status().message().find("no committed checkpoint"), std::string::npos);
}

TEST(InitFromTest, TruncatedOrGarbageFileIsDataLoss) {
  TempDir dir;
  auto source = Build(1);
  const std::string bytes = CheckpointBytes(*source, 100);
  auto quant = quant::TernaryModel::Attach(source, quant::MakePreset(quant::Method::kTwn));
  ASSERT_TRUE(quant.ok());
  const std::string tern = quant::SerializeArtifact((*quant)->Export("{}", "{}"));
  const std::map<std::string, std::string> files = {
      {"truncated.pt", bytes.substr(0, bytes.size() / 2)},
      {"truncated.tern", tern.substr(0, tern.size() / 2)},
      {"garbage.pt", "this is not a checkpoint"},
      {"empty.pt", ""},
  };
  auto target = Build(2);
  const auto before = StateDict(*target);
  for (const auto& [name, content] : files) {
    const std::string file = dir.Path(name);
    ASSERT_TRUE(WriteFileAtomically(file, content).ok());
    auto report = InitializeFrom(file, *target);
    EXPECT_EQ(report.status().code(), StatusCode::kDataLoss) << name << ": " << report.status();
    EXPECT_NE(report.status().message().find(file), std::string::npos) << report.status();
  }
  for (const auto& [name, tensor] : StateDict(*target)) {
    EXPECT_TRUE(torch::equal(tensor, before.at(name))) << name;
  }
}

TEST(InitFromTest, MissingPathIsNotFound) {
  TempDir dir;
  auto target = Build(2);
  const std::string missing = dir.Path("no-such-checkpoint");
  auto report = InitializeFrom(missing, *target);
  EXPECT_EQ(report.status().code(), StatusCode::kNotFound) << report.status();
  EXPECT_NE(report.status().message().find(missing), std::string::npos);
}

TEST(InitFromTest, UnrelatedArchiveIsInvalidArgument) {
  TempDir dir;
  auto target = Build(2);
  const auto before = StateDict(*target);

  // A trainer-style archive of some other network.
  torch::nn::Sequential other(torch::nn::Linear(5, 7), torch::nn::Embedding(11, 3));
  const std::string file = dir.Path("other.pt");
  ASSERT_TRUE(WriteFileAtomically(file, CheckpointBytes(*other, 1)).ok());
  auto report = InitializeFrom(file, *target);
  ASSERT_EQ(report.status().code(), StatusCode::kInvalidArgument) << report.status();
  const std::string& message = report.status().message();
  EXPECT_NE(message.find("3 tensors"), std::string::npos) << message;
  EXPECT_NE(message.find(file), std::string::npos) << message;
  EXPECT_NE(message.find("'0.bias'"), std::string::npos) << message;
  EXPECT_NE(message.find("'conv1.weight'"), std::string::npos) << message;

  // torch::save of a module (no "model" sub-archive) is read from the top.
  const std::string saved = dir.Path("saved.pt");
  torch::save(other, saved);
  report = InitializeFrom(saved, *target);
  EXPECT_EQ(report.status().code(), StatusCode::kInvalidArgument) << report.status();

  // Same names, every parameter shape different (a ResNet-20 at another
  // width and class count); BN's scalar num_batches_tracked alone fits.
  torch::manual_seed(4);
  auto wide = BuildClassifier({"resnet20", 3, 100, 2.0});
  ASSERT_TRUE(wide.ok());
  const std::string wide_file = dir.Path("wide.pt");
  ASSERT_TRUE(WriteFileAtomically(wide_file, CheckpointBytes(**wide, 1)).ok());
  report = InitializeFrom(wide_file, *target);
  ASSERT_EQ(report.status().code(), StatusCode::kInvalidArgument) << report.status();
  EXPECT_NE(report.status().message().find("names match but no shape does, e.g. conv1.weight"),
            std::string::npos)
      << report.status();

  for (const auto& [name, tensor] : StateDict(*target)) {
    EXPECT_TRUE(torch::equal(tensor, before.at(name))) << name;
  }
}

TEST(CheckpointLayoutTest, NamesAndNewestCommittedStep) {
  EXPECT_EQ(StepDirName(100), "step-0000000100");
  EXPECT_EQ(RankFileName(3), "rank-3.pt");
  EXPECT_EQ(ParseStepDirName("step-0000000100"), 100);
  EXPECT_EQ(ParseStepDirName("step-"), -1);
  EXPECT_EQ(ParseStepDirName("step-12x"), -1);
  EXPECT_EQ(ParseStepDirName("stop-1"), -1);
  TempDir dir;
  EXPECT_EQ(NewestCommittedStep(dir.path()), -1);
  EXPECT_EQ(NewestCommittedStep(dir.Path("missing")), -1);
  for (const auto& [name, commit] : std::vector<std::pair<std::string, bool>>{
           {"step-0000000007", true}, {"step-0000000009", false}, {"step-x", true}}) {
    ASSERT_TRUE(MakeDirectories(dir.Path(name)).ok());
    if (commit) {
      ASSERT_TRUE(WriteFileAtomically(dir.Path(name) + "/COMMITTED", "").ok());
    }
  }
  EXPECT_EQ(NewestCommittedStep(dir.path()), 7);
}

// `model`'s state dict as a safetensors file (as PyTorch's save_file writes
// one): float32 tensors, the BN step counters as int64, names via `rename`.
template <typename Rename>
std::string SafetensorsBytes(torch::nn::Module& model, Rename rename) {
  model_io::SafetensorsFile file;
  file.metadata["format"] = "pt";
  for (const auto& [name, tensor] : StateDict(model)) {
    const at::Tensor t = tensor.contiguous();
    std::vector<int64_t> shape = t.sizes().vec();
    if (t.scalar_type() == at::kLong) {
      model_io::SafetensorsTensor counter{rename(name), model_io::Dtype::kI64, shape, {}};
      counter.data.assign(static_cast<const char*>(t.data_ptr()), t.numel() * 8);
      file.tensors.push_back(counter);
    } else {
      const float* v = t.data_ptr<float>();
      file.tensors.push_back(
          model_io::FloatTensor(rename(name), shape, std::vector<float>(v, v + t.numel())));
    }
  }
  return model_io::SerializeSafetensors(file);
}

// tern's ResNet-20 names as torchvision's ResNet names them (3 blocks a
// stage), behind DataParallel's "module." prefix.
std::string TorchvisionName(const std::string& name) {
  if (name.rfind("blocks.", 0) != 0) return "module." + name;
  const size_t dot = name.find('.', 7);
  const int64_t block = std::stoll(name.substr(7, dot - 7));
  std::string rest = name.substr(dot + 1);
  if (rest.rfind("shortcut_conv.", 0) == 0) rest = "downsample.0." + rest.substr(14);
  if (rest.rfind("shortcut_bn.", 0) == 0) rest = "downsample.1." + rest.substr(12);
  return "module.layer" + std::to_string(block / 3 + 1) + "." + std::to_string(block % 3) + "." +
         rest;
}

TEST(InitFromTest, SafetensorsStateDictLoadsEverything) {
  TempDir dir;
  auto source = Build(1);
  auto target = Build(2);
  ASSERT_TRUE(AnyDiffers(*source, *target));
  const std::string file = dir.Path("weights.bin");  // recognised by content, not name
  ASSERT_TRUE(WriteFileAtomically(file, SafetensorsBytes(*source, [](auto n) { return n; })).ok());
  auto report = InitializeFrom(file, *target);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->format, "safetensors");
  EXPECT_EQ(report->names, "as stored");
  EXPECT_TRUE(report->skipped.empty());
  ExpectSameState(*target, *source);
}

TEST(InitFromTest, TorchvisionNamesAreMapped) {
  TempDir dir;
  auto source = Build(1);
  const std::string file = dir.Path("torchvision.safetensors");
  ASSERT_TRUE(WriteFileAtomically(file, SafetensorsBytes(*source, TorchvisionName)).ok());
  auto target = Build(2);
  auto report = InitializeFrom(file, *target);  // kAuto: recognised by the names
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->names, "torchvision");
  EXPECT_TRUE(report->skipped.empty()) << report->Summary();
  EXPECT_TRUE(report->unused.empty()) << report->Summary();
  ExpectSameState(*target, *source);
  const nlohmann::json json = report->ToJson();
  EXPECT_EQ(json["names"], "torchvision");
  EXPECT_EQ(json["skipped"], 0);

  // As stored, no block matches: refused, naming examples from both sides.
  auto fresh = Build(3);
  auto as_stored = InitializeFrom(file, *fresh, SourceNames::kAsStored);
  ASSERT_FALSE(as_stored.ok());
  EXPECT_EQ(as_stored.status().code(), StatusCode::kInvalidArgument) << as_stored.status();
}

TEST(InitFromTest, SafetensorsWithOtherClassCountReportsWhySkipped) {
  TempDir dir;
  auto source = Build(1, /*num_classes=*/100);
  const std::string file = dir.Path("cifar100.safetensors");
  ASSERT_TRUE(WriteFileAtomically(file, SafetensorsBytes(*source, [](auto n) { return n; })).ok());
  auto target = Build(2, /*num_classes=*/10);
  auto report = InitializeFrom(file, *target);
  ASSERT_TRUE(report.ok()) << report.status();
  const nlohmann::json json = report->ToJson();
  EXPECT_EQ(json["skipped"], 2);
  EXPECT_EQ(json["skipped_tensors"][0]["name"], "fc.weight");
  EXPECT_EQ(json["skipped_tensors"][0]["reason"], "shape [100, 64] in source, [10, 64] in model");
}

TEST(InitFromTest, TruncatedSafetensorsIsDataLoss) {
  TempDir dir;
  auto source = Build(1);
  const std::string bytes = SafetensorsBytes(*source, [](auto n) { return n; });
  auto target = Build(2);
  const auto before = StateDict(*target);
  const std::string file = dir.Path("truncated.safetensors");
  ASSERT_TRUE(WriteFileAtomically(file, bytes.substr(0, bytes.size() - 100)).ok());
  auto report = InitializeFrom(file, *target);
  EXPECT_EQ(report.status().code(), StatusCode::kDataLoss) << report.status();
  EXPECT_NE(report.status().message().find("safetensors"), std::string::npos) << report.status();
  for (const auto& [name, tensor] : StateDict(*target)) {
    EXPECT_TRUE(torch::equal(tensor, before.at(name))) << name;
  }
}

}  // namespace
}  // namespace tern::trainer
