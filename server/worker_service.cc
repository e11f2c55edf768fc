#include "server/worker_service.h"

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <optional>
#include <set>
#include <vector>

#include "common/logging.h"
#include "common/sha256.h"
#include "common/utf8.h"
#include "server/caller.h"
#include "server/path_access.h"
#include "server/rpc.h"
#include "trainer_protocol/exit_codes.h"
#include "trainer_protocol/trainer_events.h"

namespace tern::server {
namespace {

// Failure codes that a restart would meet again (job.proto: max_restarts):
// the spec, its data or its paths are at fault. FAILED_PRECONDITION and
// UNIMPLEMENTED are left out: the trainer uses them for what a node lacks
// (no visible GPU, a build without NCCL), which another node may have.
bool IsNotRetryableFailureCode(const std::string& code) {
  static const char* const kCodes[] = {"INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED",
                                       "DATA_LOSS", "OUT_OF_RANGE"};
  return std::find(std::begin(kCodes), std::end(kCodes), code) != std::end(kCodes);
}

using google::protobuf::util::TimeUtil;
using scheduler::JobState;
using trainer::LogPayload;
using trainer::ParseTrainerLine;
using trainer::TrainerEventKind;
using trainer::TrainerLine;

constexpr size_t kMaxAgentIdLength = 128;
constexpr int kMaxSlotsPerKind = 1024;
constexpr int kMaxRunningPerRegistration = 4096;
constexpr int kMaxEventsPerReport = 1000;
constexpr int64_t kResultScanBatch = 64;

bool IsAgentId(const std::string& id) {
  if (id.empty() || id.size() > kMaxAgentIdLength) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
  });
}

}  // namespace

WorkerService::WorkerService(ServerState* state)
    : state_(state), leases_(state->scheduler, state->clock.get()) {}

// --- Handlers ---------------------------------------------------------------
// Every handler first checks that the peer may act as an agent (caller.h),
// then that the request has its REQUIRED fields (rpc.h RequireFields).

grpc::Status WorkerService::Register(grpc::ServerContext* context,
                                     const v1::RegisterRequest* request,
                                     v1::RegisterResponse* response) {
  return RunRpc(state_, "Register", [&]() -> Status {
    TERN_ASSIGN_OR_RETURN(const std::string certificate_name,
                          AuthorizeAgent(*context, state_->agent_names, state_->tokens));
    TERN_RETURN_IF_ERROR(RequireFields(*request));
    if (!certificate_name.empty() && request->agent_id() != certificate_name) {
      return Status(StatusCode::kPermissionDenied,
                    "agent_id " + Quoted(request->agent_id()) +
                        " differs from the client certificate's name " + Quoted(certificate_name) +
                        " (over mutual TLS an agent registers as its certificate's name)");
    }
    return DoRegister(*request, response);
  });
}

grpc::Status WorkerService::Heartbeat(grpc::ServerContext* context,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) {
  return RunRpc(state_, "Heartbeat", [&]() -> Status {
    TERN_RETURN_IF_ERROR(AuthorizeAgent(*context, state_->agent_names, state_->tokens).status());
    TERN_RETURN_IF_ERROR(RequireFields(*request));
    return DoHeartbeat(*request, response);
  });
}

grpc::Status WorkerService::StreamAssignments(
    grpc::ServerContext* context, const v1::StreamAssignmentsRequest* request,
    grpc::ServerWriter<v1::AssignmentEvent>* writer) {
  return RunRpc(state_, "StreamAssignments", [&]() -> Status {
    TERN_RETURN_IF_ERROR(AuthorizeAgent(*context, state_->agent_names, state_->tokens).status());
    TERN_RETURN_IF_ERROR(RequireFields(*request));
    return DoStreamAssignments(context, *request, writer);
  });
}

grpc::Status WorkerService::ReportProgress(
    grpc::ServerContext* context, const v1::ReportProgressRequest* request,
    v1::ReportProgressResponse* /*response*/) {
  return RunRpc(state_, "ReportProgress", [&]() -> Status {
    TERN_RETURN_IF_ERROR(AuthorizeAgent(*context, state_->agent_names, state_->tokens).status());
    TERN_RETURN_IF_ERROR(RequireFields(*request));
    return DoReportProgress(*request);
  });
}

