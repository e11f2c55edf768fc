#include "server/spec_validation.h"

#include <cmath>
#include <cstdint>
#include <sstream>
#include <utility>
#include <vector>

#include "common/utf8.h"

namespace tern::server {
namespace {

constexpr size_t kMaxNameLength = 128;
constexpr size_t kMaxLabels = 32;
constexpr size_t kMaxLabelKeyLength = 63;
constexpr size_t kMaxLabelValueLength = 256;
constexpr double kDefaultKappaStart = 5.0;  // job.proto: kappa_start default
constexpr int kDefaultBatchSize = 128;
constexpr int kDefaultRanks = 1;
constexpr int kDefaultMicroBatches = 1;

const char* const kArchitectures[] = {"resnet20", "resnet32", "resnet56",
                                      "resnet18", "resnet34", "resnet50"};

std::string Num(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// Collects violations; each names the field path (with the prefix).
class Checker {
 public:
  explicit Checker(std::string prefix) : prefix_(std::move(prefix)) {}

  void Fail(const std::string& path, const std::string& rule) {
    errors_.push_back(prefix_ + path + ": " + rule);
  }

  // [lo, hi] for integers.
  bool Int(const std::string& path, int64_t v, int64_t lo, int64_t hi) {
    if (v >= lo && v <= hi) return true;
    Fail(path, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                   "], got " + std::to_string(v));
    return false;
  }

  // A range of doubles; `lo_open`/`hi_open` exclude the bound. NaN and
  // infinities always fail.
  bool Real(const std::string& path, double v, double lo, bool lo_open,
            double hi, bool hi_open) {
    const bool ok = std::isfinite(v) && (lo_open ? v > lo : v >= lo) &&
                    (hi_open ? v < hi : v <= hi);
    if (ok) return true;
    Fail(path, std::string("must be in ") + (lo_open ? "(" : "[") + Num(lo) +
                   ", " + Num(hi) + (hi_open ? ")" : "]") + ", got " + Num(v));
    return false;
  }

  void Enum(const std::string& path, int v, bool (*is_valid)(int),
            const char* enum_name) {
    if (!is_valid(v)) {
      Fail(path,
           std::string("unknown ") + enum_name + " value " + std::to_string(v));
    }
  }

  Status Result() const {
    if (errors_.empty()) return OkStatus();
    std::string message;
    for (const std::string& e : errors_) {
      if (!message.empty()) message += "; ";
      message += e;
    }
    return InvalidArgumentError(std::move(message));
  }

 private:
  const std::string prefix_;
  std::vector<std::string> errors_;
};

bool IsLabelKey(const std::string& key) {
  if (key.empty() || key.size() > kMaxLabelKeyLength) return false;
  if (key[0] < 'a' || key[0] > 'z') return false;
  for (char c : key) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.' || c == '-' || c == '/';
    if (!ok) return false;
  }
  return true;
}

void CheckLabels(const v1::JobSpec& spec, Checker& c) {
  if (spec.labels_size() > static_cast<int>(kMaxLabels)) {
    c.Fail("labels", "at most " + std::to_string(kMaxLabels) +
                         " entries, got " + std::to_string(spec.labels_size()));
  }
  for (const auto& [key, value] : spec.labels()) {
    const std::string path = "labels[" + Quoted(key) + "]";
    if (!IsLabelKey(key)) {
      c.Fail(path,
             "key must be 1..63 characters of [a-z0-9_.-/] starting with a "
             "lowercase letter");
    }
    if (value.size() > kMaxLabelValueLength) {
      c.Fail(path, "value must be at most 256 characters");
    }
  }
}

void CheckModel(const v1::JobSpec& spec, Checker& c) {
  const v1::ModelSpec& m = spec.model();
  if (!m.arch().empty()) {
    bool known = false;
    for (const char* arch : kArchitectures) known = known || m.arch() == arch;
    if (!known) {
      c.Fail("model.arch",
             "must be one of resnet20, resnet32, resnet56, resnet18, "
             "resnet34, resnet50 (or empty), got " +
                 Quoted(m.arch()));
    }
  }
  if (!m.head().empty() && m.head() != "centernet") {
    c.Fail("model.head",
           "must be \"centernet\" (or empty), got " + Quoted(m.head()));
  }
  if (m.has_width_multiplier()) {
    c.Real("model.width_multiplier", m.width_multiplier(), 0, true, 4, false);
  }
  if (m.has_max_detections()) {
    c.Int("model.max_detections", m.max_detections(), 1, 1000);
  }
}

void CheckDataset(const v1::JobSpec& spec, Checker& c) {
  const v1::DatasetSpec& d = spec.dataset();
  c.Enum("dataset.kind", d.kind(), v1::DatasetKind_IsValid, "DatasetKind");
  const bool needs_path = d.kind() != v1::DATASET_UNSPECIFIED &&
                          d.kind() != v1::DATASET_IDX &&
                          d.kind() != v1::DATASET_SYNTHETIC;
  if (needs_path && v1::DatasetKind_IsValid(d.kind()) && d.path().empty()) {
    c.Fail("dataset.path", "required for " + v1::DatasetKind_Name(d.kind()));
  }
  const bool detection = spec.task() == v1::TASK_DETECTION;
  if (detection && d.kind() != v1::DATASET_COCO) {
    c.Fail("dataset.kind", "TASK_DETECTION needs DATASET_COCO");
  } else if (!detection && d.kind() == v1::DATASET_COCO) {
    c.Fail("dataset.kind", "DATASET_COCO needs task TASK_DETECTION");
  }
  c.Real("dataset.val_fraction", d.val_fraction(), 0, false, 0.5, false);
  if (d.has_num_workers()) c.Int("dataset.num_workers", d.num_workers(), 0, 64);
  if (d.has_input_size()) c.Int("dataset.input_size", d.input_size(), 8, 2048);
  if (d.max_train_examples() < 0) {
    c.Fail("dataset.max_train_examples",
           "must be >= 0, got " + std::to_string(d.max_train_examples()));
  }
  if (d.max_eval_examples() < 0) {
    c.Fail("dataset.max_eval_examples",
           "must be >= 0, got " + std::to_string(d.max_eval_examples()));
  }
}

void CheckQuantization(const v1::JobSpec& spec, Checker& c) {
  const v1::QuantizationSpec& q = spec.quantization();
  c.Enum("quantization.method", q.method(), v1::QuantMethod_IsValid,
         "QuantMethod");
  c.Enum("quantization.granularity", q.granularity(), v1::Granularity_IsValid,
         "Granularity");
  c.Enum("quantization.packing", q.packing(), v1::Packing_IsValid, "Packing");
  if (q.has_twn_delta_factor()) {
    c.Real("quantization.twn_delta_factor", q.twn_delta_factor(), 0, true, 2,
           true);
  }
  if (q.has_lat_iterations()) {
    c.Int("quantization.lat_iterations", q.lat_iterations(), 1, 20);
  }
  if (q.has_lat_epsilon()) {
    c.Real("quantization.lat_epsilon", q.lat_epsilon(), 0, true, 1, false);
  }
  if (q.has_second_moment_decay()) {
    c.Real("quantization.second_moment_decay", q.second_moment_decay(), 0,
           false, 1, true);
  }
  if (q.has_ttq_threshold()) {
    c.Real("quantization.ttq_threshold", q.ttq_threshold(), 0, true, 1, true);
  }
  if (q.has_lambda_max()) {
    c.Real("quantization.lambda_max", q.lambda_max(), 0, false, 10, false);
  }
  if (q.has_reg_warmup_fraction()) {
    c.Real("quantization.reg_warmup_fraction", q.reg_warmup_fraction(), 0,
           false, 1, false);
  }
  if (q.has_reg_fraction()) {
    c.Real("quantization.reg_fraction", q.reg_fraction(), 0, false, 1, true);
  }
  if (q.has_beta()) c.Real("quantization.beta", q.beta(), 0, false, 1, false);
  bool kappa_start_ok = true;
  if (q.has_kappa_start()) {
    kappa_start_ok = c.Real("quantization.kappa_start", q.kappa_start(), 0,
                            true, 1e4, false);
  }
  if (q.has_kappa_end() && kappa_start_ok) {
    const double start =
        q.has_kappa_start() ? q.kappa_start() : kDefaultKappaStart;
    c.Real("quantization.kappa_end", q.kappa_end(), start, false, 1e4, false);
  }
  if (q.has_clip()) c.Real("quantization.clip", q.clip(), 0, true, 100, false);
}

void CheckOptimization(const v1::JobSpec& spec, Checker& c) {
  const v1::OptimizationSpec& o = spec.optimization();
  c.Enum("optimization.optimizer", o.optimizer(), v1::Optimizer_IsValid,
         "Optimizer");
  c.Enum("optimization.lr_schedule", o.lr_schedule(), v1::LrSchedule_IsValid,
         "LrSchedule");
  if (o.has_lr()) c.Real("optimization.lr", o.lr(), 0, true, 10, false);
  if (o.has_momentum()) {
    c.Real("optimization.momentum", o.momentum(), 0, false, 1, true);
  }
  if (o.has_weight_decay()) {
    c.Real("optimization.weight_decay", o.weight_decay(), 0, false, 1, false);
  }
  if (o.has_adam_beta1()) {
    c.Real("optimization.adam_beta1", o.adam_beta1(), 0, false, 1, true);
  }
  if (o.has_adam_beta2()) {
    c.Real("optimization.adam_beta2", o.adam_beta2(), 0, false, 1, true);
  }
  if (o.has_adam_epsilon()) {
    c.Real("optimization.adam_epsilon", o.adam_epsilon(), 0, true, 1, false);
  }
  bool epochs_ok = false;
  if (o.epochs() <= 0) {
    c.Fail("optimization.epochs",
           "must be > 0 (required), got " + std::to_string(o.epochs()));
  } else {
    epochs_ok = c.Int("optimization.epochs", o.epochs(), 1, 10000);
  }
  if (epochs_ok) {
    c.Real("optimization.warmup_epochs", o.warmup_epochs(), 0, false,
           o.epochs(), true);
    int previous = 0;
    for (int i = 0; i < o.step_milestones_size(); ++i) {
      const std::string path =
          "optimization.step_milestones[" + std::to_string(i) + "]";
      const int m = o.step_milestones(i);
      if (c.Int(path, m, 1, o.epochs() - 1) && m <= previous) {
        c.Fail(path, "must be strictly increasing");
      }
      previous = m;
    }
  }
  if (o.has_step_gamma()) {
    c.Real("optimization.step_gamma", o.step_gamma(), 0, true, 1, false);
  }
  bool batch_ok = true;
  if (o.has_batch_size()) {
    batch_ok = c.Int("optimization.batch_size", o.batch_size(), 1, 65536);
  }
  if (o.has_micro_batches()) {
    batch_ok &=
        c.Int("optimization.micro_batches", o.micro_batches(), 1, 65536);
  }
  const v1::ResourceSpec& r = spec.resources();
  const bool ranks_ok = !r.has_ranks() || (r.ranks() >= 1 && r.ranks() <= 1024);
  if (batch_ok && ranks_ok) {
    const int64_t batch =
        o.has_batch_size() ? o.batch_size() : kDefaultBatchSize;
    const int64_t ranks = r.has_ranks() ? r.ranks() : kDefaultRanks;
    const int64_t micro =
        o.has_micro_batches() ? o.micro_batches() : kDefaultMicroBatches;
    if (batch % (ranks * micro) != 0) {
      c.Fail("optimization.batch_size",
             "must be a multiple of resources.ranks × "
             "optimization.micro_batches = " +
                 std::to_string(ranks * micro) + ", got " +
                 std::to_string(batch));
    }
  }
  if (o.cuda_graph()) {  // what a captured training step cannot hold
    const char* why =
        spec.resources().device_kind() != v1::DEVICE_CUDA
            ? "needs resources.device_kind DEVICE_CUDA"
        : spec.task() == v1::TASK_DETECTION
            ? "needs TASK_CLASSIFICATION (detection batches vary in size)"
        : o.has_micro_batches() && o.micro_batches() != 1
            ? "needs optimization.micro_batches 1"
        : spec.quantization().method() == v1::METHOD_TTQ
            ? "does not support METHOD_TTQ"
            : nullptr;
    if (why != nullptr) c.Fail("optimization.cuda_graph", why);
  }
}

void CheckResources(const v1::JobSpec& spec, Checker& c) {
  const v1::ResourceSpec& r = spec.resources();
  if (r.has_ranks()) c.Int("resources.ranks", r.ranks(), 1, 1024);
  c.Enum("resources.device_kind", r.device_kind(), v1::DeviceKind_IsValid,
         "DeviceKind");
  if (r.has_threads_per_rank()) {
    c.Int("resources.threads_per_rank", r.threads_per_rank(), 1, 256);
  }
}

}  // namespace

Status ValidateJobSpec(const v1::JobSpec& spec, const std::string& prefix) {
  Checker c(prefix);
  if (spec.name().size() > kMaxNameLength) {
    c.Fail("name",
           "at most 128 characters, got " + std::to_string(spec.name().size()));
  }
  CheckLabels(spec, c);
  c.Int("priority", spec.priority(), -1000, 1000);
  if (spec.has_max_restarts()) {
    c.Int("max_restarts", spec.max_restarts(), 0, 100);
  }
  c.Enum("task", spec.task(), v1::Task_IsValid, "Task");
  CheckModel(spec, c);
  CheckDataset(spec, c);
  CheckQuantization(spec, c);
  CheckOptimization(spec, c);
  CheckResources(spec, c);
  const v1::CheckpointSpec& ck = spec.checkpoint();
  if (ck.has_every_steps()) {
    c.Int("checkpoint.every_steps", ck.every_steps(), 1, 1000000000);
  }
  if (!ck.directory().empty() && ck.directory()[0] != '/') {
    c.Fail("checkpoint.directory",
           "must be an absolute path, got " + Quoted(ck.directory()));
  }
  if (spec.events().has_progress_every_steps()) {
    c.Int("events.progress_every_steps", spec.events().progress_every_steps(),
          1, 1000000000);
  }
  if (spec.has_collective_timeout_seconds()) {
    c.Int("collective_timeout_seconds", spec.collective_timeout_seconds(), 10,
          86400);
  }
  return c.Result();
}

}  // namespace tern::server
