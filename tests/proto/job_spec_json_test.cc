// The JobSpec's proto3 JSON form is the trainer's input (ARCHITECTURE.md):
// these tests pin the JSON keys, the round trip, the rejection of bad input
// and the "unset optional = documented default" convention.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tern/v1/job.pb.h"

namespace tern {
namespace {

namespace pb = google::protobuf;
using tern::v1::JobSpec;

// A spec with every field of JobSpec and its sub-messages set to a value
// other than its default (AllFieldsSetTest checks that nothing is missed).
JobSpec FullSpec() {
  JobSpec spec;
  spec.set_name("hla-resnet20-fmnist");
  spec.set_owner("alice");
  (*spec.mutable_labels())["team"] = "vision";
  (*spec.mutable_labels())["sweep"] = "beta-0.5";
  spec.set_priority(7);
  spec.set_max_restarts(2);
  spec.set_task(v1::TASK_DETECTION);

  v1::ModelSpec* model = spec.mutable_model();
  model->set_arch("resnet18");
  model->set_head("centernet");
  model->set_width_multiplier(0.5);
  model->set_init_from("/ckpt/fp/model.tern");
  model->set_max_detections(50);
  model->set_init_from_names("torchvision");

  v1::DatasetSpec* data = spec.mutable_dataset();
  data->set_kind(v1::DATASET_COCO);
  data->set_path("/data/shapes");
  data->set_val_fraction(0.1);
  data->set_train_annotations("annotations/instances_train.json");
  data->set_val_annotations("annotations/instances_val.json");
  data->set_train_images("train");
  data->set_val_images("val");
  data->set_augment(false);
  data->set_num_workers(4);
  data->set_input_size(128);
  data->set_max_train_examples(1000);
  data->set_max_eval_examples(200);

  v1::QuantizationSpec* q = spec.mutable_quantization();
  q->set_method(v1::METHOD_HLA_NO_RESCALE);
  q->set_granularity(v1::GRANULARITY_CHANNEL);
  q->set_keep_first_fp(false);
  q->set_keep_last_fp(false);
  q->set_twn_delta_factor(0.75);
  q->set_lat_iterations(5);
  q->set_lat_epsilon(1e-6);
  q->set_second_moment_decay(0.99);
  q->set_ttq_threshold(0.1);
  q->set_lambda_max(0.02);
  q->set_reg_warmup_fraction(0.2);
  q->set_reg_fraction(0.25);
  q->set_beta(0.25);
  q->set_normalize(false);
  q->set_kappa_start(4.0);
  q->set_kappa_end(40.0);
  q->set_clip(1.5);
  q->set_packing(v1::PACKING_BASE3);
  q->set_bn_recalibration_batches(16);
  q->set_recalibrate_bn_at_switch(true);
  q->set_recalibrate_bn_before_export(true);

  v1::OptimizationSpec* opt = spec.mutable_optimization();
  opt->set_optimizer(v1::OPTIMIZER_ADAMW);
  opt->set_lr(0.003);
  opt->set_momentum(0.8);
  opt->set_nesterov(false);
  opt->set_weight_decay(0.05);
  opt->set_adam_beta1(0.85);
  opt->set_adam_beta2(0.99);
  opt->set_adam_epsilon(1e-7);
  opt->set_lr_schedule(v1::SCHEDULE_STEP);
  opt->set_warmup_epochs(0.5);
  opt->add_step_milestones(10);
  opt->add_step_milestones(20);
  opt->set_step_gamma(0.2);
  opt->set_batch_size(256);
  opt->set_epochs(30);
  opt->set_seed(4294967295u);
  opt->set_deterministic(true);
  opt->set_bf16(false);
  opt->set_channels_last(true);
  opt->set_micro_batches(2);
  opt->set_cuda_graph(true);

  v1::ResourceSpec* res = spec.mutable_resources();
  res->set_ranks(4);
  res->set_device_kind(v1::DEVICE_CUDA);
  res->set_threads_per_rank(2);

  spec.mutable_checkpoint()->set_every_steps(100);
  spec.mutable_checkpoint()->set_directory("/shared/ckpt/job-1");
  spec.mutable_events()->set_progress_every_steps(10);
  spec.set_collective_timeout_seconds(120);
  return spec;
}

std::string ToJson(const JobSpec& spec, bool always_print_primitives = false) {
  pb::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = always_print_primitives;
  std::string json;
  const auto status = pb::util::MessageToJsonString(spec, &json, options);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return json;
}

// Parses as a server or ternctl does: unknown fields are errors.
pb::util::Status FromJson(const std::string& json, JobSpec* spec) {
  pb::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  return pb::util::JsonStringToMessage(json, spec, options);
}

// Appends to `missing` every field path of `msg` that is unset or default.
void CollectUnsetFields(const pb::Message& msg, const std::string& prefix,
                        std::vector<std::string>* missing) {
  const pb::Descriptor* d = msg.GetDescriptor();
  const pb::Reflection* r = msg.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    const std::string path = prefix + f->name();
    if (f->is_repeated()) {
      if (r->FieldSize(msg, f) == 0) missing->push_back(path);
      continue;
    }
    // For proto3 scalars without presence, HasField means "not the default".
    if (!r->HasField(msg, f)) {
      missing->push_back(path);
      continue;
    }
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      CollectUnsetFields(r->GetMessage(msg, f), path + ".", missing);
    }
  }
}

