#include "server/job_convert.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <charconv>

#include "common/error_reasons.h"
#include "common/sha256.h"
#include "common/utf8.h"
#include "spec/rules.h"
#include "trainer_protocol/trainer_events.h"

namespace tern::server {
namespace {

using google::protobuf::util::TimeUtil;
using scheduler::JobEventType;
using scheduler::JobState;
using trainer::ParseTrainerLine;
using trainer::TrainerEventKind;
using trainer::TrainerLine;

constexpr size_t kMaxJobIdDigits = 18;

// A default of spec/rules.h's table that is one number, resolved once to the
// descriptors on its path ("optimization.lr": optimization, then lr) so that
// filling it in needs no lookup by name.
struct NumberDefault {
  std::vector<const google::protobuf::FieldDescriptor*> path;  // messages, then the field
  double value = 0;
};

// The table's one-number defaults whose path names an optional int32, uint32
// or double field of JobSpec (tests/spec keeps the table and the proto in
// step; a path that does not resolve is left out).
const std::vector<NumberDefault>& NumberDefaults() {
  static const std::vector<NumberDefault>* const defaults = [] {
    auto* out = new std::vector<NumberDefault>();
    for (const spec::Field& field : spec::JobSpecFields()) {
      if (!field.presence || !field.default_number) continue;
      NumberDefault d;
      d.value = *field.default_number;
      const google::protobuf::Descriptor* message = v1::JobSpec::descriptor();
      size_t start = 0;
      bool resolved = false;
      for (;;) {
        const size_t dot = field.path.find('.', start);
        const std::string name =
            field.path.substr(start, dot == std::string::npos ? dot : dot - start);
        const google::protobuf::FieldDescriptor* f = message->FindFieldByName(name);
        if (f == nullptr || f->is_repeated()) break;
        d.path.push_back(f);
        if (dot == std::string::npos) {
          const auto type = f->cpp_type();
          resolved =
              f->has_presence() && (type == google::protobuf::FieldDescriptor::CPPTYPE_INT32 ||
                                    type == google::protobuf::FieldDescriptor::CPPTYPE_UINT32 ||
                                    type == google::protobuf::FieldDescriptor::CPPTYPE_DOUBLE);
          break;
        }
        if (f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) break;
        message = f->message_type();
        start = dot + 1;
      }
      if (resolved) out->push_back(std::move(d));
    }
    return out;
  }();
  return *defaults;
}

// Sets `d`'s field of `spec` to its default when it is unset.
void FillDefault(v1::JobSpec* spec, const NumberDefault& d) {
  google::protobuf::Message* message = spec;
  const google::protobuf::Reflection* reflection = message->GetReflection();
  for (size_t i = 0; i + 1 < d.path.size(); ++i) {
    message = reflection->MutableMessage(message, d.path[i]);
    reflection = message->GetReflection();
  }
  const google::protobuf::FieldDescriptor* field = d.path.back();
  if (reflection->HasField(*message, field)) return;
  switch (field->cpp_type()) {
    case google::protobuf::FieldDescriptor::CPPTYPE_INT32:
      reflection->SetInt32(message, field, static_cast<int32_t>(d.value));
      break;
    case google::protobuf::FieldDescriptor::CPPTYPE_UINT32:
      reflection->SetUInt32(message, field, static_cast<uint32_t>(d.value));
      break;
    default:
      reflection->SetDouble(message, field, d.value);
      break;
  }
}

v1::StateReason Reason(const std::string& code, const std::string& message) {
  v1::StateReason reason;
  reason.set_code(code);
  reason.set_message(message);
  return reason;
}

}  // namespace

std::string JobLayout::JobDirName(const scheduler::Job& job) {
  return "job-" + std::to_string(job.id) + "-" +
         std::to_string(scheduler::ToUnixMicros(job.submit_time));
}

std::string JobLayout::CheckpointDir(const scheduler::Job& job,
                                     const v1::JobSpec& spec) const {
  if (!spec.checkpoint().directory().empty()) {
    return spec.checkpoint().directory();
  }
  return checkpoint_root + "/" + JobDirName(job);
}

std::string JobLayout::ArtifactPath(const scheduler::Job& job) const {
  const std::string name = JobDirName(job);
  return artifact_root + "/" + name + "/" + name + ".tern";
}

std::string FormatJobId(scheduler::JobId id) { return std::to_string(id); }

StatusOr<scheduler::JobId> ParseJobId(const std::string& text,
                                      const std::string& field) {
  if (text.empty()) {
    return InvalidArgumentError(field + ": required")
        .WithReason(error_reason::kRequestInvalid)
        .WithFieldViolation(field, "required");
  }
  scheduler::JobId id = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, id);
  if (ec != std::errc() || ptr != end || id <= 0 ||
      text.size() > kMaxJobIdDigits || text[0] == '+' || text[0] == '0') {
    return NotFoundError("job " + Quoted(text) + " does not exist");
  }
  return id;
}

