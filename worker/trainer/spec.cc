#include "worker/trainer/spec.h"

#include <algorithm>
#include <cctype>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "common/utf8.h"

namespace tern::trainer {
namespace {

using json = nlohmann::json;

Status FieldError(const std::string& path, const std::string& rule) {
  return InvalidArgumentError(path + ": " + rule);
}

// Reads one JSON object, field by field, remembering which keys were used so
// that unknown keys can be reported.
class ObjectReader {
 public:
  ObjectReader(const json& object, std::string path)
      : object_(object), path_(std::move(path)) {}

  static StatusOr<ObjectReader> Make(const json& parent, const std::string& key,
                                     const std::string& path) {
    static const json kEmpty = json::object();
    if (!parent.contains(key) || parent[key].is_null()) return ObjectReader(kEmpty, path);
    if (!parent[key].is_object()) return FieldError(path, "expected an object");
    return ObjectReader(parent[key], path);
  }

  const json& object() const { return object_; }
  std::string Path(const std::string& key) const {
    return path_.empty() ? key : path_ + "." + key;
  }

  Status Double(const std::string& key, double* out) {
    const json* v = Find(key);
    if (v == nullptr) return OkStatus();
    if (v->is_number()) {
      *out = v->get<double>();
      return OkStatus();
    }
    return FieldError(Path(key), "expected a number");
  }

  template <typename Int>
  Status Integer(const std::string& key, Int* out) {
    const json* v = Find(key);
    if (v == nullptr) return OkStatus();
    if (v->is_number_integer()) {
      const auto value = v->get<int64_t>();
      if (value < static_cast<int64_t>(std::numeric_limits<Int>::min()) ||
          (value > 0 && static_cast<uint64_t>(value) > static_cast<uint64_t>(std::numeric_limits<Int>::max()))) {
        return FieldError(Path(key), "out of range");
      }
      *out = static_cast<Int>(value);
      return OkStatus();
    }
    if (v->is_number_unsigned()) {
      const auto value = v->get<uint64_t>();
      if (value > static_cast<uint64_t>(std::numeric_limits<Int>::max())) {
        return FieldError(Path(key), "out of range");
      }
      *out = static_cast<Int>(value);
      return OkStatus();
    }
    if (v->is_string()) {  // proto3 JSON writes 64-bit integers as strings
      const std::string s = v->get<std::string>();
      if (s.empty() || s.size() > 20 ||
          !std::all_of(s.begin() + (s[0] == '-' ? 1 : 0), s.end(), ::isdigit)) {
        return FieldError(Path(key), "expected an integer, got " + Quoted(s));
      }
      try {
        *out = static_cast<Int>(std::stoll(s));
      } catch (const std::exception&) {
        return FieldError(Path(key), "out of range");
      }
      return OkStatus();
    }
    return FieldError(Path(key), "expected an integer");
  }

  Status Bool(const std::string& key, bool* out) {
    const json* v = Find(key);
    if (v == nullptr) return OkStatus();
    if (!v->is_boolean()) return FieldError(Path(key), "expected true or false");
    *out = v->get<bool>();
    return OkStatus();
  }

  Status String(const std::string& key, std::string* out) {
    const json* v = Find(key);
    if (v == nullptr) return OkStatus();
    if (!v->is_string()) return FieldError(Path(key), "expected a string");
    *out = v->get<std::string>();
    return OkStatus();
  }

  // Enum given by name: strips `prefix` ("METHOD_"), lower-cases, and leaves
  // `out` alone for the *_UNSPECIFIED value.
  Status Enum(const std::string& key, const std::string& prefix,
              const std::vector<std::string>& allowed, std::string* out) {
    const json* v = Find(key);
    if (v == nullptr) return OkStatus();
    if (!v->is_string()) return FieldError(Path(key), "expected an enum name");
    std::string s = v->get<std::string>();
    if (s.rfind(prefix, 0) == 0) s = s.substr(prefix.size());
    std::transform(s.begin(), s.end(), s.begin(), ::tolower);
    if (s == "unspecified") return OkStatus();
    if (std::find(allowed.begin(), allowed.end(), s) == allowed.end()) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      return FieldError(Path(key), "unknown value " + Quoted(v->get<std::string>()) +
                                       " (one of " + list + ")");
    }
    *out = s;
    return OkStatus();
  }

