#include "cli/render.h"

#include <google/protobuf/any.pb.h>
#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <sstream>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace tern::cli {
namespace {

using google::protobuf::util::TimeUtil;

std::string Fixed(double v, int digits) {
  if (!std::isfinite(v)) return "nan";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string PadRight(std::string s, size_t width) {
  if (s.size() < width) s.append(width - s.size(), ' ');
  return s;
}

// Next to a ternary number the FP one is of the latent weights the ternary
// ones are projected from, not a model of its own (with HLA it can be near
// chance): labelled "latent fp" then. Alone (method fp) it is the model's.
std::string Accuracies(std::optional<double> ternary, std::optional<double> fp) {
  std::string s;
  if (ternary) s += "ternary " + FormatPercent(ternary);
  if (fp) s += std::string(s.empty() ? "fp " : ", latent fp ") + FormatPercent(fp);
  return s.empty() ? "-" : s;
}

std::optional<double> Opt(bool has, double v) {
  return has ? std::optional<double>(v) : std::nullopt;
}

// "top-1 ternary 91.20%, latent fp 92.00%" for classification, "AP50
// ternary 45.10%, latent fp 47.00% (AP ...)" for detection, "(AP ...; AR@100
// ...)" where the trainer reported AR (at model.max_detections, 100 unless
// the spec says otherwise).
std::string Quality(std::optional<double> ternary_top1, std::optional<double> fp_top1,
                    const v1::DetectionMetrics* ternary_det, const v1::DetectionMetrics* fp_det) {
  const bool detection = (ternary_det != nullptr && ternary_det->has_ap()) ||
                         (fp_det != nullptr && fp_det->has_ap());
  if (!detection) return "top-1 " + Accuracies(ternary_top1, fp_top1);
  auto field = [](const v1::DetectionMetrics* m, bool ap50) -> std::optional<double> {
    if (m == nullptr || !m->has_ap()) return std::nullopt;
    if (!ap50) return m->ap();
    return m->has_ap50() ? std::optional<double>(m->ap50()) : std::nullopt;
  };
  auto ar = [](const v1::DetectionMetrics* m) -> std::optional<double> {
    if (m == nullptr || !m->has_ap() || !m->has_ar100()) return std::nullopt;
    return m->ar100();
  };
  std::string out = "AP50 " + Accuracies(field(ternary_det, true), field(fp_det, true)) +
                    " (AP " + Accuracies(field(ternary_det, false), field(fp_det, false));
  if (ar(ternary_det) || ar(fp_det)) out += "; AR@100 " + Accuracies(ar(ternary_det), ar(fp_det));
  return out + ")";
}

// Left-aligned columns two spaces apart; the first row is the header.
std::string AlignColumns(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += i + 1 < row.size() ? PadRight(row[i], widths[i] + 2) : row[i];
    }
    out += line + "\n";
  }
  return out;
}

}  // namespace

std::string StateName(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  const std::string prefix = "JOB_STATE_";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  // A state this ternctl does not know (a newer ternd's): shown, never fatal.
  return name.empty() ? "UNKNOWN_" + std::to_string(static_cast<int>(state)) : name;
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "-";
  const long long s = std::llround(seconds);
  char buf[32];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llds", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  } else if (s < 86400) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, (s % 3600) / 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lldd%02lldh", s / 86400, (s % 86400) / 3600);
  }
  return buf;
}

