#include "worker/agent/trainer_events.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/utf8.h"

namespace tern::agent {
namespace {

using json = nlohmann::json;

// The number at `key`, or nullopt when absent, null (the trainer writes a
// non-finite value as null) or not a number.
std::optional<double> Num(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}
// The number at `key` when it is >= 0 (durations, byte counts), else nullopt.
std::optional<double> NonNegative(const json& j, const char* key) {
  auto v = Num(j, key);
  return v && *v >= 0 ? v : std::nullopt;
}
double NumOr(const json& j, const char* key, double fallback) {
  return Num(j, key).value_or(fallback);
}
int IntOr(const json& j, const char* key, int fallback) {
  auto v = Num(j, key);
  return v ? static_cast<int>(std::llround(*v)) : fallback;
}
std::string StrOr(const json& j, const char* key, const std::string& fallback = "") {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}
const json& ObjOrEmpty(const json& j, const char* key) {
  static const json kEmpty = json::object();
  auto it = j.find(key);
  return it != j.end() && it->is_object() ? *it : kEmpty;
}

// COCO AP and AR of a detection job's metrics object; false when it has none.
bool FillDetection(const json& m, v1::DetectionMetrics* out) {
  auto ap = Num(m, "ap");
  if (!ap) return false;
  out->set_ap(*ap);
  if (auto v = Num(m, "ap50")) out->set_ap50(*v);
  if (auto v = Num(m, "ap75")) out->set_ap75(*v);
  if (auto v = Num(m, "ap_small")) out->set_ap_small(*v);
  if (auto v = Num(m, "ap_medium")) out->set_ap_medium(*v);
  if (auto v = Num(m, "ap_large")) out->set_ap_large(*v);
  if (auto v = Num(m, "ar1")) out->set_ar1(*v);
  if (auto v = Num(m, "ar10")) out->set_ar10(*v);
  if (auto v = Num(m, "ar100")) out->set_ar100(*v);
  if (auto v = Num(m, "ar_small")) out->set_ar_small(*v);
  if (auto v = Num(m, "ar_medium")) out->set_ar_medium(*v);
  if (auto v = Num(m, "ar_large")) out->set_ar_large(*v);
  return true;
}

// Byte counts at or above this do not fit an int64 (and are not real).
constexpr double kMaxBytes = 9e18;

// The trainer counts epochs from 0; tern.v1 from 1.
constexpr int kTrainerEpochBase = 1;
int ApiEpoch(int trainer_epoch) { return trainer_epoch - kTrainerEpochBase + 1; }

void FillLayers(const json& j, google::protobuf::RepeatedPtrField<v1::LayerStats>* out) {
  auto it = j.find("layers");
  if (it == j.end() || !it->is_array()) return;
  for (const json& l : *it) {
    if (!l.is_object()) continue;
    auto q = l.find("quantized");
    if (q != l.end() && q->is_boolean() && !q->get<bool>()) continue;  // FP layer
    v1::LayerStats* s = out->Add();
    s->set_name(StrOr(l, "name"));
    s->set_numel(static_cast<int64_t>(NumOr(l, "numel", 0)));
    s->set_sparsity(NumOr(l, "sparsity", 0));
    s->set_alpha(NumOr(l, "alpha", 0));
    s->set_alpha_negative(NumOr(l, "alpha_negative", 0));
    s->set_delta(NumOr(l, "delta", 0));
    s->set_cos_wt(NumOr(l, "cos_wt", 0));
    // The trainer reports flips per step as a count; the API wants a share.
    const double per_step = NumOr(l, "flips_per_step", 0);
    s->set_flips(s->numel() > 0 ? std::clamp(per_step / s->numel(), 0.0, 1.0) : 0.0);
  }
}

}  // namespace

TrainerEventParser::TrainerEventParser(const v1::JobSpec& spec, int pid)
    : fp_method_(spec.quantization().method() == v1::METHOD_FP),
      epochs_(spec.optimization().epochs()),
      pid_(pid) {}

v1::TrainerEvent TrainerEventParser::LogEvent(int rank, std::string_view line,
                                              const google::protobuf::Timestamp& now) {
  v1::TrainerEvent event;
  *event.mutable_time() = now;
  event.mutable_log()->set_rank(rank);
  event.mutable_log()->set_text(ToValidUtf8(line, kMaxLogLineBytes));
  return event;
}

ParsedLine TrainerEventParser::ParseStdoutLine(std::string_view line,
                                               const google::protobuf::Timestamp& now) {
  ParsedLine out;
  out.event.set_json_line(ToValidUtf8(line));  // proto3 strings must be UTF-8
  *out.event.mutable_time() = now;
  const json j = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return out;
  out.trainer_time = NumOr(j, "time", 0);
  const std::string kind = StrOr(j, "event");
  v1::TrainerEvent& e = out.event;

  if (kind == "started") {
    steps_per_epoch_ = IntOr(j, "steps_per_epoch", 0);
    v1::TrainerStarted* s = e.mutable_started();
    s->set_pid(pid_);
    s->set_device(StrOr(j, "device", "cpu"));
    s->set_resumed_from_step(std::max(0, IntOr(j, "resumed_from_step", 0)));
  } else if (kind == "progress") {
    v1::Progress* p = e.mutable_progress();
    p->set_epoch(ApiEpoch(IntOr(j, "epoch", 0)));
    p->set_epochs(IntOr(j, "epochs", epochs_));
    p->set_step(IntOr(j, "step", 0));
    p->set_total_steps(IntOr(j, "total_steps", 0));
    p->set_loss(NumOr(j, "loss", std::nan("")));
    p->set_lr(NumOr(j, "lr", 0));
    p->set_images_per_second(NumOr(j, "images_per_second", 0));
    p->set_eta_seconds(NumOr(j, "eta_seconds", 0));
    p->set_reg_lambda(NumOr(j, "reg_lambda", 0));
    p->set_phase(IntOr(j, "phase", 0));
    // Optional: older trainers omit them, CPU runs have no GPU memory.
    if (auto v = NonNegative(j, "step_seconds")) p->set_step_seconds(*v);
    if (auto v = NonNegative(j, "allreduce_seconds")) p->set_allreduce_seconds(*v);
    if (auto v = NonNegative(j, "data_wait_seconds")) p->set_data_wait_seconds(*v);
    if (auto v = NonNegative(j, "gpu_memory_bytes"); v && *v < kMaxBytes) {
      p->set_gpu_memory_bytes(std::llround(*v));
    }
    if (auto v = NonNegative(j, "gpu_peak_memory_bytes"); v && *v < kMaxBytes) {
      p->set_gpu_peak_memory_bytes(std::llround(*v));
    }
  } else if (kind == "epoch_end") {
    v1::EpochMetrics* m = e.mutable_epoch_end()->mutable_metrics();
    m->set_epoch(ApiEpoch(IntOr(j, "epoch", 0)));
    m->set_eval_split(StrOr(j, "eval_split", "test"));
    m->set_train_loss(NumOr(j, "train_loss", 0));
    if (auto v = Num(j, "train_top1")) m->set_train_top1(*v);
    const json& fp = ObjOrEmpty(j, "fp");
    const json& ternary = ObjOrEmpty(j, "ternary");
    if (auto v = Num(fp, "top1")) m->set_fp_top1(*v);
    if (auto v = Num(fp, "top5")) m->set_fp_top5(*v);
    if (!fp_method_) {
      if (auto v = Num(ternary, "top1")) m->set_ternary_top1(*v);
      if (auto v = Num(ternary, "top5")) m->set_ternary_top5(*v);
    }
    FillDetection(fp, m->mutable_fp_detection());
    if (!fp_method_ && !FillDetection(ternary, m->mutable_ternary_detection())) {
      m->clear_ternary_detection();
    }
    if (!m->fp_detection().has_ap()) m->clear_fp_detection();
    // Loss of the ternary model, or of the FP model for METHOD_FP.
    if (auto v = Num(fp_method_ ? fp : ternary, "loss")) m->set_eval_loss(*v);
    m->set_epoch_seconds(NumOr(j, "epoch_seconds", 0));
    m->set_images_per_second(NumOr(j, "images_per_second", 0));
    FillLayers(j, e.mutable_epoch_end()->mutable_layers());
  } else if (kind == "checkpoint") {
    v1::CheckpointCommitted* c = e.mutable_checkpoint_committed();
    const int step = IntOr(j, "step", 0);
    c->set_step(step);
    // The epoch the step belongs to, 1-based (step counts completed steps).
    c->set_epoch(steps_per_epoch_ > 0 ? std::max(1, (step + steps_per_epoch_ - 1) / steps_per_epoch_)
                                      : std::max(1, IntOr(j, "epoch", 1)));
    c->set_path(StrOr(j, "path"));
    out.checkpoint_seconds = NumOr(j, "seconds", -1);
  } else if (kind == "finished") {
    v1::JobResult* r = e.mutable_finished();
    r->set_artifact_path(StrOr(j, "artifact_path"));
    r->set_artifact_bytes(static_cast<int64_t>(NumOr(j, "artifact_bytes", 0)));
    r->set_artifact_sha256(StrOr(j, "artifact_sha256"));
    r->set_bits_per_weight(NumOr(j, "bits_per_weight", fp_method_ ? 32.0 : 0.0));
    const json& fp = ObjOrEmpty(j, "fp");
    // Ternary accuracies come from re-loading the exported artifact.
    const json& artifact = ObjOrEmpty(j, "artifact").empty() ? ObjOrEmpty(j, "ternary")
                                                             : ObjOrEmpty(j, "artifact");
    if (auto v = Num(fp, "top1")) r->set_fp_top1(*v);
    if (auto v = Num(fp, "top5")) r->set_fp_top5(*v);
    if (!fp_method_) {
      if (auto v = Num(artifact, "top1")) r->set_ternary_top1(*v);
      if (auto v = Num(artifact, "top5")) r->set_ternary_top5(*v);
    }
    FillDetection(fp, r->mutable_fp_detection());
    if (!fp_method_ && !FillDetection(artifact, r->mutable_ternary_detection())) {
      r->clear_ternary_detection();
    }
    if (!r->fp_detection().has_ap()) r->clear_fp_detection();
    FillLayers(j, r->mutable_layers());
    r->set_epochs(IntOr(j, "epochs", epochs_));
    r->set_steps(IntOr(j, "steps", 0));
    r->set_wall_seconds(NumOr(j, "wall_seconds", 0));
    r->set_images_per_second(NumOr(j, "images_per_second", 0));
    r->set_detections_path(StrOr(j, "detections_path"));
  } else if (kind == "failed") {
    e.mutable_failed()->set_code(StrOr(j, "code", "TRAINER_FAILED"));
    e.mutable_failed()->set_message(StrOr(j, "reason"));
  } else {
    return out;  // unknown kind: json_line only
  }
  out.kind = kind;
  return out;
}

}  // namespace tern::agent