v1::DeviceKind ToProtoDeviceKind(const std::string& kind) {
  return kind == scheduler::kDeviceCuda ? v1::DEVICE_CUDA : v1::DEVICE_CPU;
}

std::string FromProtoDeviceKind(v1::DeviceKind kind) {
  return kind == v1::DEVICE_CUDA ? scheduler::kDeviceCuda : scheduler::kDeviceCpu;
}

v1::JobState ToProtoState(JobState state) {
  switch (state) {
    case JobState::kUnspecified:
      return v1::JOB_STATE_UNSPECIFIED;
    case JobState::kQueued:
      return v1::JOB_STATE_QUEUED;
    case JobState::kAdmitted:
      return v1::JOB_STATE_ADMITTED;
    case JobState::kRunning:
      return v1::JOB_STATE_RUNNING;
    case JobState::kRestarting:
      return v1::JOB_STATE_RESTARTING;
    case JobState::kSucceeded:
      return v1::JOB_STATE_SUCCEEDED;
    case JobState::kFailed:
      return v1::JOB_STATE_FAILED;
    case JobState::kCancelled:
      return v1::JOB_STATE_CANCELLED;
    case JobState::kCancelling:
      return v1::JOB_STATE_CANCELLING;
  }
  return v1::JOB_STATE_UNSPECIFIED;
}

std::optional<JobState> FromProtoState(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_QUEUED:
      return JobState::kQueued;
    case v1::JOB_STATE_ADMITTED:
      return JobState::kAdmitted;
    case v1::JOB_STATE_RUNNING:
      return JobState::kRunning;
    case v1::JOB_STATE_RESTARTING:
      return JobState::kRestarting;
    case v1::JOB_STATE_SUCCEEDED:
      return JobState::kSucceeded;
    case v1::JOB_STATE_FAILED:
      return JobState::kFailed;
    case v1::JOB_STATE_CANCELLED:
      return JobState::kCancelled;
    case v1::JOB_STATE_CANCELLING:
      return JobState::kCancelling;
    default:
      return std::nullopt;
  }
}

google::protobuf::Timestamp ToTimestamp(scheduler::TimePoint time) {
  return TimeUtil::MicrosecondsToTimestamp(scheduler::ToUnixMicros(time));
}

StatusOr<v1::JobSpec> StoredSpec(const scheduler::Job& job) {
  v1::JobSpec spec;
  if (!spec.ParseFromString(job.spec)) {
    return DataLossError("job " + FormatJobId(job.id) +
                         ": the stored spec does not parse as tern.v1.JobSpec");
  }
  return spec;
}

std::string SerializeSpec(const v1::JobSpec& spec) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream raw(&bytes);
    google::protobuf::io::CodedOutputStream out(&raw);
    out.SetSerializationDeterministic(true);
    spec.SerializeToCodedStream(&out);
  }
  return bytes;
}

