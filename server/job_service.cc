#include "server/job_service.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include "common/error_reasons.h"
#include "common/logging.h"
#include "common/sha256.h"
#include "common/utf8.h"
#include "server/caller.h"
#include "server/path_access.h"
#include "server/rpc.h"
#include "server/server_version.h"
#include "server/spec_validation.h"

namespace tern::server {
namespace {

using scheduler::JobState;

constexpr size_t kMaxCancelReasonLength = 1024;
constexpr int kMaxRestartsDefault = 3;  // job.proto: JobSpec.max_restarts
constexpr size_t kChunkBytes = 1 << 20;
// ListAgentsRequest.page_size (job_service.proto): the default for 0 and the
// cap, ListJobs' (SchedulerOptions' defaults).
constexpr int kDefaultAgentPageSize = 50;
constexpr int kMaxAgentPageSize = 500;
// ListAgents page tokens: this prefix, then the last agent id sent, in hex.
constexpr char kAgentPageTokenPrefix[] = "agents-after:";

// FNV-1a, stable across processes: page tokens outlive a ternd restart.
uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string Hex64(uint64_t v) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) out[i] = kDigits[v & 0xf];
  return out;
}

std::string HexEncode(const std::string& bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 0xf];
  }
  return out;
}

std::optional<std::string> HexDecode(const std::string& hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nibble(hex[i]);
    const int lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
  }
  return out;
}

// Identifies the filters of a ListJobs request (not its page fields).
std::string FilterFingerprint(
    const std::set<JobState>& states, const std::string& owner,
    const std::map<std::string, std::string>& labels) {
  std::string canonical;
  for (JobState s : states) {
    canonical += scheduler::JobStateName(s);
    canonical += '\x1f';
  }
  canonical += '\x1e' + owner + '\x1e';
  for (const auto& [key, value] : labels) {
    canonical += key + '\x1f' + value + '\x1f';
  }
  return Hex64(Fnv1a(canonical));
}

// INVALID_ARGUMENT about one request field, as text and as data.
Status FieldError(const std::string& field, const std::string& rule,
                  const char* reason = error_reason::kRequestInvalid) {
  return InvalidArgumentError(field + ": " + rule)
      .WithReason(reason)
      .WithFieldViolation(field, rule);
}

// The one answer for a job the caller may not see, whether it does not exist
// or belongs to another owner (AIP-211): nothing tells the two apart, so job
// ids cannot be used to enumerate owners.
Status JobNotFound(const std::string& job_id) {
  const bool plain =
      !job_id.empty() && job_id.size() <= 20 &&
      std::all_of(job_id.begin(), job_id.end(), [](char c) { return c >= '0' && c <= '9'; });
  return NotFoundError("job " + (plain ? job_id : Quoted(job_id)) + " not found")
      .WithReason(error_reason::kJobNotFound)
      .WithMetadata("job_id", plain ? job_id : Quoted(job_id));
}

// FAILED_PRECONDITION: `job` is in a state the operation does not apply to.
Status JobStateConflict(const scheduler::Job& job, const std::string& message) {
  return FailedPreconditionError(message)
      .WithReason(error_reason::kJobStateConflict)
      .WithMetadata("job_id", FormatJobId(job.id))
      .WithMetadata("state", scheduler::JobStateName(job.state));
}

// The job's latest progress and epoch metrics, into `extras`.
void AddProgress(ProgressCache& progress, const scheduler::Job& job, JobExtras* extras) {
  ProgressCache::Entry entry = progress.Get(job);
  extras->progress = std::move(entry.progress);
  extras->metrics = std::move(entry.metrics);
  extras->progress_time = entry.updated;
}

}  // namespace

JobService::JobService(ServerState* state)
    : state_(state), watch_hub_(state, state->max_watch_streams_per_caller) {}

// --- Handlers ---------------------------------------------------------------

grpc::Status JobService::SubmitJob(grpc::ServerContext* context,
                                   const v1::SubmitJobRequest* request,
                                   v1::SubmitJobResponse* response) {
  return RunRpc(state_, "SubmitJob",
                [&] { return DoSubmitJob(context, *request, response); });
}