grpc::Status WorkerService::ReportExit(grpc::ServerContext* context,
                                       const v1::ReportExitRequest* request,
                                       v1::ReportExitResponse* /*response*/) {
  return RunRpc(state_, "ReportExit", [&]() -> Status {
    TERN_RETURN_IF_ERROR(AuthorizeAgent(*context, state_->agent_names, state_->tokens).status());
    TERN_RETURN_IF_ERROR(RequireFields(*request));
    return DoReportExit(*request);
  });
}

grpc::Status WorkerService::Drain(grpc::ServerContext* context, const v1::DrainRequest* request,
                                  v1::DrainResponse* /*response*/) {
  return RunRpc(state_, "Drain", [&]() -> Status {
    TERN_RETURN_IF_ERROR(AuthorizeAgent(*context, state_->agent_names, state_->tokens).status());
    TERN_RETURN_IF_ERROR(RequireFields(*request));
    return DoDrain(*request);
  });
}

grpc::Status WorkerService::Deregister(grpc::ServerContext* context,
                                       const v1::DeregisterRequest* request,
                                       v1::DeregisterResponse* /*response*/) {
  return RunRpc(state_, "Deregister", [&]() -> Status {
    TERN_RETURN_IF_ERROR(AuthorizeAgent(*context, state_->agent_names, state_->tokens).status());
    TERN_RETURN_IF_ERROR(RequireFields(*request));
    return DoDeregister(*request);
  });
}

int WorkerService::ExpireLeases(scheduler::TimePoint now) {
  const int expired = leases_.Expire(now);
  for (int i = 0; i < expired; ++i) state_->metrics->OnLeaseExpired();
  return expired;
}

// --- Implementations --------------------------------------------------------

Status WorkerService::DoRegister(const v1::RegisterRequest& request,
                                 v1::RegisterResponse* response) {
  if (!IsAgentId(request.agent_id())) {
    return InvalidArgumentError(
        "agent_id: must be 1..128 characters of [A-Za-z0-9_.-]");
  }
  scheduler::AgentRegistration registration;
  registration.agent_id = request.agent_id();
  registration.host = request.host();
  for (int i = 0; i < request.slots_size(); ++i) {
    const v1::Slots& slots = request.slots(i);
    const std::string path = "slots[" + std::to_string(i) + "]";
    if (!v1::DeviceKind_IsValid(slots.device_kind())) {
      return InvalidArgumentError(path + ".device_kind: unknown DeviceKind " +
                                  std::to_string(slots.device_kind()));
    }
    if (slots.count() < 1 || slots.count() > kMaxSlotsPerKind) {
      return InvalidArgumentError(path + ".count: must be in [1, 1024], got " +
                                  std::to_string(slots.count()));
    }
    const std::string kind = FromProtoDeviceKind(slots.device_kind());
    if (!registration.slots.emplace(kind, slots.count()).second) {
      return InvalidArgumentError(path + ": a second entry for device kind " +
                                  kind);
    }
  }
  if (request.running_size() > kMaxRunningPerRegistration) {
    return InvalidArgumentError("running: at most 4096 entries, got " +
                                std::to_string(request.running_size()));
  }
  for (const v1::RankRef& running : request.running()) {
    StatusOr<scheduler::RankRef> ref = ToRankRef(request.agent_id(), running);
    if (!ref.ok()) {
      // Not one of ours; the first heartbeat names it unexpected.
      TERN_LOG(WARNING) << "agent " << request.agent_id()
                        << " registered with a rank it runs that is not a "
                           "job of this server: "
                        << ref.status().message();
      continue;
    }
    registration.running.push_back(*ref);
  }
  TERN_ASSIGN_OR_RETURN(scheduler::AgentLeases::Grant grant, leases_.Register(registration));
  if (grant.replaced_expired) state_->metrics->OnLeaseExpired();
  TERN_LOG(INFO) << "agent " << request.agent_id() << " (" << request.host()
                 << ", version " << request.version() << ") registered";
  response->set_lease_id(grant.lease_id);
  *response->mutable_lease_ttl() =
      TimeUtil::MillisecondsToDuration(state_->lease_ttl.count());
  *response->mutable_heartbeat_interval() =
      TimeUtil::MillisecondsToDuration(state_->lease_ttl.count() / 3);
  return OkStatus();
}

