// tern-trainer with task = detection, as separate processes, on a generated
// synthetic COCO set: 2-rank Gloo parity, a short run that learns (AP50), the
// artifact and the COCO results file, and a clear error for bad data.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "tests/worker/trainer/trainer_process.h"
#include "worker/detection/coco.h"
#include "worker/detection/eval.h"
#include "worker/detection/synth.h"
#include "worker/trainer/detection_model.h"

namespace tern::trainer {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace testing_util;  // NOLINT: test helpers

// Writes the synthetic set once per test binary.
const std::string& SynthDir() {
  static const std::string dir = [] {
    const std::string d = TempDir("synth_coco");
    detection::SynthOptions synth;
    synth.output_dir = d;
    synth.image_size = 64;
    synth.train_images = 1024;
    synth.val_images = 128;
    synth.max_objects = 3;
    synth.num_classes = 2;
    synth.seed = 5;
    EXPECT_TRUE(detection::WriteSynthCoco(synth).ok());
    return d;
  }();
  return dir;
}

json DetectionSpec(const std::string& method, int ranks, int micro_batches) {
  return {{"name", "det-" + method},
          {"task", "TASK_DETECTION"},
          {"model", {{"arch", "resnet20"}, {"width_multiplier", 0.25}}},
          {"dataset", {{"kind", "DATASET_COCO"}, {"path", SynthDir()}, {"input_size", 64},
                       {"max_train_examples", 32}, {"max_eval_examples", 16},
                       {"num_workers", 1}}},
          {"quantization", {{"method", method}}},
          {"optimization", {{"epochs", 1}, {"batch_size", 8}, {"lr", 0.02}, {"seed", 3},
                            {"deterministic", true}, {"micro_batches", micro_batches}}},
          {"resources", {{"ranks", ranks}, {"threads_per_rank", 1}}},
          {"checkpoint", {{"every_steps", 2}}},
          {"events", {{"progress_every_steps", 1}}}};
}

// The artifact's metrics without the results file's path (which names the
// run's directory).
json ArtifactMetrics(const json& finished) {
  json metrics = finished["artifact"];
  metrics.erase("results_path");
  return metrics;
}

// As the classification parity test (tests/worker/trainer/trainer_test.cc): 1 rank
// with 2 micro-batches and 2 ranks with one each hold bit-identical
// parameters, BatchNorm statistics and counters and quantizer state on both
// ranks, export the same artifact and score it the same.
TEST(DetectionTrainerTest, TwoRankGlooEqualsOneRankWithSameGlobalBatch) {
  for (const std::string method : {"METHOD_FP", "METHOD_HLA"}) {
    const std::string one = TempDir("det_parity1_" + method);
    const std::string two = TempDir("det_parity2_" + method);
    // Same per-rank batches (and BatchNorm statistics) as micro-batches; the
    // loss is normalized by the object count of the whole global batch.
    EXPECT_EQ(RunJob(one, DetectionSpec(method, 1, 2)), (std::vector<int>{0}));
    EXPECT_EQ(RunJob(two, DetectionSpec(method, 2, 1)), (std::vector<int>{0, 0}));
    const auto state = CheckpointState(one);
    ExpectIdenticalState(state, CheckpointState(two, 0), method + ": 1 rank x 2 vs rank 0 of 2");
    ExpectIdenticalState(state, CheckpointState(two, 1), method + ": 1 rank x 2 vs rank 1 of 2");
    int counters = 0;
    for (const auto& [name, t] : state) {
      if (name.find("num_batches_tracked") == std::string::npos) continue;
      ++counters;
      EXPECT_EQ(t.item<int64_t>(), 4) << method << " " << name;  // 32 / 8 steps
    }
    EXPECT_GT(counters, 19) << method;  // the trunk's and the neck's
    ExpectIdenticalArtifacts(one + "/model.tern", two + "/model.tern");
    const auto events = Events(two + "/rank0.jsonl");
    ASSERT_FALSE(events.empty());
    ASSERT_EQ(events.back()["event"], "finished") << events.back().dump();
    const auto alone = Events(one + "/rank0.jsonl");
    ASSERT_FALSE(alone.empty());
    ASSERT_EQ(alone.back()["event"], "finished") << alone.back().dump();
    // The artifact, scored by rank 0 alone: the same numbers.
    EXPECT_EQ(ArtifactMetrics(alone.back()), ArtifactMetrics(events.back())) << method;
    // Both ranks evaluated their share: rank 0 reports AP over all 16 images,
    // the same as one rank over all of them.
    EXPECT_EQ(events.back()["fp"]["images"], 16);
    EXPECT_TRUE(events.back()["fp"]["ap50"].is_number());
    EXPECT_EQ(alone.back()["fp"], events.back()["fp"]) << method;
    EXPECT_EQ(alone.back()["ternary"], events.back()["ternary"]) << method;
  }
}

// A short CPU run learns to find the shapes: AP50 far above what an
// untrained network scores (~0.01), measured on the re-loaded artifact.
TEST(DetectionTrainerTest, ShortRunReachesNonTrivialAp50) {
  const std::string dir = TempDir("det_short");
  json spec = DetectionSpec("METHOD_HLA", 1, 1);
  spec["model"]["width_multiplier"] = 0.5;
  spec["dataset"]["max_train_examples"] = 1024;
  spec["dataset"]["max_eval_examples"] = 128;
  spec["optimization"] = {{"epochs", 5},     {"batch_size", 16},         {"lr", 0.03},
                          {"seed", 1},       {"weight_decay", 0.0001},   {"warmup_epochs", 0.25}};
  spec["resources"] = {{"ranks", 1}, {"threads_per_rank", 2}};
  spec["checkpoint"] = {{"every_steps", 1000}};
  spec["events"] = {{"progress_every_steps", 40}};
  ASSERT_EQ(RunJob(dir, spec), (std::vector<int>{0}));
  const auto events = Events(dir + "/rank0.jsonl");
  ASSERT_FALSE(events.empty());
  const json& done = events.back();
  ASSERT_EQ(done["event"], "finished") << done.dump();
  const double ap50 = done["artifact"]["ap50"].get<double>();
  EXPECT_GT(ap50, 0.3) << done["artifact"].dump();
  EXPECT_NEAR(done["bits_per_weight"].get<double>(), 2.0, 0.01);
  // The COCO results file scores to the same AP with the evaluator.
  const std::string results = done["detections_path"].get<std::string>();
  auto detections = detection::ReadDetectionsJson(results);
  ASSERT_TRUE(detections.ok()) << detections.status();
  auto truth = detection::ReadCocoFile(SynthDir() + "/annotations/instances_val.json");
  ASSERT_TRUE(truth.ok()) << truth.status();
  auto rescored = detection::EvaluateDetections(*truth, *detections);
  ASSERT_TRUE(rescored.ok()) << rescored.status();
  EXPECT_NEAR(*rescored->ap50, ap50, 1e-6);
  int epoch_ends = 0;
  for (const auto& e : events) {
    if (e["event"] != "epoch_end") continue;
    ++epoch_ends;
    EXPECT_EQ(e["eval_split"], "test");  // the val annotations: nothing held out
    EXPECT_TRUE(e["ternary"]["ap"].is_number());
  }
  EXPECT_EQ(epoch_ends, 5);
  EXPECT_FALSE(done.contains("val")) << done.dump();
}

// dataset.val_fraction: per-epoch evaluation and the final `val` metrics
// score the images held out of the training annotations, the artifact the val
// annotations; HLA's switch reports AP before and after it and after
// re-estimating the BatchNorm statistics on unaugmented training images, and
// the statistics re-estimated before the export are what the artifact holds.
TEST(DetectionTrainerTest, ValidationSplitAndBatchNormReestimation) {
  const std::string dir = TempDir("det_val");
  json spec = DetectionSpec("METHOD_HLA", 1, 1);
  spec["dataset"]["max_train_examples"] = 48;
  spec["dataset"]["max_eval_examples"] = 8;
  spec["dataset"]["val_fraction"] = 0.25;  // 12 held out, 36 trained on
  spec["optimization"]["epochs"] = 2;
  spec["quantization"]["reg_fraction"] = 0.5;
  spec["quantization"]["bn_recalibration_batches"] = 2;
  spec["quantization"]["recalibrate_bn_before_export"] = true;
  ASSERT_EQ(RunJob(dir, spec), (std::vector<int>{0}));
  const auto events = Events(dir + "/rank0.jsonl");
  ASSERT_FALSE(events.empty());
  const json& done = events.back();
  ASSERT_EQ(done["event"], "finished") << done.dump();
  int epoch_ends = 0, switches = 0;
  for (const auto& e : events) {
    if (e["event"] == "epoch_end") {
      ++epoch_ends;
      EXPECT_EQ(e["eval_split"], "val");
      EXPECT_EQ(e["ternary"]["images"], 12) << e.dump();
    } else if (e["event"] == "phase_switch") {
      ++switches;
      EXPECT_EQ(e["eval_split"], "val");
      for (const char* forward : {"fp", "ternary", "ternary_bn"}) {
        EXPECT_TRUE(e[forward]["ap50"].is_number()) << forward << ": " << e.dump();
        EXPECT_EQ(e[forward]["images"], 12) << e.dump();
      }
      EXPECT_EQ(e["bn_batches"], 2);
      EXPECT_EQ(e["bn_kept"], false);
    }
  }
  EXPECT_EQ(epoch_ends, 2);
  EXPECT_EQ(switches, 1);
  EXPECT_EQ(done["val"]["ternary"]["images"], 12) << done.dump();
  EXPECT_TRUE(done["val"]["fp"]["ap50"].is_number());
  EXPECT_EQ(done["artifact"]["images"], 8);
  EXPECT_EQ(done["bn_recalibration_batches"], 2);
  // The ternary model at the end (after the re-estimation) and the re-loaded
  // artifact score the same on the val annotations.
  EXPECT_EQ(done["ternary"]["ap"], done["artifact"]["ap"]) << done.dump();
}

// model.init_from: a second job starts from the first one's checkpoint
// (every tensor matches), and a wrong path fails naming it.
TEST(DetectionTrainerTest, InitFromAnEarlierRunLoadsEveryTensor) {
  const std::string first = TempDir("det_init_a");
  ASSERT_EQ(RunJob(first, DetectionSpec("METHOD_FP", 1, 1)), (std::vector<int>{0}));
  const std::string second = TempDir("det_init_b");
  json spec = DetectionSpec("METHOD_HLA", 1, 1);
  spec["model"]["init_from"] = first + "/checkpoints";
  ASSERT_EQ(RunJob(second, spec), (std::vector<int>{0}));
  const auto events = Events(second + "/rank0.jsonl");
  ASSERT_FALSE(events.empty());
  const json& started = events.front();
  ASSERT_EQ(started["event"], "started");
  EXPECT_EQ(started["init_from"]["format"], "checkpoint");
  EXPECT_EQ(started["init_from"]["skipped"], 0);
  const auto model_tensors = [] {
    DetectorArchitecture arch;
    arch.width_multiplier = 0.25;
    arch.backbone = "resnet20";
    arch.input_size = 64;
    arch.category_ids = {1, 2};
    arch.category_names = {"a", "b"};
    auto model = BuildCenterNet(arch).value();
    return static_cast<int64_t>(model->named_parameters().size() + model->named_buffers().size());
  }();
  EXPECT_EQ(started["init_from"]["loaded"].get<int64_t>(), model_tensors);

  const std::string third = TempDir("det_init_c");
  spec["model"]["init_from"] = first + "/no-such-dir";
  EXPECT_NE(RunJob(third, spec), (std::vector<int>{0}));
  const auto failed = Events(third + "/rank0.jsonl");
  ASSERT_FALSE(failed.empty());
  EXPECT_EQ(failed.back()["event"], "failed");
  EXPECT_NE(failed.back()["reason"].get<std::string>().find("no-such-dir"), std::string::npos)
      << failed.back().dump();
}

TEST(DetectionTrainerTest, MissingAnnotationsFailNamingTheFile) {
  const std::string dir = TempDir("det_missing");
  json spec = DetectionSpec("METHOD_HLA", 1, 1);
  spec["dataset"]["val_annotations"] = "annotations/nope.json";
  EXPECT_NE(RunJob(dir, spec), (std::vector<int>{0}));
  const auto events = Events(dir + "/rank0.jsonl");
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["event"], "failed");
  EXPECT_NE(events.back()["reason"].get<std::string>().find("nope.json"), std::string::npos)
      << events.back().dump();
}

}  // namespace
}  // namespace tern::trainer
