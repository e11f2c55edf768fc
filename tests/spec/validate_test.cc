// spec::CheckJobSpec on JSON specs: every violation with its path, the
// proto3 JSON spellings it accepts, and the normalized values it returns.
#include "spec/validate.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "spec/rules.h"

namespace tern::spec {
namespace {

using json = nlohmann::json;

std::vector<std::string> Messages(const json& spec) {
  std::vector<std::string> out;
  for (const Violation& v : CheckJobSpec(spec)) out.push_back(v.path + ": " + v.rule);
  return out;
}

TEST(CheckJobSpecTest, AMinimalSpecIsValid) {
  EXPECT_EQ(Messages({{"optimization", {{"epochs", 1}}}}), std::vector<std::string>{});
}

TEST(CheckJobSpecTest, ReportsEveryViolationWithItsPath) {
  const json spec = {
      {"priority", 5000},
      {"labels", {{"Team", "x"}}},
      {"model", {{"arch", "vgg"}, {"width_multiplier", 5}}},
      {"dataset", {{"kind", "DATASET_CIFAR10"}, {"val_fraction", "NaN"}}},
      {"quantization", {{"method", 99}, {"kappa_start", 10}, {"kappa_end", 5}}},
      {"optimization",
       {{"epochs", 3}, {"warmup_epochs", 3}, {"step_milestones", {2, 2}}, {"lr", "fast"}}},
      {"resources", {{"ranks", 3}}},
      {"checkpoint", {{"directory", "rel"}}},
      {"collective_timeout_seconds", 1},
      {"extra", true}};
  EXPECT_EQ(Messages(spec),
            (std::vector<std::string>{
                "extra: unknown field",
                "optimization.lr: expected a number",
                "quantization.method: unknown QuantMethod value 99",
                "priority: must be in [-1000, 1000], got 5000",
                "collective_timeout_seconds: must be in [10, 86400], got 1",
                "model.arch: must be one of resnet20, resnet32, resnet56, resnet18, resnet34, "
                "resnet50 (or empty), got \"vgg\"",
                "model.width_multiplier: must be in (0, 4], got 5",
                "dataset.val_fraction: must be in [0, 0.5], got nan",
                "quantization.kappa_end: must be in [10, 10000], got 5",
                "optimization.warmup_epochs: must be in [0, 3), got 3",
                "labels[\"Team\"]: key must be 1..63 characters of [a-z0-9_.-/] starting with a "
                "lowercase letter",
                "dataset.path: required for DATASET_CIFAR10",
                "optimization.step_milestones[1]: must be strictly increasing",
                "optimization.batch_size: must be a multiple of resources.ranks × "
                "optimization.micro_batches = 3, got 128",
                "checkpoint.directory: must be an absolute path, got \"rel\"",
            }));
}

TEST(CheckJobSpecTest, EpochsAreRequired) {
  EXPECT_EQ(Messages(json::object()),
            std::vector<std::string>{"optimization.epochs: must be > 0 (required), got 0"});
  // Rules relative to epochs wait for a valid epochs.
  EXPECT_EQ(Messages({{"optimization", {{"warmup_epochs", 1}, {"step_milestones", {1}}}}}),
            std::vector<std::string>{"optimization.epochs: must be > 0 (required), got 0"});
}

TEST(CheckJobSpecTest, UnsetOptionalsTakeTheirDefaultsInCrossFieldRules) {
  // kappa_end's lower end is kappa_start's default (5) when unset.
  EXPECT_EQ(Messages({{"optimization", {{"epochs", 1}}}, {"quantization", {{"kappa_end", 4}}}}),
            std::vector<std::string>{"quantization.kappa_end: must be in [5, 10000], got 4"});
  // batch_size 128 by default: 3 ranks do not divide it.
  EXPECT_EQ(Messages({{"optimization", {{"epochs", 1}, {"micro_batches", 3}}}}).size(), 1u);
  // An explicit value outside the range fails even where 0 means "unset"
  // to the trainer.
  EXPECT_EQ(Messages({{"optimization", {{"epochs", 1}}}, {"resources", {{"threads_per_rank", 0}}}}),
            std::vector<std::string>{"resources.threads_per_rank: must be in [1, 256], got 0"});
}

TEST(CheckJobSpecTest, DetectionRules) {
  json spec = {{"task", "TASK_DETECTION"},
               {"optimization", {{"epochs", 1}}},
               {"dataset", {{"kind", "DATASET_COCO"}, {"path", "/d"}, {"input_size", 100}}}};
  EXPECT_EQ(Messages(spec),
            std::vector<std::string>{"dataset.input_size: detection needs a multiple of 32 in "
                                     "[64, 2048] (unset: 512), got 100"});
  spec["dataset"]["input_size"] = 96;
  EXPECT_TRUE(Messages(spec).empty());
  spec["dataset"]["kind"] = "DATASET_IDX";
  EXPECT_EQ(Messages(spec),
            std::vector<std::string>{"dataset.kind: TASK_DETECTION needs DATASET_COCO"});
}

TEST(CheckJobSpecTest, BatchNormRecalibrationRules) {
  json spec = {{"task", "TASK_DETECTION"},
               {"optimization", {{"epochs", 1}}},
               {"dataset", {{"kind", "DATASET_COCO"}, {"path", "/d"}}},
               {"quantization",
                {{"recalibrate_bn_before_export", true}, {"bn_recalibration_batches", 10001}}}};
  // Both tasks re-estimate BatchNorm statistics; only the batch count is out
  // of range.
  EXPECT_EQ(Messages(spec),
            (std::vector<std::string>{
                "quantization.bn_recalibration_batches: must be in [0, 10000], got 10001"}));
  spec["quantization"]["bn_recalibration_batches"] = 4;
  spec["quantization"]["recalibrate_bn_at_switch"] = true;
  EXPECT_TRUE(Messages(spec).empty());
  spec["task"] = "TASK_CLASSIFICATION";
  spec["dataset"] = {{"kind", "DATASET_IDX"}};
  spec["quantization"]["bn_recalibration_batches"] = 0;
  EXPECT_TRUE(Messages(spec).empty());
}

TEST(CheckJobSpecTest, ReadsProto3JsonSpellingsAndNormalizes) {
  json normalized;
  const json spec = {{"task", 2},
                     {"name", nullptr},
                     {"dataset", {{"kind", "DATASET_COCO"}, {"path", "/d"}}},
                     {"optimization", {{"epochs", "4"}, {"seed", "4294967295"}, {"lr", 1}}}};
  ASSERT_TRUE(CheckJobSpec(spec, &normalized).empty());
  EXPECT_EQ(normalized,
            json({{"task", "TASK_DETECTION"},
                  {"dataset", {{"kind", "DATASET_COCO"}, {"path", "/d"}}},
                  {"optimization", {{"epochs", 4}, {"seed", 4294967295u}, {"lr", 1.0}}}}));
  EXPECT_EQ(Messages({{"optimization", {{"epochs", 1}, {"seed", -1}}}}),
            std::vector<std::string>{"optimization.seed: out of range"});
  EXPECT_EQ(Messages({{"optimization", {{"epochs", 1.5}}}}),
            std::vector<std::string>{"optimization.epochs: expected an integer"});
  EXPECT_EQ(Messages({{"task", "TASK_TRANSLATION"}, {"optimization", {{"epochs", 1}}}}),
            std::vector<std::string>{"task: unknown value \"TASK_TRANSLATION\" (one of "
                                     "TASK_CLASSIFICATION, TASK_DETECTION)"});
  EXPECT_EQ(Messages(json::array()), std::vector<std::string>{"(root): expected a JSON object"});
}

TEST(CheckJobSpecTest, ViolationsToStatusPrefixesAndJoins) {
  EXPECT_TRUE(ViolationsToStatus({}).ok());
  const Status s = ViolationsToStatus({{"a", "x"}, {"b.c", "y"}}, "spec.");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "spec.a: x; spec.b.c: y");
  // The same violations as data, for google.rpc.BadRequest (server/rpc.h).
  ASSERT_NE(s.details(), nullptr);
  EXPECT_EQ(s.reason(), "SPEC_INVALID");
  ASSERT_EQ(s.details()->field_violations.size(), 2u);
  EXPECT_EQ(s.details()->field_violations[1].field, "spec.b.c");
  EXPECT_EQ(s.details()->field_violations[1].description, "y");
}

TEST(RulesTest, DefaultsLieInsideTheirRanges) {
  for (const Field& f : JobSpecFields()) {
    if (!f.default_number || f.path == "optimization.epochs") continue;
    json spec = {{"optimization", {{"epochs", 1}}}};
    const json value = f.type == Type::kDouble ? json(*f.default_number)
                                               : json(static_cast<int64_t>(*f.default_number));
    spec[json::json_pointer(
        "/" + f.path.substr(0, f.path.find('.')) +
        (f.path.find('.') == std::string::npos ? "" : "/" + f.path.substr(f.path.find('.') + 1)))] =
        value;
    EXPECT_EQ(Messages(spec), std::vector<std::string>{}) << f.path;
  }
}

}  // namespace
}  // namespace tern::spec