Status WorkerService::DoHeartbeat(const v1::HeartbeatRequest& request,
                                  v1::HeartbeatResponse* response) {
  // Refs that are not a job of this server are unexpected without asking.
  std::vector<scheduler::RankRef> refs;
  for (const v1::RankRef& running : request.running()) {
    StatusOr<scheduler::RankRef> ref = ToRankRef(request.agent_id(), running);
    if (ref.ok()) refs.push_back(*std::move(ref));
  }
  TERN_ASSIGN_OR_RETURN(scheduler::AgentLeases::Renewal renewal,
                        leases_.Heartbeat(request.agent_id(), request.lease_id(), refs));
  std::set<RankKey> unexpected;
  for (const scheduler::RankRef& ref : renewal.unexpected) {
    unexpected.insert({ref.job_id, ref.attempt, ref.rank});
  }
  for (const v1::RankRef& running : request.running()) {
    StatusOr<scheduler::RankRef> ref = ToRankRef(request.agent_id(), running);
    if (!ref.ok() || unexpected.count({ref->job_id, ref->attempt, ref->rank}) != 0) {
      *response->add_unexpected() = running;
    }
  }
  *response->mutable_lease_ttl() =
      TimeUtil::MillisecondsToDuration(state_->lease_ttl.count());
  *response->mutable_heartbeat_interval() =
      TimeUtil::MillisecondsToDuration(state_->lease_ttl.count() / 3);
  *response->mutable_lease_expire_time() = ToTimestamp(renewal.expires_at);
  return OkStatus();
}

Status WorkerService::DoStreamAssignments(
    grpc::ServerContext* context, const v1::StreamAssignmentsRequest& request,
    grpc::ServerWriter<v1::AssignmentEvent>* writer) {
  const std::string& agent_id = request.agent_id();
  TERN_RETURN_IF_ERROR(leases_.Check(agent_id, request.lease_id()));
  auto write = [&](const v1::AssignmentEvent& event) -> Status {
    if (!writer->Write(event)) {
      return CancelledError("StreamAssignments: agent " + agent_id +
                            " went away");
    }
    return OkStatus();
  };
  // A rank is assigned once per stream: the initial snapshot and the
  // scheduler's outbox overlap.
  std::set<RankKey> sent;
  auto send_assignment = [&](const scheduler::Assignment& a,
                             const scheduler::Job& job) -> Status {
    if (!sent.insert({a.job_id, a.attempt, a.rank}).second) return OkStatus();
    v1::AssignmentEvent event;
    v1::Assignment* assignment = event.mutable_assignment();
    TERN_ASSIGN_OR_RETURN(*assignment, ToProtoAssignment(a, job, state_->layout));
    if (state_->rendezvous_keys != nullptr) {
      assignment->set_rendezvous_key(state_->rendezvous_keys->ForAttempt(
          job.id, a.attempt, scheduler::ToUnixMicros(job.submit_time)));
    }
    std::optional<v1::PathGrant> grant = PathGrantFor(
        assignment->spec(), assignment->checkpoint_dir(), state_->path_policy, state_->layout);
    if (grant) *assignment->mutable_path_grant() = std::move(*grant);
    return write(event);
  };

  // Everything the agent should be running now.
  TERN_ASSIGN_OR_RETURN(std::vector<scheduler::AgentLeases::PlacedRank> placed,
                        leases_.PlacedRanks(agent_id));
  for (const scheduler::AgentLeases::PlacedRank& p : placed) {
    TERN_RETURN_IF_ERROR(send_assignment(p.assignment, p.job));
  }

  for (;;) {
    if (context->IsCancelled()) return CancelledError("the agent cancelled");
    if (state_->shutting_down.load()) {
      return UnavailableError("ternd is shutting down; reconnect");
    }
    if (state_->leadership_lost.load()) return LeadershipLostError();
    TERN_ASSIGN_OR_RETURN(scheduler::AgentWork work,
                          leases_.TakeWork(agent_id, request.lease_id(), state_->long_poll));
    // One kill order per job attempt (the scheduler sends one per rank).
    std::set<std::pair<scheduler::JobId, int>> killed;
    for (const scheduler::KillOrder& kill : work.kills) {
      if (!killed.insert({kill.job_id, kill.attempt}).second) continue;
      v1::AssignmentEvent event;
      v1::KillOrder* order = event.mutable_kill();
      order->set_job_id(FormatJobId(kill.job_id));
      order->set_attempt(kill.attempt);
      order->mutable_reason()->set_code(kill.reason);
      order->mutable_reason()->set_message(
          "stop job " + FormatJobId(kill.job_id) + " attempt " +
          std::to_string(kill.attempt) + " (" + kill.reason + ")");
      *order->mutable_grace_period() =
          TimeUtil::MillisecondsToDuration(state_->kill_grace.count());
      TERN_RETURN_IF_ERROR(write(event));
    }
    for (const scheduler::Assignment& a : work.assignments) {
      if (sent.count({a.job_id, a.attempt, a.rank}) != 0) continue;
      TERN_ASSIGN_OR_RETURN(scheduler::Job job,
                            state_->scheduler->GetJob(a.job_id));
      TERN_RETURN_IF_ERROR(send_assignment(a, job));
    }
  }
}