grpc::Status JobService::GetJob(grpc::ServerContext* context,
                                const v1::GetJobRequest* request,
                                v1::Job* response) {
  return RunRpc(state_, "GetJob", [&]() -> Status {
    TERN_ASSIGN_OR_RETURN(const v1::JobView view,
                          ResolveJobView(request->view(), v1::JOB_VIEW_FULL));
    TERN_ASSIGN_OR_RETURN(scheduler::Job job,
                          ReadableJob(context, request->job_id()));
    TERN_ASSIGN_OR_RETURN(*response, Describe(job));
    ApplyJobView(view, response);
    return OkStatus();
  });
}

grpc::Status JobService::ListJobs(grpc::ServerContext* context,
                                  const v1::ListJobsRequest* request,
                                  v1::ListJobsResponse* response) {
  return RunRpc(state_, "ListJobs", [&]() -> Status {
    TERN_ASSIGN_OR_RETURN(const Caller caller, CallerFromContext(*context, state_->tokens));
    return DoListJobs(caller, *request, response);
  });
}

grpc::Status JobService::CancelJob(grpc::ServerContext* context,
                                   const v1::CancelJobRequest* request,
                                   v1::Job* response) {
  return RunRpc(state_, "CancelJob",
                [&] { return DoCancelJob(context, *request, response); });
}

grpc::Status JobService::UpdateJob(grpc::ServerContext* context,
                                   const v1::UpdateJobRequest* request, v1::Job* response) {
  return RunRpc(state_, "UpdateJob", [&] { return DoUpdateJob(context, *request, response); });
}

grpc::Status JobService::DeleteJob(grpc::ServerContext* context,
                                   const v1::DeleteJobRequest* request,
                                   google::protobuf::Empty* /*response*/) {
  return RunRpc(state_, "DeleteJob", [&] { return DoDeleteJob(context, *request); });
}

grpc::ServerWriteReactor<v1::JobEvent>* JobService::WatchJob(
    grpc::CallbackServerContext* context, const v1::WatchJobRequest* request) {
  if (state_->shutting_down.load()) {
    return watch_hub_.Refuse(ShuttingDownError());
  }
  if (state_->leadership_lost.load()) return watch_hub_.Refuse(LeadershipLostError());
  Caller caller;
  StatusOr<scheduler::Job> job = ReadableJob(context, request->job_id(), &caller);
  if (!job.ok()) return watch_hub_.Refuse(job.status());
  return watch_hub_.Open(*request, *job, caller.owner);
}

void JobService::StopStreams() { watch_hub_.Stop(); }

grpc::Status JobService::GetArtifact(
    grpc::ServerContext* context, const v1::GetArtifactRequest* request,
    grpc::ServerWriter<v1::GetArtifactResponse>* writer) {
  return RunRpc(state_, "GetArtifact",
                [&] { return DoGetArtifact(context, *request, writer); });
}

grpc::Status JobService::WhoAmI(grpc::ServerContext* context,
                                const v1::WhoAmIRequest* /*request*/,
                                v1::WhoAmIResponse* response) {
  return RunRpc(state_, "WhoAmI", [&]() -> Status {
    TERN_ASSIGN_OR_RETURN(const Caller caller, CallerFromContext(*context, state_->tokens));
    response->set_name(caller.owner);
    response->set_proven_by(caller.proven_by);
    response->set_authenticated(caller.authenticated);
    response->set_sees_every_job(SeesEveryJob(caller, state_->admin_names));
    response->set_server_version(ServerVersion());
    const scheduler::OwnerUsage usage = state_->scheduler->UsageOf(caller.owner);
    v1::OwnerQuota* quota = response->mutable_quota();
    quota->set_unfinished_jobs(usage.unfinished_jobs);
    if (usage.quota) {
      quota->set_line(usage.quota->line_owner);
      if (usage.quota->max_jobs) quota->set_max_unfinished_jobs(*usage.quota->max_jobs);
      if (usage.quota->max_priority) quota->set_max_priority(*usage.quota->max_priority);
    }
    for (const char* kind : {scheduler::kDeviceCpu, scheduler::kDeviceCuda}) {
      v1::SlotQuota* slots = quota->add_slots();
      slots->set_device_kind(ToProtoDeviceKind(kind));
      const auto used = usage.slots.find(kind);
      slots->set_used(used == usage.slots.end() ? 0 : used->second);
      if (usage.quota) {
        if (const std::optional<int> limit = usage.quota->SlotLimit(kind)) {
          slots->set_limit(*limit);
        }
      }
    }
    return OkStatus();
  });
}