int AttemptAt(const scheduler::Job& job, int64_t seq) {
  int attempt = 1;
  for (const scheduler::JobEvent& e : job.history) {
    if (e.seq > seq) break;
    if (e.from == JobState::kRestarting && e.to == JobState::kQueued) {
      ++attempt;
    }
  }
  return attempt;
}

v1::JobResult StoredResult(const scheduler::Job& job) {
  v1::JobResult result;
  if (!job.metrics_json.empty()) {
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;
    if (!google::protobuf::util::JsonStringToMessage(job.metrics_json, &result,
                                                     options)
             .ok()) {
      result.Clear();
    }
  }
  if (result.artifact_path().empty()) {
    result.set_artifact_path(job.artifact_path);
  }
  return result;
}

v1::JobSpec EffectiveSpec(const v1::JobSpec& spec, const std::string& checkpoint_directory) {
  v1::JobSpec effective = spec;
  for (const NumberDefault& d : NumberDefaults()) FillDefault(&effective, d);
  effective.mutable_checkpoint()->set_directory(checkpoint_directory);
  return effective;
}

v1::JobFailure ToProtoFailure(const scheduler::RankFailure& f) {
  v1::JobFailure out;
  out.set_attempt(f.attempt);
  out.set_rank(f.rank);
  out.set_agent_id(f.agent_id);
  out.set_exit_code(f.exit_code);
  out.set_signal(f.signal);
  out.set_trainer_code(f.trainer_code);
  out.set_reason(f.reason);
  out.set_message(f.message);
  *out.mutable_time() = ToTimestamp(f.time);
  return out;
}

StatusOr<v1::Job> ToProtoJob(const scheduler::Job& job, const JobLayout& layout,
                             const JobExtras& extras) {
  v1::Job out;
  out.set_id(FormatJobId(job.id));
  out.set_name(JobResourceName(job.id));
  out.set_etag(JobEtag(job));
  v1::JobSpec spec;
  if (extras.spec != nullptr) {
    spec = *extras.spec;
  } else {
    TERN_ASSIGN_OR_RETURN(spec, StoredSpec(job));
  }
  const std::string checkpoint_directory = layout.CheckpointDir(job, spec);
  *out.mutable_effective_spec() = EffectiveSpec(spec, checkpoint_directory);
  out.set_checkpoint_directory(checkpoint_directory);
  *out.mutable_spec() = std::move(spec);
  if (job.last_failure) *out.mutable_last_failure() = ToProtoFailure(*job.last_failure);
  out.set_state(ToProtoState(job.state));
  scheduler::TimePoint updated = job.submit_time;
  for (const scheduler::JobEvent& e : job.history) {
    updated = std::max(updated, e.time);
    if (e.to == JobState::kRunning && !out.has_start_time()) {
      *out.mutable_start_time() = ToTimestamp(e.time);
    }
    if (e.to == job.state) {
      *out.mutable_state_reason() = Reason(e.reason, e.message);
    }
    if (scheduler::IsTerminal(e.to))
      *out.mutable_end_time() = ToTimestamp(e.time);
  }
  if ((job.state == JobState::kQueued || job.state == JobState::kRestarting) &&
      !extras.wait_reason.code.empty()) {
    *out.mutable_wait_reason() = Reason(extras.wait_reason.code, extras.wait_reason.message);
  }
  if (extras.progress_time) updated = std::max(updated, *extras.progress_time);
  *out.mutable_create_time() = ToTimestamp(job.submit_time);
  *out.mutable_update_time() = ToTimestamp(updated);
  out.set_restarts(job.restarts_used);
  if (extras.progress) *out.mutable_progress() = *extras.progress;
  if (extras.metrics) *out.mutable_latest_metrics() = *extras.metrics;
  if (job.state == JobState::kSucceeded) {
    *out.mutable_result() = StoredResult(job);
  }
  return out;
}

std::string JobEtag(const scheduler::Job& job) { return Sha256Hex(job.spec).substr(0, 16); }

std::string JobResourceName(scheduler::JobId id) { return "jobs/" + FormatJobId(id); }