Status WorkerService::DoReportProgress(
    const v1::ReportProgressRequest& request) {
  TERN_RETURN_IF_ERROR(leases_.Check(request.agent_id(), request.lease_id()));
  if (request.events_size() > kMaxEventsPerReport) {
    return InvalidArgumentError("events: at most 1000 per call, got " +
                                std::to_string(request.events_size()));
  }
  TERN_ASSIGN_OR_RETURN(scheduler::RankRef rank,
                        ToRankRef(request.agent_id(), request.ref()));
  // Any report shows the process runs (the trainer's `started` line comes
  // from rank 0 only).
  TERN_RETURN_IF_ERROR(state_->scheduler->ReportRankStarted(rank));
  TERN_ASSIGN_OR_RETURN(scheduler::Job job,
                        state_->scheduler->GetJob(rank.job_id));
  if (job.attempt != rank.attempt || !scheduler::HoldsSlots(job.state)) {
    return OkStatus();  // an attempt the scheduler has moved past
  }
  for (const v1::TrainerEvent& event : request.events()) {
    TERN_RETURN_IF_ERROR(HandleTrainerEvent(rank, event));
  }
  return OkStatus();
}

Status WorkerService::HandleTrainerEvent(const scheduler::RankRef& rank,
                                         const v1::TrainerEvent& event) {
  TrainerLine line;
  if (!event.json_line().empty()) {
    StatusOr<TrainerLine> parsed = ParseTrainerLine(event.json_line());
    if (!parsed.ok()) {
      TERN_LOG(DEBUG) << "job " << rank.job_id << " rank " << rank.rank
                      << ": ignoring a stdout line that is not an event";
      return OkStatus();
    }
    line = std::move(parsed).value();
  } else if (event.has_log()) {
    line.kind = TrainerEventKind::kLog;
    line.log = event.log();
  } else if (event.has_failed()) {
    line.kind = TrainerEventKind::kFailed;
    line.failure = event.failed();
  } else {
    return OkStatus();  // started (already counted) or nothing
  }
  scheduler::Scheduler& scheduler = *state_->scheduler;
  const bool rank0 = rank.rank == 0;  // metrics come from rank 0
  const scheduler::TimePoint now = state_->clock->Now();
  switch (line.kind) {
    case TrainerEventKind::kProgress:
      if (!rank0) return OkStatus();
      TERN_RETURN_IF_ERROR(scheduler.ReportProgress(rank, event.json_line()));
      state_->progress->RecordProgress(rank.job_id, line.progress, now);
      state_->metrics->OnProgress(rank.job_id, line);
      return OkStatus();
    case TrainerEventKind::kEpochEnd:
      if (!rank0) return OkStatus();
      TERN_RETURN_IF_ERROR(scheduler.ReportProgress(rank, event.json_line()));
      state_->progress->RecordMetrics(rank.job_id, line.epoch_end.metrics(),
                                      now);
      state_->metrics->OnEpochEnd(rank.job_id, line.epoch_end);
      return OkStatus();
    case TrainerEventKind::kPhaseSwitch:
      if (!rank0) return OkStatus();
      return scheduler.ReportProgress(rank, event.json_line());  // kept as the job's event
    case TrainerEventKind::kCheckpoint:
      if (!rank0) return OkStatus();
      return scheduler.ReportCheckpoint(rank, line.checkpoint.step(),
                                        event.json_line());
    case TrainerEventKind::kStopped:
      // Any rank: it stopped after rank 0 committed this step's checkpoint,
      // and its agent sends this line before the rank's exit, which may be
      // the first exit ternd hears of and requeue the job (rank 0's own
      // `checkpoint` line can then arrive too late to count).
      return scheduler.ReportCheckpoint(rank, line.checkpoint.step(),
                                        event.json_line());
    case TrainerEventKind::kFinished: {
      if (!rank0) return OkStatus();
      {
        std::lock_guard<std::mutex> lock(mu_);
        finished_[{rank.job_id, rank.attempt}] = line.result;
      }
      // Kept in the log too, for a ternd restarted before the exit report.
      return scheduler.ReportProgress(rank, event.json_line());
    }
    case TrainerEventKind::kFailed: {
      std::string what = line.failure.code();
      if (!line.failure.message().empty()) {
        what += ": " + line.failure.message();
      }
      std::lock_guard<std::mutex> lock(mu_);
      failures_[{rank.job_id, rank.attempt, rank.rank}] = {line.failure.code(), what};
      return OkStatus();
    }
    case TrainerEventKind::kLog:
      return scheduler.ReportProgress(rank,
                                      LogPayload(rank.rank, line.log.text()));
    case TrainerEventKind::kStarted:
      if (!rank0) return OkStatus();
      state_->metrics->OnTrainerStarted(rank.job_id);
      // Kept as the attempt's AttemptStarted event (fresh or resumed).
      return scheduler.ReportProgress(rank, event.json_line());
    case TrainerEventKind::kUnknown:
      return OkStatus();
  }
  return OkStatus();
}

