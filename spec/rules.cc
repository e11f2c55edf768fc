#include "spec/rules.h"

#include <algorithm>
#include <cctype>
#include <limits>

namespace tern::spec {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

const EnumType kTask{
    "Task", "TASK_", {"TASK_UNSPECIFIED", "TASK_CLASSIFICATION", "TASK_DETECTION"}};
const EnumType kDatasetKind{
    "DatasetKind",
    "DATASET_",
    {"DATASET_UNSPECIFIED", "DATASET_IDX", "DATASET_CIFAR10", "DATASET_CIFAR100",
     "DATASET_IMAGE_FOLDER", "DATASET_COCO", "DATASET_SYNTHETIC"}};
const EnumType kQuantMethod{
    "QuantMethod",
    "METHOD_",
    {"METHOD_UNSPECIFIED", "METHOD_FP", "METHOD_TWN", "METHOD_TTQ", "METHOD_LAT", "METHOD_HLA",
     "METHOD_HLA_NO_REGULARIZER", "METHOD_HLA_NO_RESCALE"}};
const EnumType kGranularity{
    "Granularity",
    "GRANULARITY_",
    {"GRANULARITY_UNSPECIFIED", "GRANULARITY_TENSOR", "GRANULARITY_CHANNEL"}};
const EnumType kPacking{
    "Packing", "PACKING_", {"PACKING_UNSPECIFIED", "PACKING_2BIT", "PACKING_BASE3"}};
const EnumType kOptimizer{
    "Optimizer", "OPTIMIZER_", {"OPTIMIZER_UNSPECIFIED", "OPTIMIZER_SGD", "OPTIMIZER_ADAMW"}};
const EnumType kLrSchedule{
    "LrSchedule", "SCHEDULE_", {"SCHEDULE_UNSPECIFIED", "SCHEDULE_COSINE", "SCHEDULE_STEP"}};
const EnumType kDeviceKind{
    "DeviceKind", "DEVICE_", {"DEVICE_UNSPECIFIED", "DEVICE_CPU", "DEVICE_CUDA"}};

Field Make(std::string path, Type type) {
  Field f;
  f.path = std::move(path);
  f.type = type;
  return f;
}

// A number in [lo, hi] (an end open where asked), `presence` as in job.proto.
Field Number(std::string path, Type type, bool presence, double lo, double hi, bool lo_open = false,
             bool hi_open = false) {
  Field f = Make(std::move(path), type);
  f.presence = presence;
  f.bounds = Bounds{lo, hi, lo_open, hi_open, "", ""};
  return f;
}

Field WithDefault(Field f, double value) {
  f.default_number = value;
  return f;
}

Field Enum(std::string path, const EnumType& type) {
  Field f = Make(std::move(path), Type::kEnum);
  f.enum_type = &type;
  return f;
}

Field Flag(std::string path) {
  Field f = Make(std::move(path), Type::kBool);
  f.presence = true;
  return f;
}

std::vector<Field> BuildTable() {
  constexpr Type kI = Type::kInt32;
  constexpr Type kD = Type::kDouble;
  std::vector<Field> t;
  t.push_back(Make("name", Type::kString));
  t.push_back(Make("owner", Type::kString));
  t.push_back(Make("labels", Type::kStringMap));
  t.push_back(WithDefault(Number("priority", kI, false, -1000, 1000), 0));
  t.push_back(WithDefault(Number("max_restarts", kI, true, 0, 100), 3));
  t.push_back(Enum("task", kTask));
  t.push_back(WithDefault(Number("collective_timeout_seconds", kI, true, 10, 86400), 300));

  t.push_back(Make("model", Type::kMessage));
  Field arch = Make("model.arch", Type::kString);
  arch.choices = {"resnet20", "resnet32", "resnet56", "resnet18", "resnet34", "resnet50"};
  t.push_back(arch);
  Field head = Make("model.head", Type::kString);
  head.choices = {"centernet"};
  t.push_back(head);
  t.push_back(WithDefault(Number("model.width_multiplier", kD, true, 0, 4, true), 1.0));
  t.push_back(Make("model.init_from", Type::kString));
  Field init_from_names = Make("model.init_from_names", Type::kString);
  init_from_names.choices = {"auto", "as_stored", "torchvision"};
  t.push_back(init_from_names);
  t.push_back(WithDefault(Number("model.max_detections", kI, true, 1, 1000), 100));

  t.push_back(Make("dataset", Type::kMessage));
  t.push_back(Enum("dataset.kind", kDatasetKind));
  t.push_back(Make("dataset.path", Type::kString));
  t.push_back(WithDefault(Number("dataset.val_fraction", kD, false, 0, 0.5), 0));
  t.push_back(Make("dataset.train_annotations", Type::kString));
  t.push_back(Make("dataset.val_annotations", Type::kString));
  t.push_back(Make("dataset.train_images", Type::kString));
  t.push_back(Make("dataset.val_images", Type::kString));
  t.push_back(Flag("dataset.augment"));
  t.push_back(WithDefault(Number("dataset.num_workers", kI, true, 0, 64), 2));
  t.push_back(Number("dataset.input_size", kI, true, 8, 2048));
  t.push_back(WithDefault(Number("dataset.max_train_examples", kI, false, 0, kInf), 0));
  t.push_back(WithDefault(Number("dataset.max_eval_examples", kI, false, 0, kInf), 0));

  t.push_back(Make("quantization", Type::kMessage));
  t.push_back(Enum("quantization.method", kQuantMethod));
  t.push_back(Enum("quantization.granularity", kGranularity));
  t.push_back(Flag("quantization.keep_first_fp"));
  t.push_back(Flag("quantization.keep_last_fp"));
  t.push_back(
      WithDefault(Number("quantization.twn_delta_factor", kD, true, 0, 2, true, true), 0.7));
  t.push_back(WithDefault(Number("quantization.lat_iterations", kI, true, 1, 20), 3));
  t.push_back(WithDefault(Number("quantization.lat_epsilon", kD, true, 0, 1, true), 1e-8));
  t.push_back(
      WithDefault(Number("quantization.second_moment_decay", kD, true, 0, 1, false, true), 0.999));
  t.push_back(WithDefault(Number("quantization.ttq_threshold", kD, true, 0, 1, true, true), 0.05));
  t.push_back(WithDefault(Number("quantization.lambda_max", kD, true, 0, 10), 1e-2));
  t.push_back(WithDefault(Number("quantization.reg_warmup_fraction", kD, true, 0, 1), 0.1));
  t.push_back(WithDefault(Number("quantization.reg_fraction", kD, true, 0, 1, false, true), 0.3));
  t.push_back(WithDefault(Number("quantization.beta", kD, true, 0, 1), 0.5));
  t.push_back(Flag("quantization.normalize"));
  t.push_back(WithDefault(Number("quantization.kappa_start", kD, true, 0, 1e4, true), 5));
  Field kappa_end = WithDefault(Number("quantization.kappa_end", kD, true, 0, 1e4), 50);
  kappa_end.bounds->lo_field = "quantization.kappa_start";
  t.push_back(kappa_end);
  t.push_back(WithDefault(Number("quantization.clip", kD, true, 0, 100, true), 2.0));
  t.push_back(Enum("quantization.packing", kPacking));
  // 0: ceil(2048 / batch_size) (worker/trainer/trainer.cc).
  t.push_back(WithDefault(Number("quantization.bn_recalibration_batches", kI, false, 0, 10000), 0));
  t.push_back(Make("quantization.recalibrate_bn_at_switch", Type::kBool));
  t.push_back(Make("quantization.recalibrate_bn_before_export", Type::kBool));

  t.push_back(Make("optimization", Type::kMessage));
  t.push_back(Enum("optimization.optimizer", kOptimizer));
  t.push_back(Number("optimization.lr", kD, true, 0, 10, true));  // default per optimizer
  t.push_back(WithDefault(Number("optimization.momentum", kD, true, 0, 1, false, true), 0.9));
  t.push_back(Flag("optimization.nesterov"));
  t.push_back(Number("optimization.weight_decay", kD, true, 0, 1));  // default per optimizer
  t.push_back(WithDefault(Number("optimization.adam_beta1", kD, true, 0, 1, false, true), 0.9));
  t.push_back(WithDefault(Number("optimization.adam_beta2", kD, true, 0, 1, false, true), 0.999));
  t.push_back(WithDefault(Number("optimization.adam_epsilon", kD, true, 0, 1, true), 1e-8));
  t.push_back(Enum("optimization.lr_schedule", kLrSchedule));
  Field warmup = WithDefault(Number("optimization.warmup_epochs", kD, false, 0, 0, false, true), 0);
  warmup.bounds->hi_field = "optimization.epochs";
  t.push_back(warmup);
  Field milestones =
      Number("optimization.step_milestones", Type::kRepeatedInt32, false, 1, 0, false, true);
  milestones.bounds->hi_field = "optimization.epochs";
  t.push_back(milestones);
  t.push_back(WithDefault(Number("optimization.step_gamma", kD, true, 0, 1, true), 0.1));
  t.push_back(WithDefault(Number("optimization.batch_size", kI, true, 1, 65536), 128));
  Field epochs = Number("optimization.epochs", kI, false, 1, 10000);
  epochs.required = true;
  t.push_back(epochs);
  t.push_back(WithDefault(Make("optimization.seed", Type::kUint32), 0));
  t.push_back(Make("optimization.deterministic", Type::kBool));
  t.push_back(Flag("optimization.bf16"));
  t.push_back(Flag("optimization.channels_last"));
  t.push_back(WithDefault(Number("optimization.micro_batches", kI, true, 1, 65536), 1));
  t.push_back(Make("optimization.cuda_graph", Type::kBool));

  t.push_back(Make("resources", Type::kMessage));
  t.push_back(WithDefault(Number("resources.ranks", kI, true, 1, 1024), 1));
  t.push_back(Enum("resources.device_kind", kDeviceKind));
  t.push_back(Number("resources.threads_per_rank", kI, true, 1, 256));  // unset: cores / ranks

  t.push_back(Make("checkpoint", Type::kMessage));
  t.push_back(WithDefault(Number("checkpoint.every_steps", kI, true, 1, 1e9), 500));
  t.push_back(Make("checkpoint.directory", Type::kString));

  t.push_back(Make("events", Type::kMessage));
  t.push_back(WithDefault(Number("events.progress_every_steps", kI, true, 1, 1e9), 50));
  return t;
}

}  // namespace

const std::vector<Field>& JobSpecFields() {
  static const std::vector<Field>* const table = new std::vector<Field>(BuildTable());
  return *table;
}

const Field* FindField(std::string_view path) {
  for (const Field& f : JobSpecFields()) {
    if (f.path == path) return &f;
  }
  return nullptr;
}

std::string EnumSuffix(const EnumType& type, const std::string& value) {
  std::string s = value.rfind(type.prefix, 0) == 0 ? value.substr(type.prefix.size()) : value;
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

}  // namespace tern::spec