grpc::Status JobService::ListAgents(grpc::ServerContext* context,
                                    const v1::ListAgentsRequest* request,
                                    v1::ListAgentsResponse* response) {
  return RunRpc(state_, "ListAgents", [&]() -> Status {
    TERN_RETURN_IF_ERROR(CallerFromContext(*context, state_->tokens).status());
    if (request->page_size() < 0) {
      return InvalidArgumentError("page_size: must be >= 0, got " +
                                  std::to_string(request->page_size()));
    }
    const size_t page_size = static_cast<size_t>(
        request->page_size() == 0 ? kDefaultAgentPageSize
                                  : std::min(request->page_size(), kMaxAgentPageSize));
    std::optional<std::string> after;  // keyset: agents with a greater id
    if (!request->page_token().empty()) {
      const std::string& token = request->page_token();
      const size_t prefix = sizeof(kAgentPageTokenPrefix) - 1;
      if (token.compare(0, prefix, kAgentPageTokenPrefix) == 0) {
        after = HexDecode(token.substr(prefix));
      }
      if (!after || after->empty()) {
        return InvalidArgumentError("page_token: not a ListAgents token this server issued");
      }
    }
    std::vector<scheduler::AgentSummary> agents = state_->scheduler->ListAgents();  // by id
    auto first = agents.begin();
    if (after) {
      first = std::upper_bound(
          agents.begin(), agents.end(), *after,
          [](const std::string& id, const scheduler::AgentSummary& a) { return id < a.id; });
    }
    const size_t left = static_cast<size_t>(agents.end() - first);
    const auto last = first + static_cast<std::ptrdiff_t>(std::min(left, page_size));
    if (last != agents.end()) {
      response->set_next_page_token(kAgentPageTokenPrefix + HexEncode((last - 1)->id));
    }
    for (auto it = first; it != last; ++it) {
      const scheduler::AgentSummary& a = *it;
      v1::AgentInfo* info = response->add_agents();
      info->set_agent_id(a.id);
      info->set_host(a.host);
      info->set_state(!a.live      ? v1::AGENT_STATE_AWAITING_REGISTRATION
                      : a.draining ? v1::AGENT_STATE_DRAINING
                                   : v1::AGENT_STATE_READY);
      for (const auto& [kind, total] : a.slots) {
        v1::AgentSlotUsage* slots = info->add_slots();
        slots->set_device_kind(ToProtoDeviceKind(kind));
        slots->set_total(total);
        const auto used = a.used.find(kind);
        slots->set_used(used == a.used.end() ? 0 : used->second);
      }
      *info->mutable_lease_expire_time() = ToTimestamp(a.lease_expires);
    }
    return OkStatus();
  });
}

// --- Implementations --------------------------------------------------------