StatusOr<v1::JobView> ResolveJobView(int requested, v1::JobView method_default,
                                     const std::string& field) {
  if (!v1::JobView_IsValid(requested)) {
    return InvalidArgumentError(field + ": unknown JobView value " + std::to_string(requested));
  }
  if (requested == v1::JOB_VIEW_UNSPECIFIED) return method_default;
  return static_cast<v1::JobView>(requested);
}

void ApplyJobView(v1::JobView view, v1::Job* job) {
  if (view == v1::JOB_VIEW_FULL) return;
  if (job->has_result()) job->mutable_result()->clear_layers();
}

std::optional<v1::JobEvent> ToProtoEvent(const scheduler::Job& job,
                                         const scheduler::JobEvent& event,
                                         bool include_logs) {
  v1::JobEvent out;
  out.set_sequence(static_cast<uint64_t>(event.seq));
  out.set_job_id(FormatJobId(job.id));
  *out.mutable_time() = ToTimestamp(event.time);
  out.set_attempt(AttemptAt(job, event.seq));
  switch (event.type) {
    case JobEventType::kStateChanged: {
      v1::StateChange* change = out.mutable_state_change();
      change->set_from_state(ToProtoState(event.from));
      change->set_to_state(ToProtoState(event.to));
      *change->mutable_reason() = Reason(event.reason, event.message);
      return out;
    }
    case JobEventType::kCheckpoint: {
      v1::CheckpointCommitted* ck = out.mutable_checkpoint_committed();
      if (!event.payload.empty()) {
        StatusOr<TrainerLine> line = ParseTrainerLine(event.payload);
        if (line.ok() && (line->kind == TrainerEventKind::kCheckpoint ||
                          line->kind == TrainerEventKind::kStopped)) {
          *ck = line->checkpoint;
        }
      }
      ck->set_step(static_cast<int32_t>(event.step));
      return out;
    }
    case JobEventType::kProgress:
      break;
  }
  if (event.reason == scheduler::reason::kResult) {
    *out.mutable_finished() = StoredResult(job);
    return out;
  }
  StatusOr<TrainerLine> line = ParseTrainerLine(event.payload);
  if (!line.ok()) return std::nullopt;
  switch (line->kind) {
    case TrainerEventKind::kProgress:
      *out.mutable_progress() = line->progress;
      return out;
    case TrainerEventKind::kEpochEnd:
      *out.mutable_epoch_end() = line->epoch_end;
      return out;
    case TrainerEventKind::kStarted:
      *out.mutable_attempt_started() = line->started;
      return out;
    case TrainerEventKind::kFinished:
      *out.mutable_trainer_finished() = line->result;
      return out;
    case TrainerEventKind::kPhaseSwitch:
      *out.mutable_phase_switch() = line->phase_switch;
      return out;
    case TrainerEventKind::kLog:
      if (!include_logs) return std::nullopt;
      *out.mutable_log() = line->log;
      return out;
    default:
      return std::nullopt;
  }
}

StatusOr<v1::Assignment> ToProtoAssignment(const scheduler::Assignment& a,
                                           const scheduler::Job& job,
                                           const JobLayout& layout) {
  v1::Assignment out;
  v1::RankRef* ref = out.mutable_ref();
  ref->set_job_id(FormatJobId(a.job_id));
  ref->set_attempt(a.attempt);
  ref->set_rank(a.rank);
  out.set_world_size(a.world_size);
  out.set_rendezvous_host(a.rendezvous_host);
  out.set_rendezvous_port(a.rendezvous_port);
  TERN_ASSIGN_OR_RETURN(v1::JobSpec spec, StoredSpec(job));
  const std::string checkpoint_dir = layout.CheckpointDir(job, spec);
  spec.mutable_checkpoint()->set_directory(checkpoint_dir);
  *out.mutable_spec() = std::move(spec);
  out.set_checkpoint_dir(checkpoint_dir);
  out.set_artifact_path(layout.ArtifactPath(job));
  return out;
}

}  // namespace tern::server