  Status IntList(const std::string& key, std::vector<int>* out) {
    const json* v = Find(key);
    if (v == nullptr) return OkStatus();
    if (!v->is_array()) return FieldError(Path(key), "expected a list of integers");
    out->clear();
    for (const json& e : *v) {
      if (!e.is_number_integer()) return FieldError(Path(key), "expected a list of integers");
      out->push_back(e.get<int>());
    }
    return OkStatus();
  }

  void Skip(const std::string& key) { used_.insert(key); }

  // Fails on the first key that no reader asked for.
  Status RejectUnknown() const {
    for (const auto& item : object_.items()) {
      if (!used_.count(item.key())) return FieldError(Path(item.key()), "unknown field");
    }
    return OkStatus();
  }

 private:
  const json* Find(const std::string& key) {
    used_.insert(key);
    if (!object_.contains(key) || object_[key].is_null()) return nullptr;
    return &object_[key];
  }

  const json& object_;
  std::string path_;
  std::set<std::string> used_;
};

Status ReadModel(const json& root, TrainerSpec* spec) {
  TERN_ASSIGN_OR_RETURN(ObjectReader r, ObjectReader::Make(root, "model", "model"));
  // The API's default network depends on the task.
  const std::string default_arch = spec->task == "detection" ? "resnet18" : "resnet20";
  spec->model.arch = default_arch;
  TERN_RETURN_IF_ERROR(r.String("arch", &spec->model.arch));
  if (spec->model.arch.empty()) spec->model.arch = default_arch;
  TERN_RETURN_IF_ERROR(r.Double("width_multiplier", &spec->model.width_multiplier));
  TERN_RETURN_IF_ERROR(r.String("init_from", &spec->model.init_from));
  TERN_RETURN_IF_ERROR(r.String("head", &spec->model.head));
  if (spec->model.head.empty()) spec->model.head = "centernet";
  TERN_RETURN_IF_ERROR(r.Integer("max_detections", &spec->model.max_detections));
  return r.RejectUnknown();
}

Status ReadData(const json& root, TrainerSpec* spec) {
  TERN_ASSIGN_OR_RETURN(ObjectReader r, ObjectReader::Make(root, "dataset", "dataset"));
  DataConfig& d = spec->data;
  TERN_RETURN_IF_ERROR(r.Enum("kind", "DATASET_",
                              {"idx", "cifar10", "cifar100", "image_folder", "coco", "synthetic"},
                              &d.kind));
  TERN_RETURN_IF_ERROR(r.String("path", &d.path));
  TERN_RETURN_IF_ERROR(r.Double("val_fraction", &d.val_fraction));
  TERN_RETURN_IF_ERROR(r.Bool("augment", &d.augment));
  TERN_RETURN_IF_ERROR(r.Integer("num_workers", &d.num_workers));
  TERN_RETURN_IF_ERROR(r.Integer("input_size", &d.input_size));
  TERN_RETURN_IF_ERROR(r.Integer("max_train_examples", &d.max_train_examples));
  TERN_RETURN_IF_ERROR(r.Integer("max_eval_examples", &d.max_eval_examples));
  const std::pair<const char*, std::string*> coco[] = {
      {"train_annotations", &d.train_annotations},
      {"val_annotations", &d.val_annotations},
      {"train_images", &d.train_images},
      {"val_images", &d.val_images}};
  for (const auto& [key, field] : coco) {
    const std::string fallback = *field;
    TERN_RETURN_IF_ERROR(r.String(key, field));
    if (field->empty()) *field = fallback;
  }
  return r.RejectUnknown();
}

Status ReadQuant(const json& root, TrainerSpec* spec) {
  TERN_ASSIGN_OR_RETURN(ObjectReader r,
                        ObjectReader::Make(root, "quantization", "quantization"));
  std::string method = "hla";
  TERN_RETURN_IF_ERROR(r.Enum("method", "METHOD_",
                              {"fp", "twn", "ttq", "lat", "hla", "hla_no_regularizer",
                               "hla_no_rescale"},
                              &method));
  TERN_ASSIGN_OR_RETURN(quant::Method m, quant::ParseMethod(method));
  quant::QuantOptions& q = spec->quant;
  q = quant::MakePreset(m);
  std::string granularity = "tensor";
  TERN_RETURN_IF_ERROR(r.Enum("granularity", "GRANULARITY_", {"tensor", "channel"}, &granularity));
  TERN_ASSIGN_OR_RETURN(q.granularity, quant::ParseGranularity(granularity));
  std::string packing = "2bit";
  TERN_RETURN_IF_ERROR(r.Enum("packing", "PACKING_", {"2bit", "base3"}, &packing));
  TERN_ASSIGN_OR_RETURN(q.packing, quant::ParsePacking(packing));
  TERN_RETURN_IF_ERROR(r.Bool("keep_first_fp", &q.keep_first_fp));
  TERN_RETURN_IF_ERROR(r.Bool("keep_last_fp", &q.keep_last_fp));
  TERN_RETURN_IF_ERROR(r.Double("twn_delta_factor", &q.twn_delta_factor));
  TERN_RETURN_IF_ERROR(r.Integer("lat_iterations", &q.lat_iterations));
  TERN_RETURN_IF_ERROR(r.Double("lat_epsilon", &q.lat_epsilon));
  TERN_RETURN_IF_ERROR(r.Double("second_moment_decay", &q.second_moment_decay));
  TERN_RETURN_IF_ERROR(r.Double("ttq_threshold", &q.ttq_threshold));
  TERN_RETURN_IF_ERROR(r.Double("lambda_max", &q.lambda_max));
  TERN_RETURN_IF_ERROR(r.Double("reg_warmup_fraction", &q.reg_warmup_fraction));
  TERN_RETURN_IF_ERROR(r.Double("reg_fraction", &q.reg_fraction));
  TERN_RETURN_IF_ERROR(r.Double("beta", &q.beta));
  TERN_RETURN_IF_ERROR(r.Bool("normalize", &q.normalize));
  TERN_RETURN_IF_ERROR(r.Double("kappa_start", &q.kappa_start));
  TERN_RETURN_IF_ERROR(r.Double("kappa_end", &q.kappa_end));
  TERN_RETURN_IF_ERROR(r.Double("clip", &q.clip));
  TERN_RETURN_IF_ERROR(r.RejectUnknown());
  return q.Validate();
}

Status ReadOptim(const json& root, TrainerSpec* spec) {
  TERN_ASSIGN_OR_RETURN(ObjectReader r,
                        ObjectReader::Make(root, "optimization", "optimization"));
  OptimConfig& o = spec->optim;
  TERN_RETURN_IF_ERROR(r.Enum("optimizer", "OPTIMIZER_", {"sgd", "adamw"}, &o.optimizer));
  if (o.optimizer == "adamw") {  // AdamW's usual defaults unless given
    o.lr = 1e-3;
    o.weight_decay = 1e-2;
  }
  TERN_RETURN_IF_ERROR(r.Double("lr", &o.lr));
  TERN_RETURN_IF_ERROR(r.Double("momentum", &o.momentum));
  TERN_RETURN_IF_ERROR(r.Bool("nesterov", &o.nesterov));
  TERN_RETURN_IF_ERROR(r.Double("weight_decay", &o.weight_decay));
  TERN_RETURN_IF_ERROR(r.Double("adam_beta1", &o.adam_beta1));
  TERN_RETURN_IF_ERROR(r.Double("adam_beta2", &o.adam_beta2));
  TERN_RETURN_IF_ERROR(r.Double("adam_epsilon", &o.adam_epsilon));
  TERN_RETURN_IF_ERROR(r.Enum("lr_schedule", "SCHEDULE_", {"cosine", "step"}, &o.lr_schedule));
  TERN_RETURN_IF_ERROR(r.Double("warmup_epochs", &o.warmup_epochs));
  TERN_RETURN_IF_ERROR(r.IntList("step_milestones", &o.step_milestones));
  TERN_RETURN_IF_ERROR(r.Double("step_gamma", &o.step_gamma));
  TERN_RETURN_IF_ERROR(r.Integer("batch_size", &o.batch_size));
  TERN_RETURN_IF_ERROR(r.Integer("micro_batches", &o.micro_batches));
  TERN_RETURN_IF_ERROR(r.Integer("epochs", &o.epochs));
  TERN_RETURN_IF_ERROR(r.Integer("seed", &o.seed));
  TERN_RETURN_IF_ERROR(r.Bool("deterministic", &o.deterministic));
  TERN_RETURN_IF_ERROR(r.Bool("bf16", &o.bf16));
  TERN_RETURN_IF_ERROR(r.Bool("channels_last", &o.channels_last));
  TERN_RETURN_IF_ERROR(r.Bool("cuda_graph", &o.cuda_graph));
  return r.RejectUnknown();
}

Status ReadRest(const json& root, TrainerSpec* spec) {
  {
    TERN_ASSIGN_OR_RETURN(ObjectReader r, ObjectReader::Make(root, "resources", "resources"));
    TERN_RETURN_IF_ERROR(r.Integer("ranks", &spec->ranks));
    TERN_RETURN_IF_ERROR(r.Enum("device_kind", "DEVICE_", {"cpu", "cuda"}, &spec->device));
    TERN_RETURN_IF_ERROR(r.Integer("threads_per_rank", &spec->threads_per_rank));
    TERN_RETURN_IF_ERROR(r.RejectUnknown());
  }
  {
    TERN_ASSIGN_OR_RETURN(ObjectReader r, ObjectReader::Make(root, "checkpoint", "checkpoint"));
    TERN_RETURN_IF_ERROR(r.Integer("every_steps", &spec->checkpoint_every_steps));
    TERN_RETURN_IF_ERROR(r.String("directory", &spec->checkpoint_dir));
    TERN_RETURN_IF_ERROR(r.RejectUnknown());
  }
  {
    TERN_ASSIGN_OR_RETURN(ObjectReader r, ObjectReader::Make(root, "events", "events"));
    TERN_RETURN_IF_ERROR(r.Integer("progress_every_steps", &spec->progress_every_steps));
    TERN_RETURN_IF_ERROR(r.RejectUnknown());
  }
  return OkStatus();
}

}  // namespace