Status JobService::DoSubmitJob(grpc::ServerContext* context,
                               const v1::SubmitJobRequest& request,
                               v1::SubmitJobResponse* response) {
  TERN_ASSIGN_OR_RETURN(Caller caller, CallerFromContext(*context, state_->tokens));
  TERN_RETURN_IF_ERROR(scheduler::ValidateIdempotencyKey(request.idempotency_key()));
  TERN_RETURN_IF_ERROR(RefuseUnknownFields(request.spec(), "spec"));
  v1::JobSpec spec = request.spec();
  spec.set_owner(caller.owner);
  TERN_RETURN_IF_ERROR(ValidateJobSpec(spec));
  Status paths = CheckSpecPaths(spec, state_->path_policy, state_->layout,
                                [this](const std::string& dir_name) -> std::optional<std::string> {
                                  const std::optional<scheduler::JobId> id =
                                      JobIdOfDirName(dir_name);
                                  if (!id) return std::nullopt;
                                  StatusOr<scheduler::Job> job = state_->scheduler->GetJob(*id);
                                  if (!job.ok() || JobLayout::JobDirName(*job) != dir_name)
                                    return std::nullopt;
                                  return job->owner;
                                });
  if (!paths.ok() && paths.reason().empty()) {
    paths = paths.WithReason(paths.code() == StatusCode::kPermissionDenied
                                 ? error_reason::kPathNotAllowed
                                 : error_reason::kSpecInvalid);
  }
  TERN_RETURN_IF_ERROR(paths);

  scheduler::JobRequest r;
  r.owner = caller.owner;
  r.labels.insert(spec.labels().begin(), spec.labels().end());
  r.priority = spec.priority();
  r.world_size = spec.resources().has_ranks() ? spec.resources().ranks() : 1;
  r.device_kind = FromProtoDeviceKind(spec.resources().device_kind());
  r.max_restarts =
      spec.has_max_restarts() ? spec.max_restarts() : kMaxRestartsDefault;
  r.idempotency_key = request.idempotency_key();
  r.spec = SerializeSpec(spec);
  TERN_ASSIGN_OR_RETURN(scheduler::SubmitResult submitted,
                        state_->scheduler->SubmitJob(r));
  if (!submitted.created) {
    TERN_ASSIGN_OR_RETURN(spec, StoredSpec(submitted.job));
    if (SerializeSpec(spec) != r.spec) {
      return AlreadyExistsError("idempotency_key " + Quoted(request.idempotency_key()) +
                                " was already used for job " + FormatJobId(submitted.job.id) +
                                " with a different spec")
          .WithReason(error_reason::kIdempotencyKeyReused)
          .WithMetadata("job_id", FormatJobId(submitted.job.id))
          .WithFieldViolation(
              "idempotency_key",
              "already used for job " + FormatJobId(submitted.job.id) + " with a different spec");
    }
  }
  // `spec` is what the stored job holds: the one just stored, or the earlier
  // submission's, equal to it.
  TERN_ASSIGN_OR_RETURN(*response->mutable_job(), DescribeSubmitted(submitted, spec));
  response->set_created(submitted.created);
  return OkStatus();
}

Status JobService::DoListJobs(const Caller& caller, const v1::ListJobsRequest& request,
                              v1::ListJobsResponse* response) {
  std::set<JobState> states;
  bool any_state = false;
  for (int i = 0; i < request.states_size(); ++i) {
    const int value = request.states(i);
    if (!v1::JobState_IsValid(value)) {
      return FieldError("states[" + std::to_string(i) + "]",
                        "unknown JobState value " + std::to_string(value));
    }
    std::optional<JobState> state =
        FromProtoState(static_cast<v1::JobState>(value));
    if (state) {
      states.insert(*state);
    } else {
      any_state = true;  // JOB_STATE_UNSPECIFIED: "any state"
    }
  }
  if (any_state) states.clear();
  if (request.page_size() < 0) {
    return FieldError("page_size", "must be >= 0, got " + std::to_string(request.page_size()));
  }
  TERN_ASSIGN_OR_RETURN(const v1::JobView view, ResolveJobView(request.view(), v1::JOB_VIEW_BASIC));

  scheduler::ListJobsQuery query;
  query.states = states;
  query.page_size = request.page_size();  // the scheduler's default and cap
  TERN_ASSIGN_OR_RETURN(query.owner,
                        ListableOwner(caller, request.owner(), state_->admin_names));
  query.labels.insert(request.labels().begin(), request.labels().end());
  query.newest_first = true;
  const std::string fingerprint =
      FilterFingerprint(states, query.owner, query.labels);
  if (!request.page_token().empty()) {
    const std::string& token = request.page_token();
    const size_t colon = token.find(':');
    if (colon != 16 || token.size() <= 17) {
      return FieldError("page_token", "not a token this server issued",
                        error_reason::kPageTokenInvalid);
    }
    if (token.compare(0, 16, fingerprint) != 0) {
      return FieldError("page_token",
                        "the filters (states, owner, labels) differ from the first page's",
                        error_reason::kPageTokenInvalid);
    }
    query.page_token = token.substr(17);
  }

  TERN_ASSIGN_OR_RETURN(scheduler::ListJobsResult page, state_->scheduler->ListJobs(query));
  for (const scheduler::Job& job : page.jobs) {
    v1::Job* out = response->add_jobs();
    TERN_ASSIGN_OR_RETURN(*out, Describe(job));
    ApplyJobView(view, out);
  }
  if (!page.next_page_token.empty()) {
    response->set_next_page_token(fingerprint + ":" + page.next_page_token);
  }
  return OkStatus();
}