// Every JSON key path of a message type; enum fields also list their values,
// maps their value type. This is the contract with the trainer.
void CollectKeys(const pb::Descriptor* d, const std::string& prefix,
                 std::vector<std::string>* keys) {
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    std::string key = prefix + f->name();
    if (f->is_map()) {
      keys->push_back(key + " map");
    } else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      CollectKeys(f->message_type(), key + ".", keys);
    } else {
      key += std::string(" ") + f->type_name();
      if (f->is_repeated()) key += "[]";
      if (f->has_presence()) key += "?";
      if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM) {
        const pb::EnumDescriptor* e = f->enum_type();
        for (int v = 0; v < e->value_count(); ++v) {
          key += (v == 0 ? " = " : "|") + e->value(v)->name();
        }
      }
      keys->push_back(key);
    }
  }
}

TEST(JobSpecJsonTest, AllFieldsSetInFullSpec) {
  std::vector<std::string> missing;
  CollectUnsetFields(FullSpec(), "", &missing);
  EXPECT_TRUE(missing.empty())
      << "FullSpec() leaves these unset; set them so the round trip covers "
         "them: "
      << ::testing::PrintToString(missing);
}

TEST(JobSpecJsonTest, RoundTripPreservesEveryField) {
  const JobSpec spec = FullSpec();
  const std::string json = ToJson(spec);
  JobSpec parsed;
  const auto status = FromJson(json, &parsed);
  ASSERT_TRUE(status.ok()) << status.ToString() << "\n" << json;
  std::string diff;
  pb::util::MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&diff);
  EXPECT_TRUE(differencer.Compare(spec, parsed)) << diff << "\n" << json;
  // Optional fields set to their type's zero keep their presence.
  EXPECT_TRUE(parsed.quantization().has_keep_first_fp());
  EXPECT_FALSE(parsed.quantization().keep_first_fp());
}

TEST(JobSpecJsonTest, JsonUsesSnakeCaseKeysAndEnumNames) {
  const std::string json = ToJson(FullSpec());
  for (const char* needle :
       {"\"max_restarts\":2", "\"width_multiplier\":0.5",
        "\"reg_warmup_fraction\":0.2", "\"collective_timeout_seconds\":120",
        "\"progress_every_steps\":10", "\"step_milestones\":[10,20]",
        "\"method\":\"METHOD_HLA_NO_RESCALE\"", "\"kind\":\"DATASET_COCO\"",
        "\"device_kind\":\"DEVICE_CUDA\"", "\"seed\":4294967295",
        "\"labels\":{"}) {
    EXPECT_NE(json.find(needle), std::string::npos)
        << "missing " << needle << " in " << json;
  }
  EXPECT_EQ(json.find("maxRestarts"), std::string::npos) << json;
}