Status TrainerSpec::Validate() const {
  static const std::set<std::string> kArchs = {"resnet20", "resnet32", "resnet56",
                                               "resnet18", "resnet34", "resnet50"};
  if (task != "classification" && task != "detection") {
    return FieldError("task", "unknown task " + Quoted(task) + " (classification, detection)");
  }
  const bool detection = task == "detection";
  if (!kArchs.count(model.arch)) {
    return FieldError("model.arch", "unknown architecture " + Quoted(model.arch) +
                                        " (resnet20, resnet32, resnet56, resnet18, "
                                        "resnet34, resnet50)");
  }
  if (!(model.width_multiplier > 0 && model.width_multiplier <= 8)) {
    return FieldError("model.width_multiplier", "must be in (0, 8]");
  }
  if (detection) {
    if (data.kind != "coco") return FieldError("dataset.kind", "TASK_DETECTION needs DATASET_COCO");
    if (model.head != "centernet") {
      return FieldError("model.head", "unknown detection head " + Quoted(model.head) + " (centernet)");
    }
    if (model.max_detections < 1 || model.max_detections > 1000) {
      return FieldError("model.max_detections", "must be in [1, 1000]");
    }
    if (data.input_size != 0 &&
        (data.input_size < 64 || data.input_size > 2048 || data.input_size % 32 != 0)) {
      return FieldError("dataset.input_size",
                        "detection needs a multiple of 32 in [64, 2048] (0: 512)");
    }
  } else if (data.kind == "coco") {
    return FieldError("dataset.kind", "DATASET_COCO needs TASK_DETECTION");
  }
  if (data.path.empty() && data.kind != "synthetic") {
    return FieldError("dataset.path", "must not be empty");
  }
  if (!(data.val_fraction >= 0 && data.val_fraction < 1)) {
    return FieldError("dataset.val_fraction", "must be in [0, 1)");
  }
  if (data.num_workers < 0 || data.num_workers > 64) {
    return FieldError("dataset.num_workers", "must be in [0, 64] (0: load on the training thread)");
  }
  if (data.max_train_examples < 0) return FieldError("dataset.max_train_examples", "must be >= 0");
  if (data.max_eval_examples < 0) return FieldError("dataset.max_eval_examples", "must be >= 0");
  if (optim.epochs < 1 || optim.epochs > 100000) {
    return FieldError("optimization.epochs", "must be in [1, 100000]");
  }
  if (!(optim.lr > 0 && optim.lr < 100)) return FieldError("optimization.lr", "must be in (0, 100)");
  if (!(optim.momentum >= 0 && optim.momentum < 1)) {
    return FieldError("optimization.momentum", "must be in [0, 1)");
  }
  if (!(optim.weight_decay >= 0 && optim.weight_decay < 1)) {
    return FieldError("optimization.weight_decay", "must be in [0, 1)");
  }
  if (!(optim.warmup_epochs >= 0 && optim.warmup_epochs <= optim.epochs)) {
    return FieldError("optimization.warmup_epochs", "must be in [0, epochs]");
  }
  if (!(optim.step_gamma > 0 && optim.step_gamma <= 1)) {
    return FieldError("optimization.step_gamma", "must be in (0, 1]");
  }
  if (!std::is_sorted(optim.step_milestones.begin(), optim.step_milestones.end())) {
    return FieldError("optimization.step_milestones", "must be increasing");
  }
  if (ranks < 1 || ranks > 4096) return FieldError("resources.ranks", "must be in [1, 4096]");
  if (optim.micro_batches < 1) return FieldError("optimization.micro_batches", "must be >= 1");
  if (optim.batch_size < 1 || optim.batch_size % (ranks * optim.micro_batches) != 0) {
    return FieldError("optimization.batch_size",
                      "must be a positive multiple of resources.ranks × "
                      "optimization.micro_batches (" +
                          std::to_string(ranks * optim.micro_batches) + ")");
  }
  if (optim.cuda_graph) {
    // What a captured step cannot hold (worker/trainer/step_graph.h).
    const char* why = device != "cuda"                 ? "needs resources.device_kind DEVICE_CUDA"
                      : task != "classification"       ? "needs TASK_CLASSIFICATION (detection "
                                                         "batches vary in size)"
                      : optim.micro_batches != 1       ? "needs optimization.micro_batches 1"
                      : quant.method == quant::Method::kTtq ? "does not support METHOD_TTQ"
                                                            : nullptr;
    if (why != nullptr) return FieldError("optimization.cuda_graph", why);
  }
  if (threads_per_rank < 0) return FieldError("resources.threads_per_rank", "must be >= 0");
  if (checkpoint_every_steps < 1) return FieldError("checkpoint.every_steps", "must be >= 1");
  if (progress_every_steps < 1) return FieldError("events.progress_every_steps", "must be >= 1");
  if (collective_timeout_seconds < 1) {
    return FieldError("collective_timeout_seconds", "must be >= 1");
  }
  return quant.Validate();
}