Status JobService::DoCancelJob(grpc::ServerContext* context,
                               const v1::CancelJobRequest& request,
                               v1::Job* response) {
  if (request.reason().size() > kMaxCancelReasonLength) {
    return FieldError("reason",
                      "at most 1024 characters, got " + std::to_string(request.reason().size()));
  }
  TERN_ASSIGN_OR_RETURN(scheduler::Job job, ReadableJob(context, request.job_id()));
  const scheduler::JobId id = job.id;
  if (job.state != JobState::kCancelled) {
    auto kills = state_->scheduler->CancelJob(id, request.reason());
    if (!kills.ok()) {
      // Lost a race with another cancel: cancelling CANCELLED is a no-op.
      TERN_ASSIGN_OR_RETURN(job, state_->scheduler->GetJob(id));
      if (job.state != JobState::kCancelled) {
        if (kills.status().code() != StatusCode::kFailedPrecondition) return kills.status();
        return JobStateConflict(job, kills.status().message());  // e.g. SUCCEEDED
      }
    }
    TERN_ASSIGN_OR_RETURN(job, state_->scheduler->GetJob(id));
  }
  TERN_ASSIGN_OR_RETURN(*response, Describe(job));
  return OkStatus();
}

Status JobService::DoUpdateJob(grpc::ServerContext* context, const v1::UpdateJobRequest& request,
                               v1::Job* response) {
  const v1::Job& patch = request.job();
  std::string job_id = patch.id();
  if (!patch.name().empty()) {
    constexpr char kPrefix[] = "jobs/";
    if (patch.name().rfind(kPrefix, 0) != 0) {
      return InvalidArgumentError("job.name: must be \"jobs/<id>\", got " + Quoted(patch.name()));
    }
    const std::string named = patch.name().substr(sizeof(kPrefix) - 1);
    if (job_id.empty()) {
      job_id = named;
    } else if (job_id != named) {
      return InvalidArgumentError("job.name: " + Quoted(patch.name()) +
                                  " names another job than job.id " + Quoted(job_id));
    }
  }
  if (job_id.empty()) return InvalidArgumentError("job.id: required (or job.name)");
  if (request.update_mask().paths_size() == 0) {
    return InvalidArgumentError(
        "update_mask: required; the paths that can be updated are spec.name and spec.labels");
  }
  bool update_name = false;
  bool update_labels = false;
  for (int i = 0; i < request.update_mask().paths_size(); ++i) {
    const std::string& path = request.update_mask().paths(i);
    if (path == "spec.name") {
      update_name = true;
    } else if (path == "spec.labels") {
      update_labels = true;
    } else {
      return FieldError("update_mask.paths[" + std::to_string(i) + "]",
                        Quoted(path) + " cannot be updated (only spec.name and spec.labels can)");
    }
  }
  TERN_RETURN_IF_ERROR(ParseJobId(job_id, "job.id").status());  // "job.id: required"
  // Another owner's job answers like an absent one (NOT_FOUND).
  TERN_ASSIGN_OR_RETURN(scheduler::Job job, ReadableJob(context, job_id));
  // The new spec is made from the job as the scheduler holds it at the
  // moment of the change (not as read above): two updates of different
  // paths both stay, and the etag is checked against that same state.
  auto change = [&](const scheduler::Job& now) -> StatusOr<scheduler::Relabel> {
    if (!patch.etag().empty()) {
      const std::string etag = JobEtag(now);
      if (patch.etag() != etag) {
        return AbortedError("job " + FormatJobId(now.id) + " changed since its etag " +
                            Quoted(patch.etag()) + " was read (now " + Quoted(etag) +
                            "): read it again and reapply the update")
            .WithReason(error_reason::kEtagMismatch)
            .WithMetadata("job_id", FormatJobId(now.id))
            .WithMetadata("etag", etag);
      }
    }
    TERN_ASSIGN_OR_RETURN(v1::JobSpec spec, StoredSpec(now));
    if (update_name) spec.set_name(patch.spec().name());
    if (update_labels) *spec.mutable_labels() = patch.spec().labels();
    TERN_RETURN_IF_ERROR(ValidateJobSpec(spec, "job.spec."));
    return scheduler::Relabel{{spec.labels().begin(), spec.labels().end()}, SerializeSpec(spec)};
  };
  TERN_ASSIGN_OR_RETURN(job, state_->scheduler->RelabelJob(job.id, change));
  TERN_ASSIGN_OR_RETURN(*response, Describe(job));
  return OkStatus();
}