TEST(JobSpecJsonTest, UnsetOptionalFieldsAreDetectablyUnset) {
  JobSpec spec;
  ASSERT_TRUE(FromJson(R"({"optimization": {"epochs": 3}})", &spec).ok());
  EXPECT_EQ(spec.optimization().epochs(), 3);
  EXPECT_FALSE(spec.optimization().has_lr());
  EXPECT_FALSE(spec.optimization().has_batch_size());
  EXPECT_FALSE(spec.optimization().has_bf16());
  EXPECT_FALSE(spec.has_max_restarts());
  EXPECT_FALSE(spec.has_collective_timeout_seconds());
  EXPECT_FALSE(spec.has_quantization());
  EXPECT_FALSE(spec.quantization().has_beta());
  EXPECT_EQ(spec.quantization().method(), v1::METHOD_UNSPECIFIED);

  // Explicit zero is "set", distinct from unset.
  ASSERT_TRUE(
      FromJson(R"({"optimization": {"epochs": 3, "lr": 0, "bf16": false}})",
               &spec)
          .ok());
  EXPECT_TRUE(spec.optimization().has_lr());
  EXPECT_EQ(spec.optimization().lr(), 0.0);
  EXPECT_TRUE(spec.optimization().has_bf16());

  // Printing keeps unset optionals absent, even when the agent prints
  // default-valued plain fields, so the trainer can apply the defaults.
  JobSpec minimal;
  minimal.mutable_optimization()->set_epochs(3);
  const std::string json = ToJson(minimal, /*always_print_primitives=*/true);
  EXPECT_EQ(json.find("\"lr\""), std::string::npos) << json;
  EXPECT_EQ(json.find("\"batch_size\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"epochs\":3"), std::string::npos) << json;
}

TEST(JobSpecJsonTest, UnknownFieldIsRejectedNamingIt) {
  JobSpec spec;
  const auto status = FromJson(
      R"({"optimization": {"epochs": 3, "learning_rate": 0.1}})", &spec);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.ToString().find("learning_rate"), std::string::npos)
      << status.ToString();

  const auto top = FromJson(R"({"epochz": 3})", &spec);
  ASSERT_FALSE(top.ok());
  EXPECT_NE(top.ToString().find("epochz"), std::string::npos)
      << top.ToString();
}

TEST(JobSpecJsonTest, WrongTypeIsRejectedNamingTheField) {
  struct Case {
    const char* json;
    const char* field;
  };
  for (const Case& c : {
           Case{R"({"optimization": {"epochs": "many"}})", "epochs"},
           Case{R"({"optimization": {"lr": [0.1]}})", "lr"},
           Case{R"({"quantization": {"keep_first_fp": 1}})", "keep_first_fp"},
           Case{R"({"quantization": {"method": "METHOD_BOGUS"}})", "method"},
           Case{R"({"resources": {"ranks": 1.5}})", "ranks"},
           Case{R"({"model": "resnet20"})", "model"},
       }) {
    JobSpec spec;
    const auto status = FromJson(c.json, &spec);
    ASSERT_FALSE(status.ok()) << c.json;
    EXPECT_NE(status.ToString().find(c.field), std::string::npos)
        << c.json << " -> " << status.ToString();
  }
}

// What protobuf 3.21's JSON parser lets through, so the server's validator
// (not the parser) must reject it: numbers of undefined enum values (proto3
// enums are open) and quoted booleans such as "yes"/"no".
TEST(JobSpecJsonTest, ParserLeniencyTheValidatorMustCover) {
  JobSpec spec;
  ASSERT_TRUE(FromJson(R"({"quantization": {"method": 99}})", &spec).ok());
  EXPECT_FALSE(v1::QuantMethod_IsValid(spec.quantization().method()));

  ASSERT_TRUE(
      FromJson(R"({"quantization": {"keep_first_fp": "yes"}})", &spec).ok());
  EXPECT_TRUE(spec.quantization().keep_first_fp());

  // Integers may be quoted, as proto3 JSON allows; range is still checked.
  ASSERT_TRUE(FromJson(R"({"optimization": {"epochs": "3"}})", &spec).ok());
  EXPECT_EQ(spec.optimization().epochs(), 3);
  EXPECT_FALSE(FromJson(R"({"optimization": {"epochs": 3e10}})", &spec).ok());
}

