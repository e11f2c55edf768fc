// Mapping between the scheduler's plain C++ model (scheduler/job.h,
// scheduler/dispatch.h) and the tern.v1 messages.
//
// - Job ids: scheduler JobId 42 <-> tern.v1 "42".
// - Spec: the scheduler's opaque Job::spec holds the tern.v1.JobSpec in proto
//   binary (deterministic serialization), owner filled in, everything else as
//   submitted; Job.spec shows exactly that. JobLayout resolves the server's
//   choices from it on the way out (checkpoint directory, artifact path) into
//   Job.effective_spec, Job.checkpoint_directory and the assignments, so a
//   stored spec is never rewritten.
// - Events (scheduler JobEvent -> tern.v1.JobEvent, same sequence numbers):
//   STATE_CHANGED -> state_change; CHECKPOINT -> checkpoint_committed (step,
//   plus epoch/path from the trainer's line kept as payload); PROGRESS with
//   reason RESULT -> finished; other PROGRESS events carry a trainer JSON line:
//   progress -> progress, epoch_end -> epoch_end, log -> log; the rest
//   (started, finished, failed lines kept for the server's own use) are not
//   streamed (JobEvent allows gaps).
// Pure functions, thread-safe.
#ifndef TERN_SERVER_JOB_CONVERT_H_
#define TERN_SERVER_JOB_CONVERT_H_

#include <google/protobuf/timestamp.pb.h>

#include <optional>
#include <string>

#include "common/status.h"
#include "scheduler/dispatch.h"
#include "scheduler/job.h"
#include "scheduler/scheduler.h"
#include "tern/v1/job.pb.h"
#include "tern/v1/job_service.pb.h"
#include "tern/v1/worker_service.pb.h"

namespace tern::server {

// Where the server puts what a spec leaves to it. Both roots are absolute.
struct JobLayout {
  std::string artifact_root;
  std::string checkpoint_root;

  // "job-<id>-<submit time in Unix microseconds>": unique even when a
  // deleted database lets job ids start over.
  static std::string JobDirName(const scheduler::Job& job);
  // spec.checkpoint.directory, or <checkpoint_root>/<JobDirName>.
  std::string CheckpointDir(const scheduler::Job& job,
                            const v1::JobSpec& spec) const;
  // <artifact_root>/<JobDirName>/<JobDirName>.tern: a directory per job, so
  // that a trainer confined to it (tern-agent's Landlock rules) can write its
  // artifact and detections but not another job's. (Jobs of older versions
  // keep their recorded <artifact_root>/<JobDirName>.tern.)
  std::string ArtifactPath(const scheduler::Job& job) const;
};

std::string FormatJobId(scheduler::JobId id);
// INVALID_ARGUMENT "<field>: required" when empty; NOT_FOUND when it is not
// an id this server could have issued.
StatusOr<scheduler::JobId> ParseJobId(const std::string& text,
                                      const std::string& field = "job_id");

// scheduler::kDeviceCuda <-> DEVICE_CUDA; everything else is the CPU
// (DEVICE_UNSPECIFIED included).
v1::DeviceKind ToProtoDeviceKind(const std::string& kind);
std::string FromProtoDeviceKind(v1::DeviceKind kind);

v1::JobState ToProtoState(scheduler::JobState state);
std::optional<scheduler::JobState> FromProtoState(v1::JobState state);
google::protobuf::Timestamp ToTimestamp(scheduler::TimePoint time);

// The stored spec; DATA_LOSS when the bytes do not parse.
StatusOr<v1::JobSpec> StoredSpec(const scheduler::Job& job);
std::string SerializeSpec(const v1::JobSpec& spec);  // deterministic

// Attempt (1-based) that the event with sequence `seq` belongs to: 1 plus the
// number of requeues (RESTARTING -> QUEUED) in job.history up to `seq`.
int AttemptAt(const scheduler::Job& job, int64_t seq);

// Job::metrics_json (a JobResult in proto3 JSON) as a JobResult;
// artifact_path falls back to Job::artifact_path.
v1::JobResult StoredResult(const scheduler::Job& job);

// What a tern.v1.Job shows beyond the scheduler's Job.
struct JobExtras {
  scheduler::WaitReasonInfo wait_reason;  // Scheduler::WaitReasonOf (QUEUED, RESTARTING)
  std::optional<v1::Progress> progress;               // latest sample, if any
  std::optional<v1::EpochMetrics> metrics;            // latest epoch, if any
  std::optional<scheduler::TimePoint> progress_time;  // when either came
  // The job's spec already parsed (what job.spec holds), when the caller has
  // it: spares parsing it again. nullptr: parsed from job.spec.
  const v1::JobSpec* spec = nullptr;
};

// `spec` with the defaults of spec/rules.h's table that are one number filled
// in where unset, and checkpoint.directory set to `checkpoint_directory`.
v1::JobSpec EffectiveSpec(const v1::JobSpec& spec, const std::string& checkpoint_directory);

// The tern.v1.Job: spec as stored, effective_spec and checkpoint_directory
// resolved, state and reasons (the wait reason's code and sentence as the
// scheduler gives them), last_failure, times from the history, result once
// SUCCEEDED. DATA_LOSS when the stored spec does not parse.
StatusOr<v1::Job> ToProtoJob(const scheduler::Job& job, const JobLayout& layout,
                             const JobExtras& extras);

// Job.etag: the first 16 hex digits of the SHA-256 of the stored spec's bytes
// (deterministic serialization; only UpdateJob changes them after
// submission), so the same on every ternd sharing the store and across
// restarts.
std::string JobEtag(const scheduler::Job& job);

// The job's resource name (AIP-122): "jobs/<id>".
std::string JobResourceName(scheduler::JobId id);

// A request's JobView: `requested`, or `method_default` when unspecified.
// INVALID_ARGUMENT naming `field` for a value JobView does not define.
StatusOr<v1::JobView> ResolveJobView(int requested, v1::JobView method_default,
                                     const std::string& field = "view");

// Cuts `job` down to `view` (job_service.proto, JobView): JOB_VIEW_BASIC
// clears the per-layer statistics (result.layers), the only field that grows
// with the model; JOB_VIEW_FULL leaves the job as it is.
void ApplyJobView(v1::JobView view, v1::Job* job);

// Converts one scheduler event; nullopt when it is not streamed (see above;
// log lines only with `include_logs`). `job` supplies the attempt and, for
// the RESULT event, the result.
std::optional<v1::JobEvent> ToProtoEvent(const scheduler::Job& job,
                                         const scheduler::JobEvent& event,
                                         bool include_logs);

// The Assignment an agent receives for `a`, with the spec, checkpoint
// directory and artifact path resolved from `job` (a.job_id's job).
StatusOr<v1::Assignment> ToProtoAssignment(const scheduler::Assignment& a,
                                           const scheduler::Job& job,
                                           const JobLayout& layout);

}  // namespace tern::server

#endif  // TERN_SERVER_JOB_CONVERT_H_