Status JobService::DoDeleteJob(grpc::ServerContext* context, const v1::DeleteJobRequest& request) {
  // Another owner's job answers like an absent one (NOT_FOUND).
  TERN_ASSIGN_OR_RETURN(const scheduler::Job job, ReadableJob(context, request.job_id()));
  StatusOr<scheduler::Job> deleted = state_->scheduler->DeleteJob(job.id);
  if (!deleted.ok()) {
    if (deleted.status().code() != StatusCode::kFailedPrecondition) return deleted.status();
    // Not ended (yet): its state as the scheduler saw it.
    StatusOr<scheduler::Job> now = state_->scheduler->GetJob(job.id);
    return JobStateConflict(now.ok() ? *now : job, deleted.status().message());
  }
  state_->progress->Forget(job.id);
  RemoveJobFiles(*deleted);
  return OkStatus();
}

void JobService::RemoveJobFiles(const scheduler::Job& job) const {
  const std::string dir_name = JobLayout::JobDirName(job);
  std::vector<std::filesystem::path> paths = {
      // <artifact_root>/<dir>/: the artifact and the detections.
      std::filesystem::path(state_->layout.ArtifactPath(job)).parent_path(),
      // Older versions' <artifact_root>/<dir>.tern.
      std::filesystem::path(state_->layout.artifact_root) / (dir_name + ".tern")};
  StatusOr<v1::JobSpec> spec = StoredSpec(job);
  if (spec.ok() && spec->checkpoint().directory().empty()) {
    paths.push_back(state_->layout.CheckpointDir(job, *spec));
  }
  for (const std::filesystem::path& path : paths) {
    std::error_code error;
    std::filesystem::remove_all(path, error);
    if (error) {
      TERN_LOG(WARNING) << "DeleteJob: job " << job.id << " is deleted, but " << path.string()
                        << " could not be removed: " << error.message();
    }
  }
}