// Renaming or retyping a JobSpec field breaks every trainer and stored job
// spec: add fields instead. Update this list only when adding a field.
TEST(JobSpecJsonTest, JsonKeysAreStable) {
  std::vector<std::string> keys;
  CollectKeys(JobSpec::descriptor(), "", &keys);
  const std::vector<std::string> expected = {
      "name string",
      "owner string",
      "labels map",
      "priority int32",
      "max_restarts int32?",
      "task enum = TASK_UNSPECIFIED|TASK_CLASSIFICATION|TASK_DETECTION",
      "model.arch string",
      "model.head string",
      "model.width_multiplier double?",
      "model.init_from string",
      "model.max_detections int32?",
      "model.init_from_names string",
      "dataset.kind enum = DATASET_UNSPECIFIED|DATASET_IDX|DATASET_CIFAR10|"
      "DATASET_CIFAR100|DATASET_IMAGE_FOLDER|DATASET_COCO|DATASET_SYNTHETIC",
      "dataset.path string",
      "dataset.val_fraction double",
      "dataset.train_annotations string",
      "dataset.val_annotations string",
      "dataset.train_images string",
      "dataset.val_images string",
      "dataset.augment bool?",
      "dataset.num_workers int32?",
      "dataset.input_size int32?",
      "dataset.max_train_examples int32",
      "dataset.max_eval_examples int32",
      "quantization.method enum = METHOD_UNSPECIFIED|METHOD_FP|METHOD_TWN|"
      "METHOD_TTQ|METHOD_LAT|METHOD_HLA|METHOD_HLA_NO_REGULARIZER|"
      "METHOD_HLA_NO_RESCALE",
      "quantization.granularity enum = GRANULARITY_UNSPECIFIED|"
      "GRANULARITY_TENSOR|GRANULARITY_CHANNEL",
      "quantization.keep_first_fp bool?",
      "quantization.keep_last_fp bool?",
      "quantization.twn_delta_factor double?",
      "quantization.lat_iterations int32?",
      "quantization.lat_epsilon double?",
      "quantization.second_moment_decay double?",
      "quantization.ttq_threshold double?",
      "quantization.lambda_max double?",
      "quantization.reg_warmup_fraction double?",
      "quantization.reg_fraction double?",
      "quantization.beta double?",
      "quantization.normalize bool?",
      "quantization.kappa_start double?",
      "quantization.kappa_end double?",
      "quantization.clip double?",
      "quantization.packing enum = PACKING_UNSPECIFIED|PACKING_2BIT|"
      "PACKING_BASE3",
      "quantization.bn_recalibration_batches int32",
      "quantization.recalibrate_bn_at_switch bool",
      "quantization.recalibrate_bn_before_export bool",
      "optimization.optimizer enum = OPTIMIZER_UNSPECIFIED|OPTIMIZER_SGD|"
      "OPTIMIZER_ADAMW",
      "optimization.lr double?",
      "optimization.momentum double?",
      "optimization.nesterov bool?",
      "optimization.weight_decay double?",
      "optimization.adam_beta1 double?",
      "optimization.adam_beta2 double?",
      "optimization.adam_epsilon double?",
      "optimization.lr_schedule enum = SCHEDULE_UNSPECIFIED|SCHEDULE_COSINE|"
      "SCHEDULE_STEP",
      "optimization.warmup_epochs double",
      "optimization.step_milestones int32[]",
      "optimization.step_gamma double?",
      "optimization.batch_size int32?",
      "optimization.epochs int32",
      "optimization.seed uint32",
      "optimization.deterministic bool",
      "optimization.bf16 bool?",
      "optimization.channels_last bool?",
      "optimization.micro_batches int32?",
      "optimization.cuda_graph bool",
      "resources.ranks int32?",
      "resources.device_kind enum = DEVICE_UNSPECIFIED|DEVICE_CPU|DEVICE_CUDA",
      "resources.threads_per_rank int32?",
      "checkpoint.every_steps int32?",
      "checkpoint.directory string",
      "events.progress_every_steps int32?",
      "collective_timeout_seconds int32?",
  };
  EXPECT_EQ(keys, expected) << ::testing::PrintToString(keys);
}

}  // namespace
}  // namespace tern
