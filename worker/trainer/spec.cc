#include "worker/trainer/spec.h"

#include <algorithm>
#include <cctype>

#include "spec/validate.h"

namespace tern::trainer {
namespace {

using json = nlohmann::json;

// `object[key]` when present (the spec is checked: types are right).
template <typename T>
void Read(const json& object, const char* key, T* out) {
  if (object.contains(key)) *out = object.at(key).get<T>();
}

// A string whose empty value means `fallback`.
void ReadString(const json& object, const char* key, std::string* out,
                const std::string& fallback) {
  *out = fallback;
  Read(object, key, out);
  if (out->empty()) *out = fallback;
}

const json& Sub(const json& root, const char* key) {
  static const json kEmpty = json::object();
  return root.contains(key) ? root.at(key) : kEmpty;
}

// The enum's suffix in lower case ("DATASET_IMAGE_FOLDER" -> "image_folder"),
// `fallback` when unset or *_UNSPECIFIED.
std::string ReadEnum(const json& object, const char* key, const std::string& path,
                     const std::string& fallback) {
  if (!object.contains(key)) return fallback;
  const std::string s =
      spec::EnumSuffix(*spec::FindField(path)->enum_type, object.at(key).get<std::string>());
  return s == "unspecified" ? fallback : s;
}

std::string EnumName(const std::string& path, std::string suffix) {
  std::transform(suffix.begin(), suffix.end(), suffix.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return spec::FindField(path)->enum_type->prefix + suffix;
}

// Sets the number at `path` in `root` unless it is an optional field's
// documented default.
template <typename T>
void PutNumber(json* root, const std::string& path, T value) {
  const spec::Field* field = spec::FindField(path);
  if (field->presence && field->default_number &&
      *field->default_number == static_cast<double>(value)) {
    return;
  }
  const size_t dot = path.find('.');
  if (dot == std::string::npos) {
    (*root)[path] = value;
  } else {
    (*root)[path.substr(0, dot)][path.substr(dot + 1)] = value;
  }
}

void ReadModel(const json& root, TrainerSpec* spec) {
  const json& m = Sub(root, "model");
  // The API's default network depends on the task.
  ReadString(m, "arch", &spec->model.arch, spec->task == "detection" ? "resnet18" : "resnet20");
  Read(m, "width_multiplier", &spec->model.width_multiplier);
  Read(m, "init_from", &spec->model.init_from);
  ReadString(m, "init_from_names", &spec->model.init_from_names, "auto");
  ReadString(m, "head", &spec->model.head, "centernet");
  Read(m, "max_detections", &spec->model.max_detections);
}

void ReadData(const json& root, TrainerSpec* spec) {
  const json& d = Sub(root, "dataset");
  DataConfig& data = spec->data;
  data.kind = ReadEnum(d, "kind", "dataset.kind", "idx");
  Read(d, "path", &data.path);
  if (data.path.empty() && data.kind == "idx") data.path = spec::kDefaultIdxPath;
  Read(d, "val_fraction", &data.val_fraction);
  Read(d, "augment", &data.augment);
  Read(d, "num_workers", &data.num_workers);
  Read(d, "input_size", &data.input_size);
  Read(d, "max_train_examples", &data.max_train_examples);
  Read(d, "max_eval_examples", &data.max_eval_examples);
  ReadString(d, "train_annotations", &data.train_annotations, spec::kDefaultTrainAnnotations);
  ReadString(d, "val_annotations", &data.val_annotations, spec::kDefaultValAnnotations);
  ReadString(d, "train_images", &data.train_images, spec::kDefaultTrainImages);
  ReadString(d, "val_images", &data.val_images, spec::kDefaultValImages);
}

Status ReadQuant(const json& root, TrainerSpec* spec) {
  const json& j = Sub(root, "quantization");
  TERN_ASSIGN_OR_RETURN(quant::Method method,
                        quant::ParseMethod(ReadEnum(j, "method", "quantization.method", "hla")));
  quant::QuantOptions& q = spec->quant;
  q = quant::MakePreset(method);
  TERN_ASSIGN_OR_RETURN(
      q.granularity,
      quant::ParseGranularity(ReadEnum(j, "granularity", "quantization.granularity", "tensor")));
  TERN_ASSIGN_OR_RETURN(
      q.packing, quant::ParsePacking(ReadEnum(j, "packing", "quantization.packing", "2bit")));
  Read(j, "keep_first_fp", &q.keep_first_fp);
  Read(j, "keep_last_fp", &q.keep_last_fp);
  Read(j, "twn_delta_factor", &q.twn_delta_factor);
  Read(j, "lat_iterations", &q.lat_iterations);
  Read(j, "lat_epsilon", &q.lat_epsilon);
  Read(j, "second_moment_decay", &q.second_moment_decay);
  Read(j, "ttq_threshold", &q.ttq_threshold);
  Read(j, "lambda_max", &q.lambda_max);
  Read(j, "reg_warmup_fraction", &q.reg_warmup_fraction);
  // job.proto: knobs a method does not use are ignored (FP phase 1 exists
  // only with the regularizer).
  if (q.use_regularizer) Read(j, "reg_fraction", &q.reg_fraction);
  Read(j, "beta", &q.beta);
  Read(j, "normalize", &q.normalize);
  Read(j, "kappa_start", &q.kappa_start);
  Read(j, "kappa_end", &q.kappa_end);
  Read(j, "clip", &q.clip);
  Read(j, "bn_recalibration_batches", &q.bn_recalibration_batches);
  Read(j, "recalibrate_bn_at_switch", &q.recalibrate_bn_at_switch);
  Read(j, "recalibrate_bn_before_export", &q.recalibrate_bn_before_export);
  return OkStatus();
}

void ReadOptim(const json& root, TrainerSpec* spec) {
  const json& j = Sub(root, "optimization");
  OptimConfig& o = spec->optim;
  o.optimizer = ReadEnum(j, "optimizer", "optimization.optimizer", "sgd");
  if (o.optimizer == "adamw") {  // AdamW's usual defaults unless given
    o.lr = 1e-3;
    o.weight_decay = 1e-2;
  }
  Read(j, "lr", &o.lr);
  Read(j, "momentum", &o.momentum);
  Read(j, "nesterov", &o.nesterov);
  Read(j, "weight_decay", &o.weight_decay);
  Read(j, "adam_beta1", &o.adam_beta1);
  Read(j, "adam_beta2", &o.adam_beta2);
  Read(j, "adam_epsilon", &o.adam_epsilon);
  o.lr_schedule = ReadEnum(j, "lr_schedule", "optimization.lr_schedule", "cosine");
  Read(j, "warmup_epochs", &o.warmup_epochs);
  Read(j, "step_milestones", &o.step_milestones);
  Read(j, "step_gamma", &o.step_gamma);
  Read(j, "batch_size", &o.batch_size);
  Read(j, "micro_batches", &o.micro_batches);
  Read(j, "epochs", &o.epochs);
  Read(j, "seed", &o.seed);
  Read(j, "deterministic", &o.deterministic);
  Read(j, "bf16", &o.bf16);
  Read(j, "channels_last", &o.channels_last);
  Read(j, "cuda_graph", &o.cuda_graph);
}

void ReadRest(const json& root, TrainerSpec* spec) {
  const json& r = Sub(root, "resources");
  Read(r, "ranks", &spec->ranks);
  spec->device = ReadEnum(r, "device_kind", "resources.device_kind", "cpu");
  Read(r, "threads_per_rank", &spec->threads_per_rank);
  Read(Sub(root, "checkpoint"), "every_steps", &spec->checkpoint_every_steps);
  Read(Sub(root, "checkpoint"), "directory", &spec->checkpoint_dir);
  Read(Sub(root, "events"), "progress_every_steps", &spec->progress_every_steps);
}

}  // namespace

json ToJobSpecJson(const TrainerSpec& s) {
  json j = json::object();
  if (!s.name.empty()) j["name"] = s.name;
  j["task"] = EnumName("task", s.task);
  PutNumber(&j, "collective_timeout_seconds", s.collective_timeout_seconds);

  j["model"] = {{"arch", s.model.arch}, {"head", s.model.head}};
  PutNumber(&j, "model.width_multiplier", s.model.width_multiplier);
  if (!s.model.init_from.empty()) j["model"]["init_from"] = s.model.init_from;
  j["model"]["init_from_names"] = s.model.init_from_names;
  PutNumber(&j, "model.max_detections", s.model.max_detections);

  const DataConfig& d = s.data;
  j["dataset"] = {
      {"kind", EnumName("dataset.kind", d.kind)}, {"augment", d.augment},
      {"train_annotations", d.train_annotations}, {"val_annotations", d.val_annotations},
      {"train_images", d.train_images},           {"val_images", d.val_images}};
  if (!d.path.empty()) j["dataset"]["path"] = d.path;
  PutNumber(&j, "dataset.val_fraction", d.val_fraction);
  PutNumber(&j, "dataset.num_workers", d.num_workers);
  if (d.input_size != 0) PutNumber(&j, "dataset.input_size", d.input_size);
  PutNumber(&j, "dataset.max_train_examples", d.max_train_examples);
  PutNumber(&j, "dataset.max_eval_examples", d.max_eval_examples);

  const quant::QuantOptions& q = s.quant;
  j["quantization"] = {
      {"method", EnumName("quantization.method", quant::MethodName(q.method))},
      {"granularity", EnumName("quantization.granularity", quant::GranularityName(q.granularity))},
      {"packing", EnumName("quantization.packing", quant::PackingName(q.packing))},
      {"keep_first_fp", q.keep_first_fp},
      {"keep_last_fp", q.keep_last_fp},
      {"normalize", q.normalize},
      {"recalibrate_bn_at_switch", q.recalibrate_bn_at_switch},
      {"recalibrate_bn_before_export", q.recalibrate_bn_before_export}};
  PutNumber(&j, "quantization.twn_delta_factor", q.twn_delta_factor);
  PutNumber(&j, "quantization.lat_iterations", q.lat_iterations);
  PutNumber(&j, "quantization.lat_epsilon", q.lat_epsilon);
  PutNumber(&j, "quantization.second_moment_decay", q.second_moment_decay);
  PutNumber(&j, "quantization.ttq_threshold", q.ttq_threshold);
  PutNumber(&j, "quantization.lambda_max", q.lambda_max);
  PutNumber(&j, "quantization.reg_warmup_fraction", q.reg_warmup_fraction);
  PutNumber(&j, "quantization.reg_fraction", q.reg_fraction);
  PutNumber(&j, "quantization.beta", q.beta);
  PutNumber(&j, "quantization.kappa_start", q.kappa_start);
  PutNumber(&j, "quantization.kappa_end", q.kappa_end);
  PutNumber(&j, "quantization.clip", q.clip);
  PutNumber(&j, "quantization.bn_recalibration_batches", q.bn_recalibration_batches);

  const OptimConfig& o = s.optim;
  j["optimization"] = {{"optimizer", EnumName("optimization.optimizer", o.optimizer)},
                       {"lr_schedule", EnumName("optimization.lr_schedule", o.lr_schedule)},
                       {"nesterov", o.nesterov},
                       {"step_milestones", o.step_milestones},
                       {"deterministic", o.deterministic},
                       {"bf16", o.bf16},
                       {"channels_last", o.channels_last},
                       {"cuda_graph", o.cuda_graph}};
  PutNumber(&j, "optimization.lr", o.lr);
  PutNumber(&j, "optimization.momentum", o.momentum);
  PutNumber(&j, "optimization.weight_decay", o.weight_decay);
  PutNumber(&j, "optimization.adam_beta1", o.adam_beta1);
  PutNumber(&j, "optimization.adam_beta2", o.adam_beta2);
  PutNumber(&j, "optimization.adam_epsilon", o.adam_epsilon);
  PutNumber(&j, "optimization.warmup_epochs", o.warmup_epochs);
  PutNumber(&j, "optimization.step_gamma", o.step_gamma);
  PutNumber(&j, "optimization.batch_size", o.batch_size);
  PutNumber(&j, "optimization.micro_batches", o.micro_batches);
  PutNumber(&j, "optimization.epochs", o.epochs);
  PutNumber(&j, "optimization.seed", o.seed);

  j["resources"] = {{"device_kind", EnumName("resources.device_kind", s.device)}};
  PutNumber(&j, "resources.ranks", s.ranks);
  if (s.threads_per_rank != 0) PutNumber(&j, "resources.threads_per_rank", s.threads_per_rank);
  PutNumber(&j, "checkpoint.every_steps", s.checkpoint_every_steps);
  if (!s.checkpoint_dir.empty()) j["checkpoint"]["directory"] = s.checkpoint_dir;
  PutNumber(&j, "events.progress_every_steps", s.progress_every_steps);
  return j;
}

Status TrainerSpec::Validate() const {
  TERN_RETURN_IF_ERROR(spec::ViolationsToStatus(spec::CheckJobSpec(ToJobSpecJson(*this))));
  return quant.Validate();
}

StatusOr<TrainerSpec> ParseTrainerSpec(const std::string& json_text) {
  const json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return InvalidArgumentError("job spec: not valid JSON");
  if (!root.is_object()) return InvalidArgumentError("job spec: expected a JSON object");
  json checked;
  TERN_RETURN_IF_ERROR(spec::ViolationsToStatus(spec::CheckJobSpec(root, &checked)));
  TrainerSpec spec;
  Read(checked, "name", &spec.name);
  spec.task = ReadEnum(checked, "task", "task", "classification");
  Read(checked, "collective_timeout_seconds", &spec.collective_timeout_seconds);
  ReadModel(checked, &spec);
  ReadData(checked, &spec);
  TERN_RETURN_IF_ERROR(ReadQuant(checked, &spec));
  ReadOptim(checked, &spec);
  ReadRest(checked, &spec);
  TERN_RETURN_IF_ERROR(spec.Validate());
  return spec;
}

}  // namespace tern::trainer
