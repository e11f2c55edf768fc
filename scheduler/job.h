// The job model and its state machine.
//
//   QUEUED ──▶ ADMITTED ──▶ RUNNING ──▶ SUCCEEDED
//     ▲           │            │
//     │           ▼            │
//     └────── RESTARTING ◀─────┘
//                 │
//                 ▼
//               FAILED     (restart budget exhausted, or not retryable)
//   ADMITTED | RUNNING ──▶ CANCELLING ──▶ CANCELLED   (cancelled with running ranks:
//                                                      slots held until they exit)
//   QUEUED | ADMITTED | RUNNING | RESTARTING ──▶ CANCELLED   (no rank running)
//
// Every change of state goes through CheckTransition(); an illegal one is a
// FAILED_PRECONDITION, never applied. Each change is a JobEvent carrying a
// machine-readable reason (reason::k*) and the per-job sequence number that
// WatchJob clients resume from. Plain values: no locking, copy freely.
#ifndef TERN_SCHEDULER_JOB_H_
#define TERN_SCHEDULER_JOB_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "scheduler/clock.h"
#include "scheduler/reason_codes.h"  // reason::k*

namespace tern::scheduler {

using JobId = int64_t;  // 1, 2, 3, ... in submission order; never reused

enum class JobState {
  kUnspecified,  // only as `from` of the first event (SUBMITTED)
  kQueued,
  kAdmitted,    // slots held, assignments sent, not every rank started yet
  kRunning,     // every rank of the current attempt has started
  kRestarting,  // an attempt was lost; waits for its backoff, then QUEUED
  kSucceeded,
  kFailed,
  kCancelled,
  // Cancelled while ranks ran: they were told to stop; the job keeps its
  // slots until each has exited (or its agent is lost), then CANCELLED.
  kCancelling,
};

const char* JobStateName(JobState state);  // "QUEUED", ...
StatusOr<JobState> ParseJobState(std::string_view name);
bool IsTerminal(JobState state);  // SUCCEEDED, FAILED, CANCELLED
bool HoldsSlots(JobState state);  // ADMITTED, RUNNING, CANCELLING
// OK when `from -> to` is an edge of the diagram above, else
// FAILED_PRECONDITION.
Status CheckTransition(JobState from, JobState to);

inline constexpr char kDeviceCpu[] = "cpu";
inline constexpr char kDeviceCuda[] = "cuda";
bool IsKnownDeviceKind(std::string_view kind);

enum class JobEventType { kStateChanged, kProgress, kCheckpoint };
const char* JobEventTypeName(JobEventType type);  // "STATE_CHANGED", ...
StatusOr<JobEventType> ParseJobEventType(std::string_view name);

struct JobEvent {
  int64_t seq = 0;  // 1, 2, 3, ... per job, no gaps
  TimePoint time;
  JobEventType type = JobEventType::kStateChanged;
  JobState from = JobState::kUnspecified;  // kStateChanged only
  JobState to = JobState::kUnspecified;    // kStateChanged only
  std::string reason;                      // reason::k*
  std::string message;  // for people, e.g. "agent gpu-3 lease expired"
  std::string payload;  // kProgress, kCheckpoint: the reporter's payload
  int64_t step = 0;     // kCheckpoint: the committed step
};

enum class RankState { kAssigned, kRunning, kSucceeded, kFailed };
const char* RankStateName(RankState state);
StatusOr<RankState> ParseRankState(std::string_view name);

struct RankPlacement {
  int rank = 0;
  std::string agent_id;
  RankState state = RankState::kAssigned;
  int exit_code = 0;  // meaningful once kSucceeded / kFailed
};

// Why a rank of an attempt failed (Job::last_failure): what tern.v1.JobFailure
// shows.
struct RankFailure {
  int attempt = 0;
  int rank = 0;
  std::string agent_id;
  int exit_code = 0;  // the process's exit status; 0 when a signal ended it
  int signal = 0;     // the signal that ended it; 0 if none
  // The trainer's error code (its `failed` event, or the agent's refusal to
  // start it), e.g. "INVALID_ARGUMENT"; "" when none was reported.
  std::string trainer_code;
  std::string reason;   // reason::k* of the transition it caused
  std::string message;  // for people
  TimePoint time;
};

struct Job {
  // Set at submission, never changed.
  JobId id = 0;
  std::string owner;
  std::map<std::string, std::string> labels;
  int priority = 0;    // higher runs first
  int world_size = 1;  // W: ranks admitted together (gang)
  std::string device_kind = kDeviceCpu;
  int max_restarts = 0;
  std::string idempotency_key;  // "" = none; unique per owner otherwise
  std::string spec;  // opaque bytes (the server's serialized JobSpec)
  TimePoint submit_time;

  // Changed by the scheduler.
  JobState state = JobState::kQueued;
  int restarts_used = 0;
  int attempt = 0;  // 0 until first admitted, +1 on every admission
  std::optional<int64_t> last_checkpoint_step;
  std::string artifact_path;  // rank 0's result, once SUCCEEDED
  std::string metrics_json;   // rank 0's final metrics, once SUCCEEDED
  int64_t last_event_seq = 0;
  // Placement of the latest attempt; kept after it ends, for the record.
  std::vector<RankPlacement> ranks;
  std::string rendezvous_host;
  int rendezvous_port = 0;
  TimePoint restart_not_before;  // RESTARTING: when it re-enters the queue
  // The latest rank failure or loss (also one that led to a restart); nullopt
  // until one happens. Ranks stopped by a cancellation are not failures.
  std::optional<RankFailure> last_failure;

  std::vector<JobEvent> history;  // the kStateChanged events, oldest first
};

// Moves `job` to `to`: checks the edge, appends the event to job->history and
// to *events with the next sequence number. On error nothing changes.
Status TransitionJob(Job* job, JobState to, std::string_view reason,
                     std::string message, TimePoint now,
                     std::vector<JobEvent>* events);

// Appends a non-state event (progress, checkpoint) with the next sequence
// number.
JobEvent& AppendJobEvent(Job* job, JobEvent event,
                         std::vector<JobEvent>* events);

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_JOB_H_
