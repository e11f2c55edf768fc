#include "trainer_protocol/trainer_events.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "common/utf8.h"

namespace tern::trainer {
namespace {

using nlohmann::json;

// Field accessors that never throw: a missing or mistyped field is absent.
const json* Field(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

bool Has(const json& obj, const char* key) {
  const json* f = Field(obj, key);
  return f != nullptr && f->is_number();
}

double Double(const json& obj, const char* key, double fallback = 0) {
  const json* f = Field(obj, key);
  if (f == nullptr) return fallback;
  if (f->is_number()) return f->get<double>();
  return fallback;
}

int64_t Int(const json& obj, const char* key, int64_t fallback = 0) {
  const json* f = Field(obj, key);
  if (f == nullptr || !f->is_number()) return fallback;
  if (f->is_number_integer()) return f->get<int64_t>();
  const double d = f->get<double>();
  if (!std::isfinite(d) || std::fabs(d) > 9e18) return fallback;
  return static_cast<int64_t>(d);
}

int32_t Int32(const json& obj, const char* key) {
  const int64_t v = Int(obj, key);
  if (v > std::numeric_limits<int32_t>::max()) {
    return std::numeric_limits<int32_t>::max();
  }
  if (v < std::numeric_limits<int32_t>::min()) {
    return std::numeric_limits<int32_t>::min();
  }
  return static_cast<int32_t>(v);
}

// A duration or byte count: a number >= 0, else absent.
bool HasNonNegative(const json& obj, const char* key) {
  return Has(obj, key) && Double(obj, key) >= 0;
}

std::string String(const json& obj, const char* key) {
  const json* f = Field(obj, key);
  return f != nullptr && f->is_string() ? f->get<std::string>() : std::string();
}

const json& EmptyObject() {
  static const json kEmpty = json::object();
  return kEmpty;
}

const json& Object(const json& obj, const char* key) {
  const json* f = Field(obj, key);
  return f != nullptr && f->is_object() ? *f : EmptyObject();
}

// A loss the trainer wrote as null (non-finite) stays visible as NaN.
double Loss(const json& obj, const char* key) {
  const json* f = Field(obj, key);
  if (f != nullptr && f->is_null()) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  return Double(obj, key);
}

bool FillDetection(const json& m, v1::DetectionMetrics* out) {
  if (!Has(m, "ap")) return false;
  out->set_ap(Double(m, "ap"));
  if (Has(m, "ap50")) out->set_ap50(Double(m, "ap50"));
  if (Has(m, "ap75")) out->set_ap75(Double(m, "ap75"));
  if (Has(m, "ap_small")) out->set_ap_small(Double(m, "ap_small"));
  if (Has(m, "ap_medium")) out->set_ap_medium(Double(m, "ap_medium"));
  if (Has(m, "ap_large")) out->set_ap_large(Double(m, "ap_large"));
  if (Has(m, "ar1")) out->set_ar1(Double(m, "ar1"));
  if (Has(m, "ar10")) out->set_ar10(Double(m, "ar10"));
  if (Has(m, "ar100")) out->set_ar100(Double(m, "ar100"));
  if (Has(m, "ar_small")) out->set_ar_small(Double(m, "ar_small"));
  if (Has(m, "ar_medium")) out->set_ar_medium(Double(m, "ar_medium"));
  if (Has(m, "ar_large")) out->set_ar_large(Double(m, "ar_large"));
  return true;
}

void FillLayers(const json& obj,
                google::protobuf::RepeatedPtrField<v1::LayerStats>* out) {
  const json* layers = Field(obj, "layers");
  if (layers == nullptr || !layers->is_array()) return;
  for (const json& l : *layers) {
    if (!l.is_object()) continue;
    const json* quantized = Field(l, "quantized");
    if (quantized != nullptr && quantized->is_boolean() &&
        !quantized->get<bool>()) {
      continue;
    }
    v1::LayerStats* s = out->Add();
    s->set_name(String(l, "name"));
    s->set_numel(Int(l, "numel"));
    s->set_sparsity(Double(l, "sparsity"));
    s->set_alpha(Double(l, "alpha"));
    s->set_alpha_negative(Double(l, "alpha_negative"));
    s->set_delta(Double(l, "delta"));
    s->set_cos_wt(Double(l, "cos_wt"));
    const double per_step = Double(l, "flips_per_step");
    s->set_flips(s->numel() > 0 ? per_step / static_cast<double>(s->numel())
                                : 0.0);
  }
}

void ParseProgress(const json& j, const ParseOptions& options, TrainerLine* out) {
  v1::Progress& p = out->progress;
  p.set_epoch(Int32(j, "epoch"));
  p.set_epochs(Has(j, "epochs") ? Int32(j, "epochs") : options.epochs);
  p.set_step(Int32(j, "step"));
  p.set_total_steps(Int32(j, "total_steps"));
  p.set_loss(Loss(j, "loss"));
  p.set_lr(Double(j, "lr"));
  p.set_images_per_second(Double(j, "images_per_second"));
  p.set_eta_seconds(Double(j, "eta_seconds"));
  p.set_reg_lambda(Double(j, "reg_lambda"));
  p.set_phase(Int32(j, "phase"));
  // Optional: older trainers omit them, CPU runs have no GPU memory.
  if (HasNonNegative(j, "step_seconds")) {
    p.set_step_seconds(Double(j, "step_seconds"));
  }
  if (HasNonNegative(j, "allreduce_seconds")) {
    p.set_allreduce_seconds(Double(j, "allreduce_seconds"));
  }
  if (HasNonNegative(j, "data_wait_seconds")) {
    p.set_data_wait_seconds(Double(j, "data_wait_seconds"));
  }
  if (HasNonNegative(j, "gpu_memory_bytes")) {
    p.set_gpu_memory_bytes(Int(j, "gpu_memory_bytes"));
  }
  if (HasNonNegative(j, "gpu_peak_memory_bytes")) {
    p.set_gpu_peak_memory_bytes(Int(j, "gpu_peak_memory_bytes"));
  }
  out->kappa = Double(j, "kappa");
  const json& reg = Object(j, "regularizer");
  if (Has(reg, "reg_grad_share")) p.set_reg_grad_share(Double(reg, "reg_grad_share"));
  if (Has(reg, "cos_wt")) p.set_cos_wt(Double(reg, "cos_wt"));
  const json* layers = Field(reg, "layers");
  if (layers != nullptr && layers->is_array()) {
    for (const json& l : *layers) {
      if (!l.is_object()) continue;
      v1::LayerStats* s = p.add_layers();
      s->set_name(String(l, "name"));
      s->set_numel(Int(l, "numel"));
      s->set_cos_wt(Double(l, "cos_wt"));
      if (Has(l, "reg_grad_share")) s->set_reg_grad_share(Double(l, "reg_grad_share"));
    }
  }
}

void ParseEpochEnd(const json& j, const ParseOptions& options, TrainerLine* out) {
  v1::EpochMetrics* m = out->epoch_end.mutable_metrics();
  m->set_epoch(Int32(j, "epoch"));
  m->set_eval_split(String(j, "eval_split"));
  m->set_train_loss(Loss(j, "train_loss"));
  if (Has(j, "train_top1")) m->set_train_top1(Double(j, "train_top1"));
  const json& fp = Object(j, "fp");
  // METHOD_FP trains no ternary model: whatever "ternary" holds is not one.
  const json& ternary = options.full_precision ? EmptyObject() : Object(j, "ternary");
  if (Field(ternary, "loss") != nullptr) {
    m->set_eval_loss(Loss(ternary, "loss"));
  } else if (Field(fp, "loss") != nullptr) {
    m->set_eval_loss(Loss(fp, "loss"));
  }
  if (Has(fp, "top1")) m->set_fp_top1(Double(fp, "top1"));
  if (Has(fp, "top5")) m->set_fp_top5(Double(fp, "top5"));
  if (Has(ternary, "top1")) m->set_ternary_top1(Double(ternary, "top1"));
  if (Has(ternary, "top5")) m->set_ternary_top5(Double(ternary, "top5"));
  v1::DetectionMetrics det;
  if (FillDetection(fp, &det)) *m->mutable_fp_detection() = det;
  det.Clear();
  if (FillDetection(ternary, &det)) *m->mutable_ternary_detection() = det;
  m->set_epoch_seconds(Double(j, "epoch_seconds"));
  m->set_images_per_second(Double(j, "images_per_second"));
  FillLayers(j, out->epoch_end.mutable_layers());
}

void ParseFinished(const json& j, const ParseOptions& options, TrainerLine* out) {
  v1::JobResult& r = out->result;
  r.set_artifact_path(String(j, "artifact_path"));
  r.set_artifact_bytes(Int(j, "artifact_bytes"));
  r.set_bits_per_weight(Double(j, "bits_per_weight", options.full_precision ? 32.0 : 0.0));
  const json& fp = Object(j, "fp");
  // The ternary accuracy is the re-loaded artifact's when the trainer
  // measured it (job.proto: "by re-loading the exported .tern artifact").
  const json& artifact = Object(j, "artifact");
  const json& ternary = options.full_precision                         ? EmptyObject()
                        : Has(artifact, "top1") || Has(artifact, "ap") ? artifact
                                                                       : Object(j, "ternary");
  if (Has(fp, "top1")) r.set_fp_top1(Double(fp, "top1"));
  if (Has(fp, "top5")) r.set_fp_top5(Double(fp, "top5"));
  if (Has(ternary, "top1")) r.set_ternary_top1(Double(ternary, "top1"));
  if (Has(ternary, "top5")) r.set_ternary_top5(Double(ternary, "top5"));
  v1::DetectionMetrics det;
  if (FillDetection(fp, &det)) *r.mutable_fp_detection() = det;
  det.Clear();
  if (FillDetection(ternary, &det)) *r.mutable_ternary_detection() = det;
  FillLayers(j, r.mutable_layers());
  r.set_epochs(Has(j, "epochs") ? Int32(j, "epochs") : options.epochs);
  r.set_steps(Int32(j, "steps"));
  r.set_wall_seconds(Double(j, "wall_seconds"));
  r.set_images_per_second(Double(j, "images_per_second"));
  r.set_detections_path(String(j, "detections_path"));
  const json& val = Object(j, "val");
  if (Has(Object(val, "fp"), "top1")) r.set_val_fp_top1(Double(Object(val, "fp"), "top1"));
  if (!options.full_precision && Has(Object(val, "ternary"), "top1")) {
    r.set_val_ternary_top1(Double(Object(val, "ternary"), "top1"));
  }
  det.Clear();
  if (FillDetection(Object(val, "fp"), &det)) *r.mutable_val_fp_detection() = det;
  det.Clear();
  if (!options.full_precision && FillDetection(Object(val, "ternary"), &det)) {
    *r.mutable_val_ternary_detection() = det;
  }
}

void ParsePhaseSwitch(const json& j, TrainerLine* out) {
  v1::PhaseSwitch& p = out->phase_switch;
  p.set_step(Int32(j, "step"));
  p.set_epoch(Int32(j, "epoch"));
  p.set_eval_split(String(j, "eval_split"));
  if (Has(Object(j, "fp"), "top1")) p.set_fp_top1(Double(Object(j, "fp"), "top1"));
  if (Has(Object(j, "ternary"), "top1")) p.set_ternary_top1(Double(Object(j, "ternary"), "top1"));
  if (Has(Object(j, "ternary_bn"), "top1")) {
    p.set_ternary_bn_top1(Double(Object(j, "ternary_bn"), "top1"));
  }
  v1::DetectionMetrics det;
  if (FillDetection(Object(j, "fp"), &det)) *p.mutable_fp_detection() = det;
  det.Clear();
  if (FillDetection(Object(j, "ternary"), &det)) *p.mutable_ternary_detection() = det;
  det.Clear();
  if (FillDetection(Object(j, "ternary_bn"), &det)) *p.mutable_ternary_bn_detection() = det;
  p.set_bn_batches(Int32(j, "bn_batches"));
  const json* kept = Field(j, "bn_kept");
  p.set_bn_kept(kept != nullptr && kept->is_boolean() && kept->get<bool>());
  p.set_seconds(Double(j, "seconds"));
}

}  // namespace

StatusOr<TrainerLine> ParseTrainerLine(std::string_view line, const ParseOptions& options) {
  const json j = json::parse(line.begin(), line.end(), nullptr,
                             /*allow_exceptions=*/false);
  if (!j.is_object()) {
    return InvalidArgumentError("trainer event: not a JSON object");
  }
  TrainerLine out;
  out.rank = Int32(j, "rank");
  out.time = Double(j, "time");
  const std::string event = String(j, "event");
  if (event == "started") {
    out.kind = TrainerEventKind::kStarted;
    out.started.set_resumed_from_step(std::max(0, Int32(j, "resumed_from_step")));
    out.started.set_total_steps(Int32(j, "total_steps"));
    out.started.set_device(String(j, "device"));
    out.started.set_process_group(String(j, "process_group"));
    out.steps_per_epoch = Int32(j, "steps_per_epoch");
  } else if (event == "progress") {
    out.kind = TrainerEventKind::kProgress;
    ParseProgress(j, options, &out);
  } else if (event == "epoch_end") {
    out.kind = TrainerEventKind::kEpochEnd;
    ParseEpochEnd(j, options, &out);
  } else if (event == "checkpoint") {
    out.kind = TrainerEventKind::kCheckpoint;
    out.checkpoint.set_step(Int32(j, "step"));
    out.checkpoint.set_epoch(Int32(j, "epoch"));
    out.checkpoint.set_path(String(j, "path"));
    out.checkpoint_seconds = Double(j, "seconds", -1);
  } else if (event == "stopped") {
    out.kind = TrainerEventKind::kStopped;
    out.checkpoint.set_step(Int32(j, "step"));
    out.checkpoint.set_epoch(Int32(j, "epoch"));
    out.checkpoint.set_path(String(j, "checkpoint"));
  } else if (event == "phase_switch") {
    out.kind = TrainerEventKind::kPhaseSwitch;
    ParsePhaseSwitch(j, &out);
  } else if (event == "finished") {
    out.kind = TrainerEventKind::kFinished;
    ParseFinished(j, options, &out);
  } else if (event == "failed") {
    out.kind = TrainerEventKind::kFailed;
    const std::string code = String(j, "code");
    out.failure.set_code(code.empty() ? "TRAINER_FAILED" : code);
    out.failure.set_message(String(j, "reason"));
  } else if (event == "log") {
    out.kind = TrainerEventKind::kLog;
    out.log.set_rank(out.rank);
    out.log.set_text(String(j, "text"));
  }
  return out;
}

std::string LogPayload(int rank, std::string_view text) {
  const json j = {{"event", "log"}, {"rank", rank}, {"text", ToValidUtf8(text, kMaxLogLineBytes)}};
  return j.dump();
}

TrainerEventParser::TrainerEventParser(const v1::JobSpec& spec, int pid)
    : options_{spec.quantization().method() == v1::METHOD_FP, spec.optimization().epochs()},
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
  StatusOr<TrainerLine> parsed = ParseTrainerLine(line, options_);
  if (!parsed.ok()) return out;
  TrainerLine& l = *parsed;
  out.trainer_time = l.time;
  v1::TrainerEvent& e = out.event;
  switch (l.kind) {
    case TrainerEventKind::kStarted: {
      steps_per_epoch_ = l.steps_per_epoch;
      v1::TrainerStarted* s = e.mutable_started();
      s->set_pid(pid_);
      s->set_device(l.started.device().empty() ? "cpu" : l.started.device());
      s->set_resumed_from_step(l.started.resumed_from_step());
      out.kind = "started";
      break;
    }
    case TrainerEventKind::kProgress:
      *e.mutable_progress() = std::move(l.progress);
      out.kind = "progress";
      break;
    case TrainerEventKind::kEpochEnd:
      if (l.epoch_end.metrics().eval_split().empty()) {
        l.epoch_end.mutable_metrics()->set_eval_split("test");
      }
      *e.mutable_epoch_end() = std::move(l.epoch_end);
      out.kind = "epoch_end";
      break;
    case TrainerEventKind::kCheckpoint: {
      v1::CheckpointCommitted* c = e.mutable_checkpoint_committed();
      *c = std::move(l.checkpoint);
      // The epoch the step belongs to, 1-based (step counts completed steps;
      // the line's epoch counts completed epochs).
      const int64_t step = c->step();
      c->set_epoch(steps_per_epoch_ > 0 ? static_cast<int32_t>(std::clamp<int64_t>(
                                              (step + steps_per_epoch_ - 1) / steps_per_epoch_, 1,
                                              std::numeric_limits<int32_t>::max()))
                                        : std::max(1, c->epoch()));
      out.checkpoint_seconds = l.checkpoint_seconds;
      out.kind = "checkpoint";
      break;
    }
    case TrainerEventKind::kFinished:
      *e.mutable_finished() = std::move(l.result);
      out.kind = "finished";
      break;
    case TrainerEventKind::kFailed:
      *e.mutable_failed() = std::move(l.failure);
      out.kind = "failed";
      break;
    case TrainerEventKind::kPhaseSwitch:  // tern.v1.TrainerEvent has no parsed form:
    case TrainerEventKind::kStopped:
    case TrainerEventKind::kLog:  // ternd reads the json_line
    case TrainerEventKind::kUnknown:
      break;
  }
  return out;
}

}  // namespace tern::trainer