StatusOr<TrainerSpec> ParseTrainerSpec(const std::string& json_text) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return InvalidArgumentError("job spec: not valid JSON");
  if (!root.is_object()) return InvalidArgumentError("job spec: expected a JSON object");
  TrainerSpec spec;
  ObjectReader top(root, "");
  TERN_RETURN_IF_ERROR(top.String("name", &spec.name));
  TERN_RETURN_IF_ERROR(top.Enum("task", "TASK_", {"classification", "detection"}, &spec.task));
  TERN_RETURN_IF_ERROR(top.Integer("collective_timeout_seconds", &spec.collective_timeout_seconds));
  for (const char* k : {"owner", "labels", "priority", "max_restarts", "model", "dataset",
                        "quantization", "optimization", "resources", "checkpoint", "events"}) {
    top.Skip(k);
  }
  TERN_RETURN_IF_ERROR(top.RejectUnknown());
  TERN_RETURN_IF_ERROR(ReadModel(root, &spec));
  TERN_RETURN_IF_ERROR(ReadData(root, &spec));
  TERN_RETURN_IF_ERROR(ReadQuant(root, &spec));
  TERN_RETURN_IF_ERROR(ReadOptim(root, &spec));
  TERN_RETURN_IF_ERROR(ReadRest(root, &spec));
  TERN_RETURN_IF_ERROR(spec.Validate());
  return spec;
}

}  // namespace tern::trainer
