// JobSpec validation rules (the gRPC-level checks are in job_service_test).
#include "server/spec_validation.h"

#include <gtest/gtest.h>

#include <cmath>

namespace tern::server {
namespace {

TEST(SpecValidationTest, AcceptsAFullValidSpec) {
  v1::JobSpec spec;
  spec.mutable_optimization()->set_epochs(10);
  EXPECT_TRUE(ValidateJobSpec(spec).ok()) << ValidateJobSpec(spec);
  spec.set_task(v1::TASK_DETECTION);
  spec.mutable_dataset()->set_kind(v1::DATASET_COCO);
  spec.mutable_dataset()->set_path("/data/coco");
  spec.mutable_model()->set_arch("resnet18");
  spec.mutable_model()->set_head("centernet");
  spec.mutable_resources()->set_ranks(4);
  spec.mutable_optimization()->set_batch_size(64);
  spec.mutable_optimization()->set_micro_batches(2);
  spec.mutable_optimization()->set_lr_schedule(v1::SCHEDULE_STEP);
  spec.mutable_optimization()->add_step_milestones(3);
  spec.mutable_optimization()->add_step_milestones(7);
  spec.mutable_quantization()->set_kappa_end(5);  // == default kappa_start
  (*spec.mutable_labels())["team/vision"] = "x";
  EXPECT_TRUE(ValidateJobSpec(spec).ok()) << ValidateJobSpec(spec);
}

TEST(SpecValidationTest, SyntheticDataNeedsNoPathUnlikeFileFormats) {
  v1::JobSpec spec;
  spec.mutable_optimization()->set_epochs(1);
  spec.mutable_dataset()->set_kind(v1::DATASET_SYNTHETIC);
  spec.mutable_dataset()->set_input_size(224);
  EXPECT_TRUE(ValidateJobSpec(spec).ok()) << ValidateJobSpec(spec);
  spec.mutable_dataset()->set_kind(v1::DATASET_IMAGE_FOLDER);
  const Status s = ValidateJobSpec(spec);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("dataset.path: required for DATASET_IMAGE_FOLDER"), std::string::npos)
      << s;
}

TEST(SpecValidationTest, CudaGraphNeedsACudaClassificationStepItCanCapture) {
  v1::JobSpec spec;
  spec.mutable_optimization()->set_epochs(1);
  spec.mutable_optimization()->set_cuda_graph(true);
  spec.mutable_resources()->set_device_kind(v1::DEVICE_CUDA);
  EXPECT_TRUE(ValidateJobSpec(spec).ok()) << ValidateJobSpec(spec);
  auto expect_rejected = [](const v1::JobSpec& bad, const std::string& want) {
    const Status s = ValidateJobSpec(bad, "");
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("optimization.cuda_graph: " + want), std::string::npos) << s;
  };
  v1::JobSpec cpu = spec;
  cpu.mutable_resources()->set_device_kind(v1::DEVICE_CPU);
  expect_rejected(cpu, "needs resources.device_kind DEVICE_CUDA");
  v1::JobSpec micro = spec;
  micro.mutable_optimization()->set_micro_batches(2);
  expect_rejected(micro, "needs optimization.micro_batches 1");
  v1::JobSpec ttq = spec;
  ttq.mutable_quantization()->set_method(v1::METHOD_TTQ);
  expect_rejected(ttq, "does not support METHOD_TTQ");
  v1::JobSpec detection = spec;
  detection.set_task(v1::TASK_DETECTION);
  detection.mutable_dataset()->set_kind(v1::DATASET_COCO);
  detection.mutable_dataset()->set_path("/data/coco");
  expect_rejected(detection, "needs TASK_CLASSIFICATION");
}

TEST(SpecValidationTest, RejectsOutOfRangeValuesWithTheirPath) {
  v1::JobSpec spec;
  spec.mutable_optimization()->set_epochs(2);
  spec.mutable_optimization()->set_warmup_epochs(2);  // must be < epochs
  spec.mutable_quantization()->set_reg_fraction(1.0);
  spec.mutable_dataset()->set_val_fraction(std::nan(""));
  spec.mutable_resources()->set_device_kind(static_cast<v1::DeviceKind>(5));
  const Status status = ValidateJobSpec(spec, "");
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  for (const char* want : {
           "optimization.warmup_epochs: must be in [0, 2), got 2",
           "quantization.reg_fraction: must be in [0, 1), got 1",
           "dataset.val_fraction: must be in [0, 0.5], got nan",
           "resources.device_kind: unknown DeviceKind value 5",
       }) {
    EXPECT_NE(status.message().find(want), std::string::npos)
        << want << " in " << status.message();
  }
}

// The walk of RefuseUnknownFields reaches repeated message fields too (JobSpec
// has none yet, so an EpochEnd with its repeated LayerStats stands in).
TEST(RefuseUnknownFieldsTest, NamesEachUnknownFieldByItsParentsPath) {
  v1::EpochEnd epoch;
  epoch.add_layers();
  v1::LayerStats* second = epoch.add_layers();
  EXPECT_TRUE(RefuseUnknownFields(epoch, "epoch").ok());
  second->GetReflection()->MutableUnknownFields(second)->AddVarint(77, 1);
  const Status refused = RefuseUnknownFields(epoch, "epoch");
  ASSERT_EQ(refused.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(refused.reason(), "SPEC_UNKNOWN_FIELD");
  ASSERT_EQ(refused.details()->field_violations.size(), 1u);
  EXPECT_EQ(refused.details()->field_violations[0].field, "epoch.layers[1]");
  EXPECT_EQ(refused.details()->field_violations[0].description, "unknown field number 77");
  EXPECT_EQ(refused.message().rfind("epoch.layers[1]: unknown field number 77", 0), 0u);
}

}  // namespace
}  // namespace tern::server
