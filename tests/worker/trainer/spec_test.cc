#include "worker/trainer/spec.h"

#include <gtest/gtest.h>

namespace tern::trainer {
namespace {

TEST(TrainerSpecTest, DefaultsFromMinimalSpec) {
  auto spec = ParseTrainerSpec(R"({"optimization": {"epochs": 2}})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model.arch, "resnet20");
  EXPECT_EQ(spec->data.path, "/usr/share/datasets/fashion-mnist");
  EXPECT_EQ(spec->quant.method, quant::Method::kHla);
  EXPECT_DOUBLE_EQ(spec->quant.beta, 0.5);
  EXPECT_DOUBLE_EQ(spec->optim.lr, 0.1);
  EXPECT_EQ(spec->optim.batch_size, 128);
  EXPECT_EQ(spec->ranks, 1);
  // The API allows 0 loader threads: batches are built on the training thread.
  auto inline_loading = ParseTrainerSpec(R"({"optimization": {"epochs": 1}, "dataset": {"num_workers": 0}})");
  ASSERT_TRUE(inline_loading.ok()) << inline_loading.status();
  EXPECT_EQ(inline_loading->data.num_workers, 0);
}

TEST(TrainerSpecTest, ReadsProtoJsonForm) {
  auto spec = ParseTrainerSpec(R"({
    "name": "j1", "task": "TASK_CLASSIFICATION", "labels": {"team": "a"},
    "model": {"arch": "resnet32", "width_multiplier": 0.5},
    "dataset": {"kind": "DATASET_CIFAR10", "path": "/data/c10", "val_fraction": 0.1,
                "max_train_examples": 100},
    "quantization": {"method": "METHOD_TTQ", "granularity": "GRANULARITY_CHANNEL",
                     "packing": "PACKING_BASE3", "ttq_threshold": 0.1, "keep_first_fp": false},
    "optimization": {"optimizer": "OPTIMIZER_ADAMW", "epochs": 3, "batch_size": 64,
                     "seed": "42", "lr_schedule": "SCHEDULE_STEP", "step_milestones": [1, 2],
                     "micro_batches": 2},
    "resources": {"ranks": 2, "device_kind": "DEVICE_CPU"},
    "checkpoint": {"every_steps": 10}, "collective_timeout_seconds": 30
  })");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model.arch, "resnet32");
  EXPECT_EQ(spec->data.kind, "cifar10");
  EXPECT_EQ(spec->quant.method, quant::Method::kTtq);
  EXPECT_EQ(spec->quant.projection, quant::Projection::kTtq);
  EXPECT_EQ(spec->quant.granularity, quant::Granularity::kChannel);
  EXPECT_EQ(spec->quant.packing, quant::Packing::kBase3);
  EXPECT_FALSE(spec->quant.keep_first_fp);
  EXPECT_EQ(spec->optim.optimizer, "adamw");
  EXPECT_DOUBLE_EQ(spec->optim.lr, 1e-3);
  EXPECT_EQ(spec->optim.seed, 42u);
  EXPECT_EQ(spec->optim.step_milestones, (std::vector<int>{1, 2}));
  EXPECT_EQ(spec->ranks, 2);
  EXPECT_EQ(spec->collective_timeout_seconds, 30);
}

void ExpectError(const std::string& json, const std::string& needle) {
  auto spec = ParseTrainerSpec(json);
  ASSERT_FALSE(spec.ok()) << json;
  EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(spec.status().message().find(needle), std::string::npos)
      << spec.status().message() << " lacks " << needle;
}

TEST(TrainerSpecTest, RejectsBadInputNamingTheField) {
  ExpectError("not json", "not valid JSON");
  ExpectError("[1]", "expected a JSON object");
  ExpectError(R"({"optimization": {"epochs": 1, "learning_rate": 1}})",
              "optimization.learning_rate: unknown field");
  ExpectError(R"({"optimization": {"epochs": "many"}})", "optimization.epochs: expected an integer");
  ExpectError(R"({"optimization": {"epochs": 0}})", "optimization.epochs: must be > 0");
  ExpectError(R"({"optimization": {"epochs": 1}, "quantization": {"method": "METHOD_XNOR"}})",
              "quantization.method: unknown value \"METHOD_XNOR\"");
  ExpectError(R"({"optimization": {"epochs": 1}, "quantization": {"beta": 2}})",
              "quantization.beta: must be in [0, 1]");
  ExpectError(R"({"optimization": {"epochs": 1, "batch_size": 30}, "resources": {"ranks": 4}})",
              "optimization.batch_size: must be a multiple of resources.ranks");
  ExpectError(R"({"optimization": {"epochs": 1}, "model": {"arch": "vgg16"}})",
              "model.arch: must be one of");
  ExpectError(R"({"optimization": {"epochs": 1}, "model": 3})", "model: expected an object");
  ExpectError(R"({"optimization": {"epochs": 1, "seed": "12x"}})", "optimization.seed");
  ExpectError(R"({"optimization": {"epochs": 1}, "task": "TASK_DETECTION"})",
              "dataset.kind: TASK_DETECTION needs DATASET_COCO");
  ExpectError(R"({"optimization": {"epochs": 1}, "dataset": {"kind": "DATASET_COCO"}})",
              "dataset.kind: DATASET_COCO needs TASK_DETECTION");
  ExpectError(R"({"optimization": {"epochs": 1}, "task": "TASK_DETECTION",
                  "dataset": {"kind": "DATASET_COCO", "path": "/d", "input_size": 100}})",
              "dataset.input_size: detection needs a multiple of 32");
  ExpectError(R"({"optimization": {"epochs": 1}, "task": "TASK_DETECTION",
                  "model": {"head": "yolo"}, "dataset": {"kind": "DATASET_COCO", "path": "/d"}})",
              "model.head: must be one of");
  ExpectError(R"({"optimization": {"epochs": 1}, "task": "TASK_DETECTION",
                  "model": {"max_detections": 0}, "dataset": {"kind": "DATASET_COCO", "path": "/d"}})",
              "model.max_detections: must be in [1, 1000]");
  ExpectError(R"({"optimization": {"epochs": 1, "cuda_graph": true}})",
              "optimization.cuda_graph: needs resources.device_kind DEVICE_CUDA");
  ExpectError(R"({"optimization": {"epochs": 1, "cuda_graph": true, "micro_batches": 2},
                  "resources": {"device_kind": "DEVICE_CUDA"}})",
              "optimization.cuda_graph: needs optimization.micro_batches 1");
  ExpectError(R"({"optimization": {"epochs": 1, "cuda_graph": true},
                  "quantization": {"method": "METHOD_TTQ"},
                  "resources": {"device_kind": "DEVICE_CUDA"}})",
              "optimization.cuda_graph: does not support METHOD_TTQ");
  ExpectError(R"({"optimization": {"epochs": 1, "cuda_graph": true}, "task": "TASK_DETECTION",
                  "dataset": {"kind": "DATASET_COCO", "path": "/d"},
                  "resources": {"device_kind": "DEVICE_CUDA"}})",
              "optimization.cuda_graph: needs TASK_CLASSIFICATION");
}