Status WorkerService::DoReportExit(const v1::ReportExitRequest& request) {
  TERN_RETURN_IF_ERROR(leases_.Check(request.agent_id(), request.lease_id()));
  TERN_ASSIGN_OR_RETURN(scheduler::RankRef rank,
                        ToRankRef(request.agent_id(), request.ref()));
  scheduler::RankExit exit;
  exit.rank = rank;
  exit.exit_code =
      request.signal() > 0 ? -request.signal() : request.exit_code();
  std::string failure_code = request.failure_code();
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = failures_.find({rank.job_id, rank.attempt, rank.rank});
    if (it != failures_.end()) {
      exit.message = it->second.text;
      if (failure_code.empty()) failure_code = it->second.code;
      failures_.erase(it);
    }
  }
  exit.preempted = request.preempted();
  exit.failure_code = failure_code;
  // The trainer stopped itself at its agent's lease deadline: the rank was
  // lost with the lease, not failed.
  exit.lease_lost = request.signal() == 0 && exit.exit_code == trainer::kExitFenced;
  exit.rendezvous_port_in_use =
      request.signal() == 0 && exit.exit_code == trainer::kExitRendezvousPortInUse;
  exit.collective_failed =
      request.signal() == 0 && exit.exit_code == trainer::kExitCollectiveFailed;
  exit.retryable = !(request.signal() == 0 && exit.exit_code > 0 &&
                     (exit.exit_code == trainer::kExitBadSpec ||
                      IsNotRetryableFailureCode(failure_code)));
  // The agent's reason starts with what the trainer's `failed` event said,
  // when it wrote one, and goes on with its stderr tail: not that twice.
  if (!exit.message.empty() && request.reason().rfind(exit.message, 0) == 0) {
    exit.message = request.reason();
  } else if (!request.reason().empty()) {
    exit.message += (exit.message.empty() ? "" : " (") + request.reason() +
                    (exit.message.empty() ? "" : ")");
  }
  std::optional<v1::JobResult> result;
  if (exit.exit_code == 0 && rank.rank == 0) {
    TERN_ASSIGN_OR_RETURN(scheduler::Job job,
                          state_->scheduler->GetJob(rank.job_id));
    if (job.attempt == rank.attempt && scheduler::HoldsSlots(job.state)) {
      result = BuildResult(job, rank.attempt);
      exit.artifact_path = result->artifact_path();
      google::protobuf::util::JsonPrintOptions options;
      options.preserve_proto_field_names = true;
      if (!google::protobuf::util::MessageToJsonString(
               *result, &exit.metrics_json, options)
               .ok()) {
        return InternalError("job " + FormatJobId(job.id) +
                             ": cannot print the result as JSON");
      }
    }
  }
  TERN_RETURN_IF_ERROR(state_->scheduler->ReportRankExit(exit));
  if (result) state_->metrics->OnResult(rank.job_id, *result);
  return OkStatus();
}