Status JobService::DoGetArtifact(
    grpc::ServerContext* context, const v1::GetArtifactRequest& request,
    grpc::ServerWriter<v1::GetArtifactResponse>* writer) {
  TERN_ASSIGN_OR_RETURN(scheduler::Job job,
                        ReadableJob(context, request.job_id()));
  const std::string id = FormatJobId(job.id);
  if (job.state != JobState::kSucceeded) {
    return JobStateConflict(job, "job " + id + " is " + scheduler::JobStateName(job.state) +
                                     ": an artifact exists only once the job SUCCEEDED");
  }
  v1::JobResult result = StoredResult(job);
  if (result.artifact_path().empty()) {
    return NotFoundError("job " + id + " reported no artifact")
        .WithReason(error_reason::kArtifactNotFound)
        .WithMetadata("job_id", id);
  }
  StatusOr<FileDigest> digest = DigestFile(result.artifact_path());
  if (!digest.ok()) {
    if (digest.status().code() == StatusCode::kNotFound) {
      return NotFoundError("job " + id + ": artifact " + result.artifact_path() +
                           " no longer exists")
          .WithReason(error_reason::kArtifactNotFound)
          .WithMetadata("job_id", id);
    }
    return digest.status();
  }
  if (!result.artifact_sha256().empty() &&
      result.artifact_sha256() != digest->sha256) {
    return DataLossError("job " + id + ": artifact " + result.artifact_path() +
                         " changed since the job finished (sha256 " + digest->sha256 +
                         ", recorded " + result.artifact_sha256() + ")")
        .WithReason(error_reason::kArtifactChanged)
        .WithMetadata("job_id", id);
  }
  if (request.offset() < 0 || request.offset() > digest->size_bytes) {
    return FieldError("offset", "must be in [0, " + std::to_string(digest->size_bytes) + "], got " +
                                    std::to_string(request.offset()));
  }
  result.set_artifact_sha256(digest->sha256);
  result.set_artifact_bytes(digest->size_bytes);

  v1::GetArtifactResponse message;
  v1::ArtifactHeader* header = message.mutable_header();
  header->set_file_name(id + ".tern");
  header->set_size_bytes(digest->size_bytes);
  header->set_sha256(digest->sha256);
  if (!writer->Write(message)) {
    return CancelledError("GetArtifact: the client went away");
  }
  std::ifstream in(result.artifact_path(), std::ios::binary);
  if (!in) {
    return NotFoundError("job " + id + ": cannot open artifact " + result.artifact_path())
        .WithReason(error_reason::kArtifactNotFound)
        .WithMetadata("job_id", id);
  }
  in.seekg(request.offset());
  int64_t offset = request.offset();
  std::string buffer(kChunkBytes, '\0');
  while (offset < digest->size_bytes) {
    TERN_RETURN_IF_ERROR(Stopping(context));
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const std::streamsize got = in.gcount();
    if (got <= 0) {
      return DataLossError("job " + id + ": artifact " +
                           result.artifact_path() + " shrank while sending");
    }
    message.Clear();
    v1::ArtifactChunk* chunk = message.mutable_chunk();
    chunk->set_offset(offset);
    chunk->set_data(buffer.data(), static_cast<size_t>(got));
    if (!writer->Write(message)) {
      return CancelledError("GetArtifact: the client went away");
    }
    offset += got;
  }
  message.Clear();
  *message.mutable_result() = std::move(result);
  if (!writer->Write(message)) {
    return CancelledError("GetArtifact: the client went away");
  }
  return OkStatus();
}

// --- Helpers ----------------------------------------------------------------

StatusOr<scheduler::Job> JobService::ReadableJob(grpc::ServerContextBase* context,
                                                 const std::string& job_id,
                                                 Caller* caller_out) {
  TERN_ASSIGN_OR_RETURN(Caller caller, CallerFromContext(*context, state_->tokens));
  if (caller_out != nullptr) *caller_out = caller;
  StatusOr<scheduler::JobId> id = ParseJobId(job_id);
  if (!id.ok()) {
    if (id.status().code() == StatusCode::kNotFound) return JobNotFound(job_id);
    return id.status();  // an empty job_id
  }
  StatusOr<scheduler::Job> job = state_->scheduler->GetJob(*id);
  if (!job.ok()) {
    if (job.status().code() == StatusCode::kNotFound) return JobNotFound(job_id);
    return job.status();
  }
  // Another owner's job answers exactly like an absent one.
  if (!MayAccess(caller, *job, state_->admin_names)) return JobNotFound(job_id);
  return job;
}

StatusOr<v1::Job> JobService::Describe(const scheduler::Job& job) {
  JobExtras extras;
  if (job.state == JobState::kQueued || job.state == JobState::kRestarting) {
    StatusOr<scheduler::WaitReasonInfo> wait = state_->scheduler->WaitReasonOf(job.id);
    if (wait.ok()) extras.wait_reason = *wait;
  }
  AddProgress(*state_->progress, job, &extras);
  return ToProtoJob(job, state_->layout, extras);
}

StatusOr<v1::Job> JobService::DescribeSubmitted(const scheduler::SubmitResult& submitted,
                                                const v1::JobSpec& spec) {
  JobExtras extras;
  extras.spec = &spec;
  extras.wait_reason = submitted.wait_reason;
  if (!submitted.created) AddProgress(*state_->progress, submitted.job, &extras);
  return ToProtoJob(submitted.job, state_->layout, extras);
}

Status JobService::Stopping(grpc::ServerContext* context) const {
  if (context->IsCancelled()) return CancelledError("the client cancelled");
  if (state_->shutting_down.load()) {
    return ShuttingDownError();
  }
  if (state_->leadership_lost.load()) return LeadershipLostError();
  return OkStatus();
}

}  // namespace tern::server