// job.proto: knobs a method does not use are ignored, not an error, so a
// spec can be re-submitted with only the method changed (ternd accepts it).
TEST(TrainerSpecTest, KnobsTheMethodDoesNotUseAreIgnored) {
  auto spec = ParseTrainerSpec(
      R"({"optimization": {"epochs": 1}, "quantization": {"method": "METHOD_TTQ", "reg_fraction": 0.5}})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->quant.method, quant::Method::kTtq);
  EXPECT_EQ(spec->quant.reg_fraction, 0);
  ExpectError(
      R"({"optimization": {"epochs": 1}, "quantization": {"method": "METHOD_TTQ", "reg_fraction": 1.5}})",
      "quantization.reg_fraction: must be in [0, 1)");
}

TEST(TrainerSpecTest, ReadsAndWritesBatchNormRecalibration) {
  auto spec = ParseTrainerSpec(R"({
    "quantization": {"bn_recalibration_batches": 7, "recalibrate_bn_at_switch": true,
                     "recalibrate_bn_before_export": true},
    "optimization": {"epochs": 1}
  })");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->quant.bn_recalibration_batches, 7);
  EXPECT_TRUE(spec->quant.recalibrate_bn_at_switch);
  EXPECT_TRUE(spec->quant.recalibrate_bn_before_export);
  auto again = ParseTrainerSpec(ToJobSpecJson(*spec).dump());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->quant.bn_recalibration_batches, 7);
  EXPECT_TRUE(again->quant.recalibrate_bn_before_export);
  EXPECT_FALSE(ParseTrainerSpec(R"({"quantization": {"bn_recalibration_batches": -1},
                                    "optimization": {"epochs": 1}})")
                   .ok());
}

TEST(TrainerSpecTest, CudaGraphIsAcceptedForCudaClassification) {
  auto spec = ParseTrainerSpec(R"({"optimization": {"epochs": 1, "cuda_graph": true},
                                   "resources": {"device_kind": "DEVICE_CUDA"}})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(spec->optim.cuda_graph);
  EXPECT_FALSE(ParseTrainerSpec(R"({"optimization": {"epochs": 1}})")->optim.cuda_graph);
}

TEST(TrainerSpecTest, SyntheticDataNeedsNoPath) {
  auto spec = ParseTrainerSpec(
      R"({"optimization": {"epochs": 1},
          "dataset": {"kind": "DATASET_SYNTHETIC", "path": "", "input_size": 64}})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->data.kind, "synthetic");
  EXPECT_EQ(spec->data.input_size, 64);
  auto folder = ParseTrainerSpec(
      R"({"optimization": {"epochs": 1}, "dataset": {"kind": "DATASET_IMAGE_FOLDER", "path": ""}})");
  ASSERT_FALSE(folder.ok());
  EXPECT_NE(folder.status().message().find("dataset.path"), std::string::npos) << folder.status();
}

TEST(TrainerSpecTest, InitFromIsAccepted) {
  auto spec = ParseTrainerSpec(R"({"optimization": {"epochs": 1}, "model": {"init_from": "/m.tern"}})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model.init_from, "/m.tern");
}

TEST(TrainerSpecTest, DetectionDefaultsAndCocoPaths) {
  auto spec = ParseTrainerSpec(R"({"optimization": {"epochs": 1}, "task": "TASK_DETECTION",
      "dataset": {"kind": "DATASET_COCO", "path": "/data/coco", "val_images": "val2017"}})");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->task, "detection");
  EXPECT_EQ(spec->model.arch, "resnet18");  // the API's detection default
  EXPECT_EQ(spec->model.head, "centernet");
  EXPECT_EQ(spec->model.max_detections, 100);
  EXPECT_EQ(spec->data.train_annotations, "annotations/instances_train.json");
  EXPECT_EQ(spec->data.val_annotations, "annotations/instances_val.json");
  EXPECT_EQ(spec->data.train_images, "train");
  EXPECT_EQ(spec->data.val_images, "val2017");
  auto classification = ParseTrainerSpec(R"({"optimization": {"epochs": 1}, "model": {"arch": ""}})");
  ASSERT_TRUE(classification.ok()) << classification.status();
  EXPECT_EQ(classification->model.arch, "resnet20");
}

}  // namespace
}  // namespace tern::trainer
