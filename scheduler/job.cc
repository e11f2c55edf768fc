#include "scheduler/job.h"

#include <utility>

namespace tern::scheduler {
namespace {

constexpr JobState kAllStates[] = {
    JobState::kUnspecified, JobState::kQueued,     JobState::kAdmitted,
    JobState::kRunning,     JobState::kRestarting, JobState::kSucceeded,
    JobState::kFailed,      JobState::kCancelled,  JobState::kCancelling,
};

}  // namespace

const char* JobStateName(JobState state) {
  switch (state) {
    case JobState::kUnspecified:
      return "UNSPECIFIED";
    case JobState::kQueued:
      return "QUEUED";
    case JobState::kAdmitted:
      return "ADMITTED";
    case JobState::kRunning:
      return "RUNNING";
    case JobState::kRestarting:
      return "RESTARTING";
    case JobState::kSucceeded:
      return "SUCCEEDED";
    case JobState::kFailed:
      return "FAILED";
    case JobState::kCancelled:
      return "CANCELLED";
    case JobState::kCancelling:
      return "CANCELLING";
  }
  return "?";
}

StatusOr<JobState> ParseJobState(std::string_view name) {
  for (JobState state : kAllStates) {
    if (name == JobStateName(state)) return state;
  }
  return InvalidArgumentError("unknown job state \"" + std::string(name) +
                              "\"");
}

bool IsTerminal(JobState state) {
  return state == JobState::kSucceeded || state == JobState::kFailed ||
         state == JobState::kCancelled;
}

bool HoldsSlots(JobState state) {
  return state == JobState::kAdmitted || state == JobState::kRunning ||
         state == JobState::kCancelling;
}

Status CheckTransition(JobState from, JobState to) {
  bool legal = false;
  switch (from) {
    case JobState::kQueued:
      legal = to == JobState::kAdmitted || to == JobState::kCancelled;
      break;
    case JobState::kAdmitted:
      legal = to == JobState::kRunning || to == JobState::kRestarting ||
              to == JobState::kCancelled || to == JobState::kCancelling;
      break;
    case JobState::kRunning:
      legal = to == JobState::kSucceeded || to == JobState::kRestarting ||
              to == JobState::kCancelled || to == JobState::kCancelling;
      break;
    case JobState::kCancelling:
      legal = to == JobState::kCancelled;
      break;
    case JobState::kRestarting:
      legal = to == JobState::kQueued || to == JobState::kFailed ||
              to == JobState::kCancelled;
      break;
    case JobState::kUnspecified:
    case JobState::kSucceeded:
    case JobState::kFailed:
    case JobState::kCancelled:
      break;
  }
  if (legal) return OkStatus();
  return FailedPreconditionError(std::string("illegal job state transition ") +
                                 JobStateName(from) + " -> " +
                                 JobStateName(to));
}

bool IsKnownDeviceKind(std::string_view kind) {
  return kind == kDeviceCpu || kind == kDeviceCuda;
}

const char* JobEventTypeName(JobEventType type) {
  switch (type) {
    case JobEventType::kStateChanged:
      return "STATE_CHANGED";
    case JobEventType::kProgress:
      return "PROGRESS";
    case JobEventType::kCheckpoint:
      return "CHECKPOINT";
  }
  return "?";
}

StatusOr<JobEventType> ParseJobEventType(std::string_view name) {
  for (JobEventType type :
       {JobEventType::kStateChanged, JobEventType::kProgress,
        JobEventType::kCheckpoint}) {
    if (name == JobEventTypeName(type)) return type;
  }
  return InvalidArgumentError("unknown job event type \"" + std::string(name) +
                              "\"");
}

const char* RankStateName(RankState state) {
  switch (state) {
    case RankState::kAssigned:
      return "ASSIGNED";
    case RankState::kRunning:
      return "RUNNING";
    case RankState::kSucceeded:
      return "SUCCEEDED";
    case RankState::kFailed:
      return "FAILED";
  }
  return "?";
}

StatusOr<RankState> ParseRankState(std::string_view name) {
  for (RankState state : {RankState::kAssigned, RankState::kRunning,
                          RankState::kSucceeded, RankState::kFailed}) {
    if (name == RankStateName(state)) return state;
  }
  return InvalidArgumentError("unknown rank state \"" + std::string(name) +
                              "\"");
}

Status TransitionJob(Job* job, JobState to, std::string_view reason,
                     std::string message, TimePoint now,
                     std::vector<JobEvent>* events) {
  TERN_RETURN_IF_ERROR(CheckTransition(job->state, to)
                           .WithContext("job " + std::to_string(job->id)));
  JobEvent event;
  event.time = now;
  event.type = JobEventType::kStateChanged;
  event.from = job->state;
  event.to = to;
  event.reason = std::string(reason);
  event.message = std::move(message);
  job->state = to;
  job->history.push_back(AppendJobEvent(job, std::move(event), events));
  return OkStatus();
}

JobEvent& AppendJobEvent(Job* job, JobEvent event,
                         std::vector<JobEvent>* events) {
  event.seq = ++job->last_event_seq;
  events->push_back(std::move(event));
  return events->back();
}

}  // namespace tern::scheduler