Status WorkerService::DoDrain(const v1::DrainRequest& request) {
  return leases_.Drain(request.agent_id(), request.lease_id());
}

Status WorkerService::DoDeregister(const v1::DeregisterRequest& request) {
  return leases_.Deregister(request.agent_id(), request.lease_id());
}

// --- Helpers ----------------------------------------------------------------

v1::JobResult WorkerService::BuildResult(const scheduler::Job& job,
                                         int attempt) {
  std::optional<v1::JobResult> result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = finished_.find({job.id, attempt});
    if (it != finished_.end()) {
      result = std::move(it->second);
      finished_.erase(it);
    }
  }
  // Not seen by this process: find rank 0's `finished` line of this attempt
  // in the log (newest first, back to the attempt's admission).
  for (int64_t end = job.last_event_seq; !result && end > 0;) {
    const int64_t after = std::max<int64_t>(0, end - kResultScanBatch);
    StatusOr<std::vector<scheduler::JobEvent>> events =
        state_->scheduler->ReadEvents(job.id, after,
                                      static_cast<int>(end - after));
    if (!events.ok()) break;
    for (auto it = events->rbegin(); it != events->rend() && !result; ++it) {
      if (it->type == scheduler::JobEventType::kStateChanged &&
          it->to == JobState::kAdmitted) {
        end = 0;  // the attempt's start: nothing older belongs to it
        break;
      }
      if (it->type != scheduler::JobEventType::kProgress) continue;
      StatusOr<TrainerLine> line = ParseTrainerLine(it->payload);
      if (line.ok() && line->kind == TrainerEventKind::kFinished) {
        result = line->result;
      }
    }
    end = std::min(end, after);
  }
  if (!result) result.emplace();
  if (result->artifact_path().empty()) {
    result->set_artifact_path(state_->layout.ArtifactPath(job));
  }
  StatusOr<v1::JobSpec> spec = StoredSpec(job);
  if (spec.ok()) result->set_epochs(spec->optimization().epochs());
  StatusOr<FileDigest> digest = DigestFile(result->artifact_path());
  if (digest.ok()) {
    result->set_artifact_bytes(digest->size_bytes);
    result->set_artifact_sha256(digest->sha256);
  } else {
    TERN_LOG(WARNING) << "job " << job.id << ": artifact "
                      << result->artifact_path()
                      << " is not readable by ternd: " << digest.status();
  }
  return *std::move(result);
}

StatusOr<scheduler::RankRef> WorkerService::ToRankRef(
    const std::string& agent_id, const v1::RankRef& ref) const {
  TERN_ASSIGN_OR_RETURN(scheduler::JobId id,
                        ParseJobId(ref.job_id(), "ref.job_id"));
  if (ref.attempt() < 1) {
    return InvalidArgumentError("ref.attempt: must be >= 1, got " +
                                std::to_string(ref.attempt()));
  }
  if (ref.rank() < 0) {
    return InvalidArgumentError("ref.rank: must be >= 0, got " +
                                std::to_string(ref.rank()));
  }
  return scheduler::RankRef{id, ref.attempt(), ref.rank(), agent_id};
}

}  // namespace tern::server