std::string FormatTime(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  const std::time_t secs = static_cast<std::time_t>(t.seconds());
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string FormatPercent(std::optional<double> fraction) {
  if (!fraction) return "-";
  return Fixed(*fraction * 100.0, 2) + "%";
}

std::string FormatResult(const v1::JobResult& r) {
  std::ostringstream s;
  s << Quality(Opt(r.has_ternary_top1(), r.ternary_top1()), Opt(r.has_fp_top1(), r.fp_top1()),
               r.has_ternary_detection() ? &r.ternary_detection() : nullptr,
               r.has_fp_detection() ? &r.fp_detection() : nullptr);
  // The validation split's figures (dataset.val_fraction), when there is one.
  if (r.has_val_ternary_top1() || r.has_val_fp_top1() || r.val_ternary_detection().has_ap() ||
      r.val_fp_detection().has_ap()) {
    s << "; validation "
      << Quality(Opt(r.has_val_ternary_top1(), r.val_ternary_top1()),
                 Opt(r.has_val_fp_top1(), r.val_fp_top1()),
                 r.has_val_ternary_detection() ? &r.val_ternary_detection() : nullptr,
                 r.has_val_fp_detection() ? &r.val_fp_detection() : nullptr);
  }
  s << ", " << Fixed(r.bits_per_weight(), 2) << " bits/weight, " << r.epochs() << " epochs, "
    << r.steps() << " steps, " << FormatDuration(r.wall_seconds());
  if (!r.artifact_path().empty()) {
    s << ", artifact " << r.artifact_path() << " (" << r.artifact_bytes() << " bytes)";
  }
  return s.str();
}

std::string FormatEvent(const v1::JobEvent& e) {
  std::ostringstream s;
  s << FormatTime(e.time()) << " #" << e.sequence();
  if (e.attempt() > 1) s << " attempt " << e.attempt();
  s << " ";
  switch (e.kind_case()) {
    case v1::JobEvent::kStateChange: {
      const v1::StateChange& c = e.state_change();
      s << "state " << StateName(c.from_state()) << " -> " << StateName(c.to_state());
      if (!c.reason().code().empty() || !c.reason().message().empty()) {
        s << " (" << c.reason().code();
        if (!c.reason().message().empty()) s << ": " << c.reason().message();
        s << ")";
      }
      break;
    }
    case v1::JobEvent::kProgress: {
      const v1::Progress& p = e.progress();
      s << "progress epoch " << p.epoch() << "/" << p.epochs() << " step " << p.step() << "/"
        << p.total_steps() << " loss " << Fixed(p.loss(), 4) << " lr " << Fixed(p.lr(), 5) << " "
        << Fixed(p.images_per_second(), 0) << " img/s ETA " << FormatDuration(p.eta_seconds());
      break;
    }
    case v1::JobEvent::kEpochEnd: {
      const v1::EpochMetrics& m = e.epoch_end().metrics();
      s << "epoch " << m.epoch() << " done: " << (m.eval_split().empty() ? "eval" : m.eval_split())
        << " "
        << Quality(Opt(m.has_ternary_top1(), m.ternary_top1()), Opt(m.has_fp_top1(), m.fp_top1()),
                   m.has_ternary_detection() ? &m.ternary_detection() : nullptr,
                   m.has_fp_detection() ? &m.fp_detection() : nullptr)
        << ", train loss " << Fixed(m.train_loss(), 4);
      if (m.has_eval_loss()) s << ", eval loss " << Fixed(m.eval_loss(), 4);
      s << " (" << FormatDuration(m.epoch_seconds()) << ")";
      break;
    }
    case v1::JobEvent::kCheckpointCommitted: {
      const v1::CheckpointCommitted& c = e.checkpoint_committed();
      s << "checkpoint step " << c.step() << " (epoch " << c.epoch() << ") " << c.path();
      break;
    }
    case v1::JobEvent::kFinished:
      s << "finished: " << FormatResult(e.finished());
      break;
    case v1::JobEvent::kTrainerFinished:
      s << "trainer finished (rank 0): " << FormatResult(e.trainer_finished());
      break;
    case v1::JobEvent::kAttemptStarted: {
      const v1::AttemptStarted& a = e.attempt_started();
      s << "started on " << (a.device().empty() ? "?" : a.device());
      if (!a.process_group().empty() && a.process_group() != "none") {
        s << " (" << a.process_group() << ")";
      }
      if (a.resumed_from_step() > 0) {
        s << ", resumed from the checkpoint at step " << a.resumed_from_step() << "/"
          << a.total_steps();
      } else {
        s << ", fresh start, " << a.total_steps() << " steps";
      }
      break;
    }
    case v1::JobEvent::kLog:
      s << "log rank " << e.log().rank() << ": " << e.log().text();
      break;
    case v1::JobEvent::kPhaseSwitch: {
      const v1::PhaseSwitch& p = e.phase_switch();
      // Detection reports AP50 where classification reports top-1.
      const bool detection = p.fp_detection().has_ap() || p.ternary_detection().has_ap();
      const auto percent = [](double v) { return Fixed(100 * v, 2) + "%"; };
      s << "switch to ternary at step " << p.step() << " (epoch " << p.epoch()
        << "): " << (p.eval_split().empty() ? "eval" : p.eval_split())
        << (detection ? " AP50 FP " : " top-1 FP ")
        << percent(detection ? p.fp_detection().ap50() : p.fp_top1()) << ", ternary "
        << percent(detection ? p.ternary_detection().ap50() : p.ternary_top1());
      if (detection ? p.ternary_bn_detection().has_ap() : p.has_ternary_bn_top1()) {
        s << ", ternary after BatchNorm re-estimation on " << p.bn_batches() << " batches "
          << percent(detection ? p.ternary_bn_detection().ap50() : p.ternary_bn_top1())
          << (p.bn_kept() ? " (kept)" : "");
      }
      break;
    }
    case v1::JobEvent::KIND_NOT_SET:
      s << "(unknown event)";
      break;
  }
  return s.str();
}

std::string FormatJobTable(const std::vector<v1::Job>& jobs) {
  const std::vector<std::string> header = {"ID", "STATE", "NAME", "OWNER", "RANKS", "PROGRESS",
                                           "TOP-1", "CREATED"};
  std::vector<std::vector<std::string>> rows = {header};
  for (const v1::Job& j : jobs) {
    std::string progress = "-";
    if (j.has_progress()) {
      progress = "epoch " + std::to_string(j.progress().epoch()) + "/" +
                 std::to_string(j.progress().epochs());
    }
    std::optional<double> top1;
    if (j.has_result() && j.result().has_ternary_top1()) {
      top1 = j.result().ternary_top1();
    } else if (j.has_result() && j.result().has_fp_top1()) {
      top1 = j.result().fp_top1();
    } else if (j.latest_metrics().has_ternary_top1()) {
      top1 = j.latest_metrics().ternary_top1();
    } else if (j.latest_metrics().has_fp_top1()) {
      top1 = j.latest_metrics().fp_top1();
    }
    const int ranks = j.spec().resources().has_ranks() ? j.spec().resources().ranks() : 1;
    const std::string device =
        j.spec().resources().device_kind() == v1::DEVICE_CUDA ? " cuda" : " cpu";
    rows.push_back({j.id(), StateName(j.state()), j.spec().name().empty() ? "-" : j.spec().name(),
                    j.spec().owner().empty() ? "-" : j.spec().owner(),
                    std::to_string(ranks) + device, progress, FormatPercent(top1),
                    FormatTime(j.create_time())});
  }
  return AlignColumns(rows);
}

std::string FormatAgentTable(const std::vector<v1::AgentInfo>& agents,
                             const google::protobuf::Timestamp& now) {
  std::vector<std::vector<std::string>> rows = {
      {"AGENT", "HOST", "STATE", "CPU USED", "CUDA USED", "LEASE"}};
  for (const v1::AgentInfo& a : agents) {
    std::string cpu = "-", cuda = "-";
    for (const v1::AgentSlotUsage& slots : a.slots()) {
      (slots.device_kind() == v1::DEVICE_CUDA ? cuda : cpu) =
          std::to_string(slots.used()) + "/" + std::to_string(slots.total());
    }
    std::string state = v1::AgentState_Name(a.state());
    const std::string prefix = "AGENT_STATE_";
    if (state.rfind(prefix, 0) == 0) state = state.substr(prefix.size());
    const double left = static_cast<double>(TimeUtil::TimestampToMilliseconds(a.lease_expire_time()) -
                                            TimeUtil::TimestampToMilliseconds(now)) / 1000;
    rows.push_back({a.agent_id(), a.host().empty() ? "-" : a.host(), state, cpu, cuda,
                    left >= 0 ? "ends in " + FormatDuration(left)
                              : "ended " + FormatDuration(-left) + " ago"});
  }
  return AlignColumns(rows);
}

std::string FormatWhoAmI(const v1::WhoAmIResponse& who) {
  std::ostringstream s;
  s << who.name() << " (" << who.proven_by() << (who.authenticated() ? "" : ", not authenticated")
    << "; " << (who.sees_every_job() ? "sees every owner's jobs" : "sees its own jobs") << ")\n";
  const v1::OwnerQuota& quota = who.quota();
  s << "quota:";
  if (quota.line().empty()) {
    s << " none;";
  } else if (quota.line() == "*") {
    s << " the default (*);";
  }
  bool first = true;
  for (const v1::SlotQuota& slots : quota.slots()) {
    s << (first ? " " : ", ") << (slots.device_kind() == v1::DEVICE_CUDA ? "cuda " : "cpu ")
      << slots.used();
    if (slots.has_limit()) s << " of " << slots.limit();
    s << (slots.used() == 1 && !slots.has_limit() ? " slot" : " slots");
    first = false;
  }
  s << (first ? " " : ", ") << quota.unfinished_jobs();
  if (quota.has_max_unfinished_jobs()) s << " of " << quota.max_unfinished_jobs();
  s << " unfinished " << (quota.unfinished_jobs() == 1 && !quota.has_max_unfinished_jobs()
                              ? "job"
                              : "jobs");
  if (quota.has_max_priority()) s << ", priority at most " << quota.max_priority();
  s << "\n";
  if (!who.server_version().empty()) s << "server: ternd " << who.server_version() << "\n";
  return s.str();
}

std::string FormatJobDetails(const v1::Job& j) {
  std::ostringstream s;
  s << "id:         " << j.id() << "\n";
  if (!j.spec().name().empty()) s << "name:       " << j.spec().name() << "\n";
  if (!j.spec().owner().empty()) s << "owner:      " << j.spec().owner() << "\n";
  s << "state:      " << StateName(j.state());
  if (!j.state_reason().code().empty()) {
    s << " (" << j.state_reason().code();
    if (!j.state_reason().message().empty()) s << ": " << j.state_reason().message();
    s << ")";
  }
  s << "\n";
  if (!j.wait_reason().code().empty() || !j.wait_reason().message().empty()) {
    s << "waiting:    " << j.wait_reason().code() << ": " << j.wait_reason().message() << "\n";
  }
  const v1::JobSpec& spec = j.spec();
  std::string method = v1::QuantMethod_Name(spec.quantization().method() == v1::METHOD_UNSPECIFIED
                                                 ? v1::METHOD_HLA
                                                 : spec.quantization().method());
  method = method.substr(method.find('_') + 1);  // METHOD_HLA -> hla
  for (char& c : method) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  s << "method:     " << method << ", model " << (spec.model().arch().empty() ? "resnet20" : spec.model().arch()) << ", "
    << spec.optimization().epochs() << " epochs, "
    << (spec.resources().has_ranks() ? spec.resources().ranks() : 1) << " "
    << (spec.resources().device_kind() == v1::DEVICE_CUDA ? "cuda" : "cpu") << " rank(s)\n";
  if (!spec.labels().empty()) {
    std::vector<std::string> labels;
    for (const auto& [k, v] : spec.labels()) labels.push_back(k + "=" + v);
    std::sort(labels.begin(), labels.end());
    s << "labels:    ";
    for (const std::string& l : labels) s << " " << l;
    s << "\n";
  }
  s << "created:    " << FormatTime(j.create_time()) << "\n";
  if (j.has_start_time()) s << "started:    " << FormatTime(j.start_time()) << "\n";
  if (j.has_end_time()) s << "ended:      " << FormatTime(j.end_time()) << "\n";
  if (j.restarts() > 0) s << "restarts:   " << j.restarts() << "\n";
  if (j.has_last_failure()) {
    const v1::JobFailure& f = j.last_failure();
    s << "failure:    attempt " << f.attempt() << ", rank " << f.rank() << " on "
      << (f.agent_id().empty() ? "-" : f.agent_id()) << ": " << f.reason();
    if (f.signal() != 0) {
      s << ", signal " << f.signal();
    } else if (f.exit_code() != 0) {
      s << ", exit code " << f.exit_code();
    }
    if (!f.trainer_code().empty()) s << ", " << f.trainer_code();
    if (!f.message().empty()) s << " (" << f.message() << ")";
    s << "\n";
  }
  if (!j.checkpoint_directory().empty()) {
    s << "checkpoints: " << j.checkpoint_directory() << "\n";
  }
  if (j.has_progress()) {
    const v1::Progress& p = j.progress();
    s << "progress:   epoch " << p.epoch() << "/" << p.epochs() << ", step " << p.step() << "/"
      << p.total_steps() << ", loss " << Fixed(p.loss(), 4) << ", ETA "
      << FormatDuration(p.eta_seconds()) << "\n";
  }
  if (j.has_latest_metrics()) {
    const v1::EpochMetrics& m = j.latest_metrics();
    s << "epoch " << m.epoch() << ":    top-1 "
      << Accuracies(Opt(m.has_ternary_top1(), m.ternary_top1()),
                    Opt(m.has_fp_top1(), m.fp_top1()))
      << "\n";
  }
  if (j.has_result()) {
    s << "result:     " << FormatResult(j.result()) << "\n";
    const v1::JobResult& r = j.result();
    const int max_dets = spec.model().has_max_detections() ? spec.model().max_detections() : 100;
    if ((r.has_ternary_detection() || r.has_fp_detection()) && max_dets != 100) {
      s << "            (model.max_detections " << max_dets
        << ": AP and AR@100 are at maxDets " << max_dets << ", not the standard COCO numbers)\n";
    }
  }
  return s.str();
}

std::string FormatProgressBar(const v1::Progress& p, std::optional<double> top1, int width) {
  const double fraction =
      p.total_steps() > 0 ? std::clamp(static_cast<double>(p.step()) / p.total_steps(), 0.0, 1.0)
                          : 0.0;
  const int filled = static_cast<int>(fraction * width);
  std::string bar(static_cast<size_t>(filled), '=');
  if (filled < width) bar += '>';
  bar.resize(static_cast<size_t>(width), ' ');
  std::ostringstream s;
  s << "epoch " << p.epoch() << "/" << p.epochs() << " [" << bar << "] "
    << static_cast<int>(fraction * 100) << "% step " << p.step() << "/" << p.total_steps()
    << " loss " << Fixed(p.loss(), 3);
  if (top1) s << " top-1 " << Fixed(*top1 * 100.0, 1) << "%";
  s << " ETA " << FormatDuration(p.eta_seconds());
  return s.str();
}

std::string FormatErrorDetails(const std::string& serialized) {
  google::rpc::Status status;
  if (serialized.empty() || !status.ParseFromString(serialized)) return "";
  std::string fields, quota, reason, retry;
  for (const google::protobuf::Any& any : status.details()) {
    google::rpc::BadRequest bad;
    google::rpc::QuotaFailure failure;
    google::rpc::ErrorInfo info;
    google::rpc::RetryInfo delay;
    if (any.Is<google::rpc::BadRequest>() && any.UnpackTo(&bad)) {
      for (const auto& v : bad.field_violations()) {
        fields += "    " + v.field() + ": " + v.description() + "\n";
      }
    } else if (any.Is<google::rpc::QuotaFailure>() && any.UnpackTo(&failure)) {
      for (const auto& v : failure.violations()) {
        quota += "    quota " + v.subject() + ": " + v.description() + "\n";
      }
    } else if (any.Is<google::rpc::ErrorInfo>() && any.UnpackTo(&info)) {
      reason = "    reason: " + info.reason() + "\n";
      if (info.metadata().count("field_violations_omitted") > 0) {
        fields += "    (" + info.metadata().at("field_violations_omitted") +
                  " more violations not listed)\n";
      }
    } else if (any.Is<google::rpc::RetryInfo>() && any.UnpackTo(&delay)) {
      const double seconds =
          static_cast<double>(delay.retry_delay().seconds()) + delay.retry_delay().nanos() / 1e9;
      char text[32];
      std::snprintf(text, sizeof text, "%gs", seconds);
      retry = std::string("    retry after: ") + text + "\n";
    }
  }
  return fields + quota + reason + retry;
}

}  // namespace tern::cli
