#include "worker/agent/agent.h"

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <tuple>
#include <vector>

#include "common/file_util.h"
#include "common/logging.h"
#include "common/utf8.h"
#include "path_policy/spec_paths.h"
#include "tern/v1/worker_service.grpc.pb.h"
#include "trainer_protocol/exit_codes.h"
#include "trainer_protocol/lease_file.h"
#include "trainer_protocol/trainer_events.h"
#include "worker/agent/child_process.h"
#include "worker/agent/fs_confinement.h"
#include "worker/agent/trainer_metrics.h"

extern char** environ;

namespace tern::agent {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using google::protobuf::util::TimeUtil;

constexpr const char* kAgentVersion = "tern-agent 0.1";
constexpr size_t kMaxEventsPerReport = 1000;  // WorkerService limit per call
constexpr size_t kMaxPendingEvents = 5000;    // held while ternd is unreachable
constexpr size_t kMaxLineBytes = 1 << 20;     // longer stdout lines are cut
// Deadline of Drain and Deregister: shutdown must not wait long for ternd.
constexpr std::chrono::milliseconds kShutdownCallLimit{2000};

bool IsLeaseError(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
         s.error_code() == grpc::StatusCode::NOT_FOUND;
}

std::string GrpcStatusString(const grpc::Status& s) {
  return StatusCodeName(static_cast<StatusCode>(s.error_code())) + std::string(": ") +
         s.error_message();
}

// A job id as a directory name: [A-Za-z0-9_.-] kept, everything else '_'.
std::string PathSafe(const std::string& s) {
  std::string out;
  for (char c : s) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ||
                           c == '.') ? c : '_';
  if (out.empty() || out == "." || out == "..") out = "_" + out;
  return out;
}

milliseconds FromDuration(const google::protobuf::Duration& d, milliseconds fallback) {
  const int64_t ms = TimeUtil::DurationToMilliseconds(d);
  return ms > 0 ? milliseconds(ms) : fallback;
}

using RankKey = std::tuple<std::string, int, int>;  // job, attempt, rank
RankKey KeyOf(const v1::RankRef& r) { return {r.job_id(), r.attempt(), r.rank()}; }

// Splits a non-blocking pipe's bytes into lines.
class LineReader {
 public:
  // Reads what is available; appends complete lines to `lines`. Returns
  // false at EOF (or on a read error).
  bool Read(int fd, std::vector<std::string>* lines) {
    char buf[65536];
    while (true) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n > 0) {
        for (ssize_t i = 0; i < n; ++i) {
          if (buf[i] == '\n') {
            lines->push_back(std::move(partial_));
            partial_.clear();
          } else if (partial_.size() < kMaxLineBytes) {
            partial_ += buf[i];
          }
        }
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      // EOF: a last line without a newline still counts.
      if (!partial_.empty()) lines->push_back(std::move(partial_));
      partial_.clear();
      return false;
    }
  }

 private:
  std::string partial_;
};

// The directory of the assignment's artifact; "" when it names none.
std::string ArtifactDir(const v1::Assignment& a) {
  const size_t slash = a.artifact_path().rfind('/');
  return slash == std::string::npos || slash == 0 ? "" : a.artifact_path().substr(0, slash);
}

// Events held for ternd stay within kMaxPendingEvents: log lines and
// progress samples go first, the oldest of them first.
void TrimPending(std::deque<v1::TrainerEvent>* pending) {
  while (pending->size() > kMaxPendingEvents) {
    auto victim = std::find_if(pending->begin(), pending->end(), [](const auto& e) {
      return e.has_log() || e.has_progress() || e.parsed_case() == v1::TrainerEvent::PARSED_NOT_SET;
    });
    pending->erase(victim == pending->end() ? pending->begin() : victim);
  }
}

// `path` with symlinks resolved as far as it exists.
std::string Resolved(const std::string& path) {
  std::error_code ec;
  const fs::path resolved = fs::weakly_canonical(path, ec);
  return ec ? path : resolved.string();
}

// The first of `roots` that `path` lies beneath (or is), symlinks resolved.
std::optional<std::string> ReadableRootOf(const std::string& path,
                                          const std::vector<std::string>& roots) {
  const std::string target = Resolved(path);
  for (const std::string& root : roots) {
    const std::string r = Resolved(root);
    if (target == r || (target.size() > r.size() && target.compare(0, r.size(), r) == 0 &&
                        (r == "/" || target[r.size()] == '/'))) {
      return root;
    }
  }
  return std::nullopt;
}

// What every confined trainer of this agent may read, whatever its job.
std::vector<std::string> TrainerReadable(const AgentOptions& options) {
  std::vector<std::string> paths = SystemReadablePaths();
  const std::string trainer_dir = fs::path(Resolved(options.trainer_path)).parent_path().string();
  if (!trainer_dir.empty()) paths.push_back(trainer_dir);
  paths.insert(paths.end(), options.trainer_readable.begin(), options.trainer_readable.end());
  paths.insert(paths.end(), options.trainer_writable.begin(), options.trainer_writable.end());
  return paths;
}

}  // namespace

Status AgentOptions::Validate() const {
  if (agent_id.empty() || agent_id.size() > 128 ||
      !std::all_of(agent_id.begin(), agent_id.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
      })) {
    return InvalidArgumentError("agent_id: must be 1..128 characters of [A-Za-z0-9_.-], got " +
                                Quoted(agent_id));
  }
  if (host.empty()) return InvalidArgumentError("host: must not be empty");
  if (cpu_slots < 0 || cpu_slots > 1024) return InvalidArgumentError("cpu_slots: must be in [0, 1024]");
  if (cuda_slots < 0 || cuda_slots > 1024) {
    return InvalidArgumentError("cuda_slots: must be in [0, 1024]");
  }
  if (cpu_slots + cuda_slots == 0) {
    return InvalidArgumentError("cpu_slots, cuda_slots: at least one slot is needed");
  }
  if (trainer_path.empty()) return InvalidArgumentError("trainer_path: must not be empty");
  if (workdir.empty()) return InvalidArgumentError("workdir: must not be empty");
  for (auto [name, d] : {std::pair{"rpc_timeout", rpc_timeout}, {"kill_grace", kill_grace},
                         {"shutdown_grace", shutdown_grace}, {"flush_interval", flush_interval},
                         {"backoff_min", backoff_min}, {"backoff_max", backoff_max},
                         {"exit_report_retry", exit_report_retry}}) {
    if (d.count() <= 0) return InvalidArgumentError(std::string(name) + ": must be > 0");
  }
  if (backoff_max < backoff_min) return InvalidArgumentError("backoff_max: must be >= backoff_min");
  if (stderr_tail_lines < 0) return InvalidArgumentError("stderr_tail_lines: must be >= 0");
  for (const auto& [field, dirs] : {std::pair{"trainer_writable", &trainer_writable},
                                     {"trainer_readable", &trainer_readable}}) {
    for (const std::string& dir : *dirs) {
      if (dir.empty() || dir[0] != '/') {
        return InvalidArgumentError(std::string(field) + ": must be absolute paths, got '" + dir +
                                    "'");
      }
    }
  }
  if (confine_reads == ConfineReads::kOn) {
    if (confine_writes == ConfineWrites::kOff) {
      return InvalidArgumentError("confine_reads: on needs confine_writes auto or on");
    }
    const std::vector<std::string> readable = TrainerReadable(*this);
    for (const auto& [flag, path] : secret_files) {
      if (path.empty()) continue;
      if (const std::optional<std::string> root = ReadableRootOf(path, readable)) {
        return InvalidArgumentError("confine_reads: " + flag + " " + path +
                                    " would be readable by every trainer (it lies beneath " +
                                    *root + "); move it out of the trainers' readable paths");
      }
    }
  }
  return OkStatus();
}

class Agent::Impl {
 public:
  Impl(AgentOptions options, std::shared_ptr<grpc::ChannelInterface> channel,
       metrics::Registry* registry)
      : options_(std::move(options)),
        stub_(v1::WorkerService::NewStub(channel)),
        registry_(registry),
        running_(registry->AddGauge("tern_agent_trainers_running",
                                    "Trainer processes this agent runs now.")
                     .WithLabels({})),
        exits_(registry->AddCounter("tern_agent_trainer_exits_total",
                                    "Trainer processes that ended, by exit code or signal name.",
                                    {"code"})),
        slots_(registry->AddGauge("tern_agent_slots",
                                  "Slots this agent offers, by device kind.", {"device_kind"})),
        lease_losses_(registry->AddCounter(
            "tern_agent_lease_losses_total",
            "Leases lost: unknown_to_server (ternd restarted or expired it; trainers kept for a "
            "rejoin) or not_renewed (no heartbeat got through for a lease TTL; trainers stopped).",
            {"cause"})),
        rejoins_(registry->AddCounter(
            "tern_agent_rejoins_total",
            "Re-registrations with the trainers kept: kept (a new lease in time) or timed_out "
            "(none within the lease TTL; trainers stopped).",
            {"result"})),
        trainer_metrics_(registry),
        cuda_in_use_(std::max(0, options_.cuda_slots), false) {
    slots_.WithLabels({"cpu"})->Set(options_.cpu_slots);
    slots_.WithLabels({"cuda"})->Set(options_.cuda_slots);
  }

  Status Run();
  void Shutdown() {
    std::lock_guard<std::mutex> lock(mu_);
    shutdown_ = true;
    if (stream_ctx_) stream_ctx_->TryCancel();
    cv_.notify_all();
  }
  void StopTrainersNow() { KillAll(milliseconds(1000), "stop now", SIGTERM); }
  std::string lease_id() const {
    std::lock_guard<std::mutex> lock(mu_);
    return lease_valid_ ? lease_id_ : "";
  }
  int registrations() const {
    std::lock_guard<std::mutex> lock(mu_);
    return lease_generation_;
  }
  int running_trainers() const {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(ranks_.size());
  }

 private:
  // One trainer process and what the agent knows about it.
  struct Rank {
    v1::Assignment assignment;
    std::string prefix;  // "[job J attempt A rank r/W] "
    std::string job, rank_label;
    int cuda_slot = -1;
    // The registration it runs under: the one it was assigned under, or a
    // later one that the agent re-registered with it listed as running.
    std::atomic<int> lease_generation{0};
    // The trainer's agent-lease file (trainer_protocol/lease_file.h), one per
    // attempt: an earlier attempt's trainer in the same rank directory must
    // not see this attempt's renewals.
    std::string lease_file;
    // Guarded by lease_files_mu_: whether the rank directory exists (the
    // file can be written), and the newest deadline written.
    bool lease_file_ready = false;
    Clock::time_point lease_deadline;
    // Set by the rank's thread before ReportExit when the job's own spec kept
    // the trainer from starting (ReportExitRequest.failure_code).
    std::string failure_code;
    std::mutex mu;             // guards the fields below
    ChildProcess* child = nullptr;  // owned by the rank's thread
    bool kill_requested = false;
    bool sigkill_sent = false;
    int stop_signal = SIGTERM;  // the first signal sent, before SIGKILL
    std::string kill_reason;
    Clock::time_point sigkill_at = Clock::time_point::max();
  };

  void Sleep(milliseconds d);  // wakes early on Shutdown
  bool ShuttingDown() const {
    std::lock_guard<std::mutex> lock(mu_);
    return shutdown_;
  }
  bool Register();
  void StreamOnce(milliseconds* backoff);
  void HeartbeatLoop();
  // `keep_trainers`: ternd answered but no longer knows the lease (it
  // restarted): the trainers go on and the next Register lists them.
  // Otherwise (the lease was not renewed in time) they are stopped.
  void LeaseLost(int generation, const std::string& why, bool keep_trainers);
  // Whether the trainers must be stopped before registering again: always,
  // unless the agent rejoins with them and the lease TTL has not run out
  // since the last renewal (after that ternd has written them off).
  bool MustStopTrainersBeforeRegistering();
  // The trainers this agent runs of attempts of `job` before `attempt`.
  // Call with mu_ held.
  std::vector<std::shared_ptr<Rank>> EarlierAttemptsLocked(const std::string& job,
                                                           int attempt) const {
    std::vector<std::shared_ptr<Rank>> earlier;
    for (const auto& [key, rank] : ranks_) {
      if (std::get<0>(key) == job && std::get<1>(key) < attempt) earlier.push_back(rank);
    }
    return earlier;
  }
  // Makes the heartbeat loop renew the lease now (and so find out if it
  // is lost). Non-blocking.
  void RequestHeartbeat() {
    std::lock_guard<std::mutex> lock(mu_);
    heartbeat_now_ = true;
    cv_.notify_all();
  }
  void StartRank(const v1::Assignment& a);
  // Writes `deadline` into the ranks' agent-lease files where it is later
  // than what they hold (a renewal; failures are logged).
  void RenewLeaseFiles(const std::vector<std::shared_ptr<Rank>>& ranks, Clock::time_point deadline);
  // The ranks under lease `generation`. Call with mu_ held.
  std::vector<std::shared_ptr<Rank>> RanksOfLeaseLocked(int generation) const {
    std::vector<std::shared_ptr<Rank>> out;
    for (const auto& [key, rank] : ranks_) {
      if (rank->lease_generation == generation) out.push_back(rank);
    }
    return out;
  }
  // Sends `signal` to the trainer's process group now and SIGKILL `grace`
  // later: SIGTERM stops it at once, SIGUSR1 at a checkpoint (a drain).
  void Kill(Rank& rank, milliseconds grace, const std::string& reason, int signal = SIGTERM);
  void KillAll(milliseconds grace, const std::string& reason, int signal);
  void KillAllAndWait(milliseconds grace, const std::string& reason, int signal = SIGTERM);
  // Shutdown's calls to ternd, best effort (a failure is logged): Drain
  // before the trainers are asked to stop, so that no job they leave is
  // placed here again; Deregister once their exits are reported.
  void Drain();
  void Deregister();
  template <typename Request, typename Response>
  using ShutdownRpc = grpc::Status (v1::WorkerService::Stub::*)(grpc::ClientContext*,
                                                                 const Request&, Response*);
  // Calls `rpc` with the current lease within kShutdownCallLimit; false
  // without a lease or when the call failed (logged).
  template <typename Request, typename Response>
  bool ShutdownCall(const char* name, ShutdownRpc<Request, Response> rpc);
  void RunRank(std::shared_ptr<Rank> rank);
  Status PrepareFiles(Rank& rank, std::string* spec_path, std::string* rank_dir);
  // The Landlock ruleset for a rank whose assignment has a PathGrant
  // (writes, and reads with confine_reads kOn); nullopt without a grant,
  // with confine_writes kOff, or (kAuto, reads not confined) on a kernel
  // without Landlock.
  StatusOr<std::optional<FsConfinement>> Confine(const Rank& rank, const std::string& rank_dir);
  // `tmpdir` non-empty: the trainer's TMPDIR.
  std::vector<std::string> TrainerEnv(const Rank& rank, const std::string& tmpdir) const;
  // Sends `pending` (front first). Returns false when ternd could not take
  // them now (kept for a retry); drops them on errors a retry cannot fix.
  bool Flush(Rank& rank, std::deque<v1::TrainerEvent>* pending);
  void ReportExit(Rank& rank, const ExitStatus& ended, const std::string& reason);
  void FinishRank(const std::shared_ptr<Rank>& rank);
  // False without a valid lease; *rejoining then tells whether the agent
  // is re-registering with its trainers kept (reports should wait for it).
  bool CurrentLease(std::string* id, int* generation, bool* rejoining = nullptr) const;
  // Every call waits for a connection (up to its deadline) instead of
  // failing at once while the channel reconnects: a restarted ternd is then
  // reached as soon as it listens, not after the next retry.
  // `limit`: a shorter deadline still (the lease's time left, so that a
  // call waiting for ternd cannot delay stopping the trainers).
  void SetDeadline(grpc::ClientContext* ctx,
                   std::optional<milliseconds> limit = std::nullopt) const {
    milliseconds timeout = options_.rpc_timeout;
    if (limit) timeout = std::clamp(*limit, milliseconds(100), timeout);
    ctx->set_deadline(std::chrono::system_clock::now() + timeout);
    ctx->set_wait_for_ready(true);
  }
  // Time left until last_renewed_ + lease_ttl_. Call with mu_ held.
  milliseconds LeaseTimeLeftLocked() const {
    return std::chrono::duration_cast<milliseconds>(last_renewed_ + lease_ttl_ - Clock::now());
  }

  const AgentOptions options_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  metrics::Registry* registry_;
  std::shared_ptr<metrics::Gauge> running_;
  metrics::Family<metrics::Counter>& exits_;
  metrics::Family<metrics::Gauge>& slots_;
  metrics::Family<metrics::Counter>& lease_losses_;
  metrics::Family<metrics::Counter>& rejoins_;
  TrainerMetrics trainer_metrics_;  // the per-rank tern_job_* series
  std::atomic<bool> warned_no_landlock_{false};

  std::mutex lease_files_mu_;  // serializes the agent-lease file writes
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool shutdown_ = false;
  // Heartbeats go on after Shutdown() until the trainers have stopped and
  // their exits are reported, so the lease outlives a drain.
  bool stop_heartbeats_ = false;
  // The lease. lease_generation_ counts registrations; a loss names the
  // generation it saw, so a late report of an old lease changes nothing.
  std::string lease_id_;
  bool lease_valid_ = false;
  bool rejoining_ = false;  // lease lost, trainers kept (LeaseLost)
  int lease_generation_ = 0;
  milliseconds lease_ttl_{15000};
  milliseconds heartbeat_interval_{5000};
  bool heartbeat_now_ = false;  // RequestHeartbeat() was called
  Clock::time_point last_renewed_;
  grpc::ClientContext* stream_ctx_ = nullptr;  // the open stream, to cancel it
  std::map<RankKey, std::shared_ptr<Rank>> ranks_;
  std::vector<bool> cuda_in_use_;
  std::vector<std::thread> finished_threads_;  // rank threads that are done
  std::map<RankKey, std::thread> rank_threads_;
};

void Agent::Impl::Sleep(milliseconds d) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, d, [&] { return shutdown_; });
}

bool Agent::Impl::CurrentLease(std::string* id, int* generation, bool* rejoining) const {
  std::lock_guard<std::mutex> lock(mu_);
  *id = lease_id_;
  *generation = lease_generation_;
  if (rejoining != nullptr) *rejoining = !lease_valid_ && rejoining_;
  return lease_valid_;
}

bool Agent::Impl::MustStopTrainersBeforeRegistering() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!rejoining_) return true;
  if (Clock::now() - last_renewed_ <= lease_ttl_) return false;
  rejoining_ = false;
  rejoins_.WithLabels({"timed_out"})->Increment();
  TERN_LOG(WARNING) << "no new lease within the lease TTL (" << lease_ttl_.count()
                    << " ms): stopping " << ranks_.size() << " trainer(s)";
  cv_.notify_all();
  return true;
}

Status Agent::Impl::Run() {
  TERN_RETURN_IF_ERROR(options_.Validate());
  TERN_RETURN_IF_ERROR(MakeDirectories(options_.workdir + "/jobs"));
  std::thread heartbeat([this] { HeartbeatLoop(); });
  milliseconds backoff = options_.backoff_min;
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (shutdown_) break;
    }
    std::string id;
    int generation = 0;
    if (!CurrentLease(&id, &generation)) {
      // No lease (first start, or lost): nothing may still run from the old
      // one, unless the agent rejoins a restarted ternd with its trainers.
      if (MustStopTrainersBeforeRegistering()) KillAllAndWait(options_.shutdown_grace, "lease lost");
      if (!Register()) {
        Sleep(backoff);
        backoff = std::min(backoff * 2, options_.backoff_max);
        continue;
      }
      backoff = options_.backoff_min;
    }
    StreamOnce(&backoff);
  }
  // A drain: trainers commit a checkpoint at their current step and exit
  // (tern-trainer's SIGUSR1), so the jobs resume elsewhere without losing
  // steps or using a restart.
  Drain();
  KillAllAndWait(options_.shutdown_grace, "agent shutting down", SIGUSR1);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_heartbeats_ = true;
    cv_.notify_all();
  }
  heartbeat.join();
  Deregister();
  std::vector<std::thread> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done.swap(finished_threads_);
  }
  for (std::thread& t : done) t.join();
  TERN_LOG(INFO) << "agent " << options_.agent_id << " stopped";
  return OkStatus();
}

bool Agent::Impl::Register() {
  v1::RegisterRequest request;
  request.set_agent_id(options_.agent_id);
  request.set_host(options_.host);
  request.set_version(kAgentVersion);
  if (options_.cpu_slots > 0) {
    v1::Slots* s = request.add_slots();
    s->set_device_kind(v1::DEVICE_CPU);
    s->set_count(options_.cpu_slots);
  }
  if (options_.cuda_slots > 0) {
    v1::Slots* s = request.add_slots();
    s->set_device_kind(v1::DEVICE_CUDA);
    s->set_count(options_.cuda_slots);
  }
  std::optional<milliseconds> limit;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (rejoining_) {
      for (const auto& [key, rank] : ranks_) *request.add_running() = rank->assignment.ref();
      limit = LeaseTimeLeftLocked();
    }
  }
  grpc::ClientContext ctx;
  SetDeadline(&ctx, limit);
  v1::RegisterResponse response;
  const grpc::Status status = stub_->Register(&ctx, request, &response);
  if (!status.ok()) {
    TERN_LOG(WARNING) << "Register: " << GrpcStatusString(status);
    return false;
  }
  std::unique_lock<std::mutex> lock(mu_);
  lease_id_ = response.lease_id();
  lease_ttl_ = FromDuration(response.lease_ttl(), milliseconds(15000));
  heartbeat_interval_ = FromDuration(response.heartbeat_interval(), lease_ttl_ / 3);
  last_renewed_ = Clock::now();
  lease_valid_ = true;
  ++lease_generation_;
  if (rejoining_) {
    // The kept trainers run under the new lease; those the server does not
    // expect get kill orders on the stream. A rank that started after the
    // request was built cannot exist (no lease, no assignments).
    for (auto& [key, rank] : ranks_) rank->lease_generation = lease_generation_;
    TERN_LOG(INFO) << "rejoined with " << request.running_size() << " running trainer(s)";
    rejoins_.WithLabels({"kept"})->Increment();
    rejoining_ = false;
  }
  cv_.notify_all();  // the heartbeat loop starts counting from now
  TERN_LOG(INFO) << "registered as " << options_.agent_id << " (lease " << lease_id_ << ", ttl "
                 << lease_ttl_.count() << " ms, " << options_.cpu_slots << " cpu + "
                 << options_.cuda_slots << " cuda slots)";
  const std::vector<std::shared_ptr<Rank>> kept = RanksOfLeaseLocked(lease_generation_);
  const Clock::time_point deadline = last_renewed_ + lease_ttl_;
  lock.unlock();
  RenewLeaseFiles(kept, deadline);  // the kept trainers' new lease
  return true;
}

template <typename Request, typename Response>
bool Agent::Impl::ShutdownCall(const char* name, ShutdownRpc<Request, Response> rpc) {
  std::string lease;
  int generation = 0;
  if (!CurrentLease(&lease, &generation)) return false;
  Request request;
  request.set_agent_id(options_.agent_id);
  request.set_lease_id(lease);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, kShutdownCallLimit);  // an unreachable ternd must not delay the drain
  Response response;
  const grpc::Status status = (stub_.get()->*rpc)(&ctx, request, &response);
  if (!status.ok()) {
    TERN_LOG(WARNING) << name << ": " << GrpcStatusString(status);
  }
  return status.ok();
}

void Agent::Impl::Drain() {
  ShutdownCall<v1::DrainRequest, v1::DrainResponse>("Drain", &v1::WorkerService::Stub::Drain);
}

void Agent::Impl::Deregister() {
  if (!ShutdownCall<v1::DeregisterRequest, v1::DeregisterResponse>(
          "Deregister", &v1::WorkerService::Stub::Deregister)) {
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  lease_valid_ = false;
  TERN_LOG(INFO) << "deregistered (lease " << lease_id_ << " ended)";
}

void Agent::Impl::RenewLeaseFiles(const std::vector<std::shared_ptr<Rank>>& ranks,
                                  Clock::time_point deadline) {
  std::lock_guard<std::mutex> lock(lease_files_mu_);
  for (const auto& rank : ranks) {
    if (!rank->lease_file_ready || deadline <= rank->lease_deadline) continue;
    const Status written =
        WriteFileAtomically(rank->lease_file, trainer::FormatLeaseDeadline(deadline));
    if (written.ok()) {
      rank->lease_deadline = deadline;
    } else {
      TERN_LOG(WARNING) << rank->prefix << "cannot renew the trainer's lease file: " << written;
    }
  }
}

void Agent::Impl::LeaseLost(int generation, const std::string& why, bool keep_trainers) {
  std::lock_guard<std::mutex> lock(mu_);
  if (generation != lease_generation_ || !lease_valid_) return;
  lease_valid_ = false;
  rejoining_ = keep_trainers;
  lease_losses_.WithLabels({keep_trainers ? "unknown_to_server" : "not_renewed"})->Increment();
  if (keep_trainers) {
    TERN_LOG(WARNING) << "lease " << lease_id_ << " lost (" << why << "): registering again with "
                      << ranks_.size() << " running trainer(s)";
  } else {
    TERN_LOG(WARNING) << "lease " << lease_id_ << " lost (" << why
                      << "): stopping trainers, registering again";
  }
  if (stream_ctx_) stream_ctx_->TryCancel();
  cv_.notify_all();
}

void Agent::Impl::StreamOnce(milliseconds* backoff) {
  grpc::ClientContext ctx;  // no deadline: lives as long as the lease
  ctx.set_wait_for_ready(true);
  std::string lease;
  int generation = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_ || !lease_valid_) return;
    lease = lease_id_;
    generation = lease_generation_;
    stream_ctx_ = &ctx;
  }
  v1::StreamAssignmentsRequest request;
  request.set_agent_id(options_.agent_id);
  request.set_lease_id(lease);
  std::unique_ptr<grpc::ClientReader<v1::AssignmentEvent>> reader =
      stub_->StreamAssignments(&ctx, request);
  v1::AssignmentEvent event;
  while (reader->Read(&event)) {
    *backoff = options_.backoff_min;  // the stream works
    if (event.has_assignment()) {
      StartRank(event.assignment());
    } else if (event.has_kill()) {
      const v1::KillOrder& k = event.kill();
      const milliseconds grace = k.has_grace_period()
                                     ? milliseconds(TimeUtil::DurationToMilliseconds(k.grace_period()))
                                     : options_.kill_grace;
      const std::string reason = k.reason().code().empty() ? "kill order" : k.reason().code();
      std::vector<std::shared_ptr<Rank>> victims;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (auto& [key, rank] : ranks_) {
          if (std::get<0>(key) == k.job_id() && (k.attempt() == 0 || std::get<1>(key) == k.attempt())) {
            victims.push_back(rank);
          }
        }
      }
      TERN_LOG(INFO) << "kill order for job " << k.job_id() << " attempt " << k.attempt() << " ("
                     << reason << "): " << victims.size() << " trainer(s)";
      for (auto& r : victims) Kill(*r, grace, reason);
    }
  }
  const grpc::Status status = reader->Finish();
  bool retry_later = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stream_ctx_ = nullptr;
    retry_later = !shutdown_ && lease_valid_ && generation == lease_generation_;
  }
  if (IsLeaseError(status)) {
    LeaseLost(generation, "StreamAssignments: " + GrpcStatusString(status), true);
    return;
  }
  if (retry_later) {
    TERN_LOG(WARNING) << "assignment stream ended (" << GrpcStatusString(status)
                      << "); reconnecting in " << backoff->count() << " ms";
    // A lost lease (a heartbeat found ternd restarted) ends the wait: the
    // agent must register again before its lease TTL runs out.
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, *backoff, [&] {
      return shutdown_ || !lease_valid_ || generation != lease_generation_;
    });
    *backoff = std::min(*backoff * 2, options_.backoff_max);
  }
}

void Agent::Impl::HeartbeatLoop() {
  int failures = 0;
  int generation = 0;  // of the lease the loop renews
  Clock::time_point next = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_heartbeats_) {
    if (!lease_valid_) {
      cv_.wait(lock, [&] { return stop_heartbeats_ || lease_valid_; });
      continue;
    }
    if (generation != lease_generation_) {  // a new registration
      generation = lease_generation_;
      next = last_renewed_ + heartbeat_interval_;
      failures = 0;
    }
    // Awake at the lease deadline too: without a renewal by then the
    // trainers are stopped at once, at the deadline their lease files name
    // (which ternd's expiry never precedes), not at the end of the next
    // failed heartbeat (up to a second later, after ternd may have started
    // their ranks elsewhere).
    const Clock::time_point expiry = last_renewed_ + lease_ttl_;
    cv_.wait_until(lock, std::min(next, expiry), [&] {
      return stop_heartbeats_ || !lease_valid_ || generation != lease_generation_ || heartbeat_now_;
    });
    if (stop_heartbeats_ || !lease_valid_ || generation != lease_generation_) continue;
    if (Clock::now() >= last_renewed_ + lease_ttl_) {
      lock.unlock();
      LeaseLost(generation, "not renewed within the lease TTL", false);
      lock.lock();
      continue;
    }
    if (!heartbeat_now_ && Clock::now() < next) continue;
    heartbeat_now_ = false;
    v1::HeartbeatRequest request;
    request.set_agent_id(options_.agent_id);
    request.set_lease_id(lease_id_);
    for (const auto& [key, rank] : ranks_) {
      if (rank->lease_generation == generation) *request.add_running() = rank->assignment.ref();
    }
    const Clock::time_point sent = Clock::now();
    const milliseconds left = LeaseTimeLeftLocked();
    lock.unlock();
    grpc::ClientContext ctx;
    SetDeadline(&ctx, left);
    v1::HeartbeatResponse response;
    const grpc::Status status = stub_->Heartbeat(&ctx, request, &response);
    if (IsLeaseError(status)) {
      LeaseLost(generation, "Heartbeat: " + GrpcStatusString(status), true);
      lock.lock();
      continue;
    }
    if (status.ok()) {
      failures = 0;
      std::vector<std::shared_ptr<Rank>> unexpected;
      lock.lock();
      std::vector<std::shared_ptr<Rank>> renewed;
      if (generation == lease_generation_) {
        last_renewed_ = sent;
        lease_ttl_ = FromDuration(response.lease_ttl(), lease_ttl_);
        heartbeat_interval_ = FromDuration(response.heartbeat_interval(), heartbeat_interval_);
        renewed = RanksOfLeaseLocked(generation);
      }
      const Clock::time_point deadline = sent + lease_ttl_;
      next = sent + heartbeat_interval_;
      for (const v1::RankRef& ref : response.unexpected()) {
        auto it = ranks_.find(KeyOf(ref));
        if (it != ranks_.end()) unexpected.push_back(it->second);
      }
      lock.unlock();
      RenewLeaseFiles(renewed, deadline);
      for (auto& r : unexpected) Kill(*r, options_.kill_grace, "not expected by the server");
      lock.lock();
      continue;
    }
    ++failures;
    TERN_LOG(WARNING) << "Heartbeat: " << GrpcStatusString(status);
    lock.lock();
    next = Clock::now() + std::min<milliseconds>(heartbeat_interval_, milliseconds(1000));
    if (generation != lease_generation_) continue;
    if (Clock::now() - last_renewed_ > lease_ttl_) {
      lock.unlock();
      LeaseLost(generation, "not renewed within the lease TTL", false);
      lock.lock();
    } else if (failures >= 2 && stream_ctx_) {
      stream_ctx_->TryCancel();  // the connection may be dead: reconnect the stream too
    }
  }
}

void Agent::Impl::StartRank(const v1::Assignment& a) {
  const RankKey key = KeyOf(a.ref());
  auto rank = std::make_shared<Rank>();
  rank->assignment = a;
  rank->job = a.ref().job_id();
  rank->rank_label = std::to_string(a.ref().rank());
  rank->prefix = "[job " + a.ref().job_id() + " attempt " + std::to_string(a.ref().attempt()) +
                 " rank " + std::to_string(a.ref().rank()) + "/" + std::to_string(a.world_size()) +
                 "] ";
  rank->lease_file = options_.workdir + "/jobs/" + PathSafe(a.ref().job_id()) + "/rank-" +
                     std::to_string(a.ref().rank()) + "/agent-lease-attempt-" +
                     std::to_string(a.ref().attempt());
  std::unique_lock<std::mutex> lock(mu_);
  if (shutdown_ || !lease_valid_) return;
  if (ranks_.count(key)) {
    TERN_LOG(DEBUG) << rank->prefix << "already running; repeat assignment ignored";
    return;
  }
  rank->lease_generation = lease_generation_;
  if (a.spec().resources().device_kind() == v1::DEVICE_CUDA) {
    // The first free GPU; when the server over-assigns, share the first one.
    auto free = std::find(cuda_in_use_.begin(), cuda_in_use_.end(), false);
    if (free == cuda_in_use_.end()) {
      TERN_LOG(WARNING) << rank->prefix << "no free cuda slot; sharing GPU 0";
      rank->cuda_slot = 0;
    } else {
      rank->cuda_slot = static_cast<int>(free - cuda_in_use_.begin());
      *free = true;
    }
  }
  ranks_[key] = rank;
  running_->Set(static_cast<double>(ranks_.size()));
  // ternd never runs two attempts of a job at once: a later attempt's
  // assignment supersedes whatever this agent still runs of earlier ones
  // (e.g. after the agent was frozen past its lease), and RunRank waits for
  // them to exit before the new trainer shares their rank directory and port.
  const std::vector<std::shared_ptr<Rank>> superseded =
      EarlierAttemptsLocked(a.ref().job_id(), a.ref().attempt());
  // Join threads of trainers that ended meanwhile (they finished already).
  for (std::thread& t : finished_threads_) t.join();
  finished_threads_.clear();
  rank_threads_[key] = std::thread([this, rank] { RunRank(rank); });
  lock.unlock();
  for (auto& old : superseded) {
    Kill(*old, options_.kill_grace, "superseded by attempt " + std::to_string(a.ref().attempt()));
  }
}

void Agent::Impl::Kill(Rank& rank, milliseconds grace, const std::string& reason, int signal) {
  std::lock_guard<std::mutex> lock(rank.mu);
  if (!rank.kill_requested) {
    rank.kill_requested = true;
    rank.kill_reason = reason;
    rank.stop_signal = signal;
    TERN_LOG(INFO) << rank.prefix << "stopping trainer (" << reason << ") with "
                   << SignalName(signal) << ", SIGKILL after " << grace.count() << " ms";
  }
  rank.sigkill_at = std::min(rank.sigkill_at, Clock::now() + grace);
  if (rank.child) rank.child->SignalGroup(signal);
  // A rank whose process is not started yet sees kill_requested and stops.
}

void Agent::Impl::KillAll(milliseconds grace, const std::string& reason, int signal) {
  std::vector<std::shared_ptr<Rank>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [key, rank] : ranks_) all.push_back(rank);
  }
  for (auto& r : all) Kill(*r, grace, reason, signal);
}

void Agent::Impl::KillAllAndWait(milliseconds grace, const std::string& reason, int signal) {
  KillAll(grace, reason, signal);
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return ranks_.empty(); });
}

Status Agent::Impl::PrepareFiles(Rank& rank, std::string* spec_path, std::string* rank_dir) {
  const v1::Assignment& a = rank.assignment;
  const std::string job_dir = options_.workdir + "/jobs/" + PathSafe(a.ref().job_id());
  *rank_dir = job_dir + "/rank-" + std::to_string(a.ref().rank());
  TERN_RETURN_IF_ERROR(MakeDirectories(*rank_dir));
  if (const std::string dir = ArtifactDir(a); !dir.empty()) {
    // ternd gives each job an artifact directory of its own; the trainer
    // writes the file (and, for detection, its detections) into it.
    TERN_RETURN_IF_ERROR(MakeDirectories(dir));
  }
  v1::JobSpec spec = a.spec();
  // The trainer reads the checkpoint directory from the spec; every rank of
  // the job must use the same one.
  if (!a.checkpoint_dir().empty()) {
    spec.mutable_checkpoint()->set_directory(a.checkpoint_dir());
  } else if (spec.checkpoint().directory().empty()) {
    spec.mutable_checkpoint()->set_directory(job_dir + "/checkpoints");
  }
  if (a.has_path_grant()) {
    // ternd checked the names; here links are followed, on this node's files.
    StatusOr<std::vector<paths::NamedPath>> named = paths::PathsNamedBy(spec);
    const Status allowed =
        named.ok() ? paths::CheckResolvedPaths(*named, a.path_grant()) : named.status();
    if (!allowed.ok()) {
      rank.failure_code = StatusCodeName(allowed.code());  // the job's fault: not retried
      return allowed;
    }
  }
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  std::string json;
  const auto printed = google::protobuf::util::MessageToJsonString(spec, &json, print);
  if (!printed.ok()) return InternalError("printing the spec as JSON: " + printed.ToString());
  *spec_path = *rank_dir + "/spec-attempt-" + std::to_string(a.ref().attempt()) + ".json";
  return WriteFileAtomically(*spec_path, json + "\n");
}

StatusOr<std::optional<FsConfinement>> Agent::Impl::Confine(
    const Rank& rank, const std::string& rank_dir) {
  const v1::Assignment& a = rank.assignment;
  if (!a.has_path_grant() || options_.confine_writes == AgentOptions::ConfineWrites::kOff) {
    return std::optional<FsConfinement>();
  }
  // Directories the trainer creates must exist for a rule to name them.
  std::vector<std::string> dirs(a.path_grant().write_roots().begin(),
                                a.path_grant().write_roots().end());
  if (!a.checkpoint_dir().empty()) {
    TERN_RETURN_IF_ERROR(MakeDirectories(a.checkpoint_dir()));
    dirs.push_back(a.checkpoint_dir());
  }
  if (const std::string dir = ArtifactDir(a); !dir.empty()) {
    dirs.push_back(dir);  // PrepareFiles created it
  }
  dirs.push_back("/dev");  // /dev/null, /dev/shm (NCCL), GPU device nodes
  dirs.push_back(rank_dir);  // holds the trainer's TMPDIR too (a shared /tmp is not writable)
  TERN_RETURN_IF_ERROR(MakeDirectories(rank_dir + "/tmp"));
  dirs.insert(dirs.end(), options_.trainer_writable.begin(), options_.trainer_writable.end());
  FsRules rules;
  rules.writable = std::move(dirs);
  if (options_.confine_reads == AgentOptions::ConfineReads::kOn) {
    // The job's data (ternd checked its names against these roots, and this
    // agent again with links resolved) and what every trainer needs.
    std::vector<std::string> readable(a.path_grant().read_roots().begin(),
                                      a.path_grant().read_roots().end());
    const std::vector<std::string> base = TrainerReadable(options_);
    readable.insert(readable.end(), base.begin(), base.end());
    rules.readable = std::move(readable);
  }
  StatusOr<FsConfinement> confinement = FsConfinement::Create(rules);
  if (confinement.ok()) return std::optional<FsConfinement>(std::move(confinement).value());
  if (confinement.status().code() == StatusCode::kUnavailable &&
      options_.confine_writes == AgentOptions::ConfineWrites::kAuto &&
      options_.confine_reads == AgentOptions::ConfineReads::kOff) {
    if (!warned_no_landlock_.exchange(true)) {
      TERN_LOG(WARNING) << "trainers' writes are not confined: " << confinement.status()
                        << " (their paths are still checked by name)";
    }
    return std::optional<FsConfinement>();
  }
  return confinement.status();
}

std::vector<std::string> Agent::Impl::TrainerEnv(const Rank& rank,
                                                 const std::string& tmpdir) const {
  const v1::Assignment& a = rank.assignment;
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    const std::string kv = *e;
    const size_t eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  env["TERN_JOB_ID"] = a.ref().job_id();
  env["TERN_ATTEMPT"] = std::to_string(a.ref().attempt());
  env["TERN_RANK"] = std::to_string(a.ref().rank());
  env["TERN_WORLD_SIZE"] = std::to_string(a.world_size());
  env["TERN_MASTER_ADDR"] = a.rendezvous_host();
  env["TERN_MASTER_PORT"] = std::to_string(a.rendezvous_port());
  // Every rank listens for its peers (Gloo) on the address this agent
  // advertises, the one ternd gives the other ranks when rank 0 runs here;
  // not the hostname's address, which resolves to loopback on many hosts.
  env["TERN_BIND_ADDR"] = options_.host;
  env["TERN_AGENT_ID"] = options_.agent_id;
  env[trainer::kLeaseFileEnv] = rank.lease_file;
  if (!tmpdir.empty()) env["TMPDIR"] = tmpdir;
  // A secret: in the environment (readable by this user only), not argv.
  if (!a.rendezvous_key().empty()) env["TERN_RENDEZVOUS_KEY"] = a.rendezvous_key();
  // Under path roots the trainer reads only beneath what the spec names
  // (detection::CocoReadOptions::file_names_inside_image_dir).
  if (a.has_path_grant()) env["TERN_CONFINE_DATA"] = "1";
  // A CPU rank sees no GPU; a CUDA rank sees its own as cuda:0.
  env["CUDA_VISIBLE_DEVICES"] = rank.cuda_slot >= 0 ? std::to_string(rank.cuda_slot) : "";
  if (rank.cuda_slot < 0 && !a.spec().resources().has_threads_per_rank() &&
      !env.count("OMP_NUM_THREADS")) {
    // Spread the cores over the CPU slots instead of every rank using all.
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    env["OMP_NUM_THREADS"] = std::to_string(std::max(1, cores / std::max(1, options_.cpu_slots)));
  }
  std::vector<std::string> out;
  for (const auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

bool Agent::Impl::Flush(Rank& rank, std::deque<v1::TrainerEvent>* pending) {
  while (!pending->empty()) {
    std::string lease;
    int generation = 0;
    bool rejoining = false;
    const bool valid = CurrentLease(&lease, &generation, &rejoining);
    if (!valid && rejoining) {  // held until the agent rejoins
      TrimPending(pending);
      return false;
    }
    if (!valid || generation != rank.lease_generation) {
      pending->clear();  // the lease is lost: the server wrote this rank off
      return true;
    }
    v1::ReportProgressRequest request;
    request.set_agent_id(options_.agent_id);
    request.set_lease_id(lease);
    *request.mutable_ref() = rank.assignment.ref();
    const size_t n = std::min(pending->size(), kMaxEventsPerReport);
    for (size_t i = 0; i < n; ++i) *request.add_events() = (*pending)[i];
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::ReportProgressResponse response;
    const grpc::Status status = stub_->ReportProgress(&ctx, request, &response);
    if (status.ok()) {
      pending->erase(pending->begin(), pending->begin() + static_cast<std::ptrdiff_t>(n));
      continue;
    }
    if (IsLeaseError(status)) {
      // Rejected for good (an unknown lease, or an attempt the server does
      // not know); a heartbeat tells which.
      TERN_LOG(WARNING) << rank.prefix << "ReportProgress: " << GrpcStatusString(status)
                        << "; dropping " << pending->size() << " events";
      RequestHeartbeat();
      pending->clear();
      return true;
    }
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
        status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
        status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      TERN_LOG(WARNING) << rank.prefix << "ReportProgress: " << GrpcStatusString(status)
                        << " (" << pending->size() << " events held)";
      TrimPending(pending);
      return false;
    }
    TERN_LOG(WARNING) << rank.prefix << "ReportProgress: " << GrpcStatusString(status)
                      << "; dropping " << n << " events";
    pending->erase(pending->begin(), pending->begin() + static_cast<std::ptrdiff_t>(n));
  }
  return true;
}

void Agent::Impl::ReportExit(Rank& rank, const ExitStatus& ended, const std::string& reason) {
  bool killed = false;
  {
    std::lock_guard<std::mutex> lock(rank.mu);
    killed = rank.kill_requested;
  }
  const Clock::time_point give_up = Clock::now() + options_.exit_report_retry;
  milliseconds backoff = options_.backoff_min;
  while (true) {
    std::string lease;
    int generation = 0;
    bool rejoining = false;
    const bool valid = CurrentLease(&lease, &generation, &rejoining);
    // A lost lease wrote the rank off: the server counts it as lost already.
    // While the agent rejoins with its trainers, the exit waits for the new
    // lease.
    if (!valid && !rejoining) return;
    if (valid && generation != rank.lease_generation) return;
    if (valid) {
      v1::ReportExitRequest request;
      request.set_agent_id(options_.agent_id);
      request.set_lease_id(lease);
      *request.mutable_ref() = rank.assignment.ref();
      request.set_exit_code(ended.exit_code);
      request.set_signal(ended.signal);
      request.set_reason(reason);
      request.set_killed_by_agent(killed);
      request.set_failure_code(rank.failure_code);
      request.set_preempted(ended.signal == 0 && ended.exit_code == trainer::kExitStopped);
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      v1::ReportExitResponse response;
      const grpc::Status status = stub_->ReportExit(&ctx, request, &response);
      if (status.ok()) return;
      if (IsLeaseError(status)) {
        TERN_LOG(WARNING) << rank.prefix << "ReportExit: " << GrpcStatusString(status);
        RequestHeartbeat();  // it decides whether the lease is lost
        return;
      }
      TERN_LOG(WARNING) << rank.prefix << "ReportExit: " << GrpcStatusString(status);
      if (status.error_code() != grpc::StatusCode::UNAVAILABLE &&
          status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
        return;
      }
    }
    if (ShuttingDown()) return;  // one try is all a shutting-down agent waits for
    if (Clock::now() + backoff > give_up) {
      TERN_LOG(ERROR) << rank.prefix << "giving up reporting the exit (" << ended.ToString() << ")";
      return;
    }
    Sleep(backoff);
    backoff = std::min(backoff * 2, options_.backoff_max);
  }
}

void Agent::Impl::RunRank(std::shared_ptr<Rank> rank) {
  const v1::Assignment& a = rank->assignment;
  TERN_LOG(INFO) << rank->prefix << "starting trainer (rendezvous " << a.rendezvous_host() << ":"
                 << a.rendezvous_port()
                 << (rank->cuda_slot >= 0 ? ", GPU " + std::to_string(rank->cuda_slot) : "")
                 << ")";
  {
    // Earlier attempts of the job still here were told to stop (StartRank).
    std::unique_lock<std::mutex> lock(mu_);
    const bool gone = cv_.wait_for(lock, options_.kill_grace + options_.shutdown_grace, [&] {
      return shutdown_ || EarlierAttemptsLocked(rank->job, a.ref().attempt()).empty();
    });
    if (!gone) {
      TERN_LOG(WARNING) << rank->prefix << "an earlier attempt's trainer is still running";
    }
  }
  std::string spec_path, rank_dir;
  Status prepared = PrepareFiles(*rank, &spec_path, &rank_dir);
  if (prepared.ok()) {
    // The trainer stops by itself past this deadline unless renewals move it.
    Clock::time_point deadline;
    {
      std::lock_guard<std::mutex> lock(mu_);
      deadline = last_renewed_ + lease_ttl_;
    }
    std::lock_guard<std::mutex> files(lease_files_mu_);
    prepared = WriteFileAtomically(rank->lease_file, trainer::FormatLeaseDeadline(deadline));
    rank->lease_file_ready = prepared.ok();
    rank->lease_deadline = deadline;
  }
  std::optional<FsConfinement> confinement;
  if (prepared.ok()) {
    StatusOr<std::optional<FsConfinement>> confined = Confine(*rank, rank_dir);
    if (confined.ok()) {
      confinement = std::move(confined).value();
      if (confinement) {
        auto join = [](const std::vector<std::string>& paths) {
          std::string joined;
          for (const std::string& p : paths) joined += (joined.empty() ? "" : ", ") + p;
          return joined;
        };
        TERN_LOG(INFO) << rank->prefix << "trainer writes confined (Landlock ABI "
                       << FsConfinement::AbiVersion() << ") to " << join(confinement->allowed())
                       << (confinement->confines_reads()
                               ? "; its reads to those and " + join(confinement->readable())
                               : std::string());
      }
    } else {
      prepared = confined.status().WithContext("confining the trainer's file access");
    }
  }
  std::unique_ptr<ChildProcess> child;
  bool drained_before_start = false;
  if (prepared.ok()) {
    ChildProcess::Options o;
    o.argv = {options_.trainer_path, "--spec", spec_path,
              "--rank", std::to_string(a.ref().rank()),
              "--world-size", std::to_string(a.world_size()),
              "--master", a.rendezvous_host() + ":" + std::to_string(a.rendezvous_port()),
              "--workdir", rank_dir};
    if (!a.artifact_path().empty()) {
      o.argv.push_back("--artifact");
      o.argv.push_back(a.artifact_path());
    }
    o.env = TrainerEnv(*rank, confinement ? rank_dir + "/tmp" : "");
    o.working_dir = rank_dir;
    if (confinement) o.landlock_ruleset_fd = confinement->fd();
    // No trainer starts once the agent shuts down (ternd was told to place
    // nothing more here).
    const bool shutting_down = ShuttingDown();
    std::lock_guard<std::mutex> lock(rank->mu);
    if (rank->kill_requested || shutting_down) {
      drained_before_start = !rank->kill_requested || rank->stop_signal == SIGUSR1;
      prepared = CancelledError("killed before it started (" +
                                (rank->kill_requested ? rank->kill_reason : "agent shutting down") +
                                ")");
    } else {
      StatusOr<std::unique_ptr<ChildProcess>> started = ChildProcess::Start(o);
      if (started.ok()) {
        child = std::move(started).value();
        rank->child = child.get();
      } else {
        prepared = started.status();
      }
    }
  }
  if (!prepared.ok()) {
    ExitStatus never;
    if (drained_before_start) {
      // As tern-trainer stops before its training loop: nothing to save.
      TERN_LOG(INFO) << rank->prefix << "drained before the trainer started";
      never.exit_code = trainer::kExitStopped;
    } else {
      TERN_LOG(ERROR) << rank->prefix << "cannot start trainer: " << prepared;
      never.exit_code = 127;  // as a shell reports a command it cannot run
    }
    exits_.WithLabels({std::to_string(never.exit_code)})->Increment();
    ReportExit(*rank, never, "cannot start trainer: " + prepared.ToString());
    FinishRank(rank);
    return;
  }

  trainer::TrainerEventParser parser(a.spec(), child->pid());
  LineReader out_reader, err_reader;
  std::deque<v1::TrainerEvent> pending;
  std::deque<std::string> tail;  // last stderr lines
  std::string failed_reason;     // from the trainer's `failed` event
  Clock::time_point flush_due = Clock::time_point::max();
  TrainerMetrics::Window metrics_window;  // the step-time interval
  std::optional<ExitStatus> ended;
  Clock::time_point drain_until = Clock::time_point::max();

  while (true) {
    const Clock::time_point now = Clock::now();
    // Flush batched events when due (or retry a failed flush).
    if (!pending.empty() && now >= flush_due) {
      flush_due = Flush(*rank, &pending) ? Clock::time_point::max()
                                          : Clock::now() + std::chrono::seconds(1);
    }
    {
      std::lock_guard<std::mutex> lock(rank->mu);
      if (rank->kill_requested && !rank->sigkill_sent && Clock::now() >= rank->sigkill_at) {
        TERN_LOG(WARNING) << rank->prefix << "trainer still runs after "
                          << SignalName(rank->stop_signal) << "; sending SIGKILL";
        child->SignalGroup(SIGKILL);
        rank->sigkill_sent = true;
      }
    }
    if (!ended) {
      ended = child->TryWait();
      if (ended) drain_until = Clock::now() + milliseconds(1000);  // for the last lines
    }
    const bool open = child->stdout_fd() >= 0 || child->stderr_fd() >= 0;
    if (ended && (!open || Clock::now() >= drain_until)) break;

    std::vector<pollfd> fds;
    if (child->stdout_fd() >= 0) fds.push_back({child->stdout_fd(), POLLIN, 0});
    if (child->stderr_fd() >= 0) fds.push_back({child->stderr_fd(), POLLIN, 0});
    int timeout_ms = 100;  // also how often the exit status is checked
    if (flush_due != Clock::time_point::max()) {
      const auto until_flush =
          std::chrono::duration_cast<milliseconds>(flush_due - Clock::now()).count();
      timeout_ms = static_cast<int>(std::clamp<int64_t>(until_flush, 0, timeout_ms));
    }
    if (fds.empty()) {
      std::this_thread::sleep_for(milliseconds(timeout_ms));
    } else if (::poll(fds.data(), fds.size(), timeout_ms) <= 0) {
      continue;
    }

    const google::protobuf::Timestamp read_time = TimeUtil::GetCurrentTime();
    std::vector<std::string> lines;
    if (child->stdout_fd() >= 0 && !out_reader.Read(child->stdout_fd(), &lines)) {
      child->CloseStdout();
    }
    for (std::string& line : lines) {
      trainer::ParsedLine p = parser.ParseStdoutLine(line, read_time);
      trainer_metrics_.Update(rank->job, rank->rank_label, p, &metrics_window);
      if (p.event.has_failed()) failed_reason = p.event.failed().code() + ": " + p.event.failed().message();
      // A checkpoint is sent at once too: ternd ignores reports of an attempt it
      // has moved past, and a drained job restarts as soon as any rank exits.
      const bool urgent = p.kind == "started" || p.kind == "finished" || p.kind == "failed" ||
                          p.kind == "checkpoint";
      pending.push_back(std::move(p.event));
      flush_due = std::min(flush_due, urgent ? Clock::now() : Clock::now() + options_.flush_interval);
    }
    lines.clear();
    if (child->stderr_fd() >= 0 && !err_reader.Read(child->stderr_fd(), &lines)) {
      child->CloseStderr();
    }
    for (std::string& line : lines) {
      if (options_.relay_logs) {
        pending.push_back(trainer::TrainerEventParser::LogEvent(a.ref().rank(), line, read_time));
        flush_due = std::min(flush_due, Clock::now() + options_.flush_interval);
      }
      tail.push_back(ToValidUtf8(line, trainer::kMaxLogLineBytes));
      while (static_cast<int>(tail.size()) > options_.stderr_tail_lines) tail.pop_front();
    }
    if (pending.size() >= kMaxEventsPerReport) flush_due = Clock::now();
  }
  child->CloseStdout();
  child->CloseStderr();

  // Events first (the `finished` event carries the result), then the exit;
  // both wait as long for ternd (restarting, or the agent rejoining it).
  const Clock::time_point give_up = Clock::now() + options_.exit_report_retry;
  while (!pending.empty() && !Flush(*rank, &pending)) {
    if (ShuttingDown() || Clock::now() >= give_up) {
      TERN_LOG(WARNING) << rank->prefix << "dropping " << pending.size() << " unsent events";
      break;
    }
    Sleep(milliseconds(500));
  }
  std::string reason;
  {
    std::lock_guard<std::mutex> lock(rank->mu);
    rank->child = nullptr;
    if (rank->kill_requested) reason = "killed by the agent: " + rank->kill_reason;
  }
  if (reason.empty() && !ended->ok()) {
    reason = !failed_reason.empty() ? failed_reason
             : !tail.empty()        ? tail.back()
                                    : "trainer ended with " + ended->ToString();
  }
  if (!ended->ok() && !tail.empty()) {
    // The stderr tail helps whoever reads the job's failure reason.
    std::string joined;
    for (const std::string& l : tail) joined += "\n" + l;
    reason += "\n--- last stderr lines ---" + ToValidUtf8(joined, 8192);
  }
  if (ended->ok()) {
    TERN_LOG(INFO) << rank->prefix << "trainer pid " << child->pid() << " finished";
  } else {
    TERN_LOG(WARNING) << rank->prefix << "trainer pid " << child->pid() << " ended with "
                      << ended->ToString();
  }
  exits_.WithLabels({ended->signal != 0 ? SignalName(ended->signal)
                                        : std::to_string(ended->exit_code)})
      ->Increment();
  ReportExit(*rank, *ended, reason);
  child.reset();
  FinishRank(rank);
}

void Agent::Impl::FinishRank(const std::shared_ptr<Rank>& rank) {
  trainer_metrics_.Remove(rank->job, rank->rank_label);
  {
    std::lock_guard<std::mutex> files(lease_files_mu_);
    if (rank->lease_file_ready) std::remove(rank->lease_file.c_str());
    rank->lease_file_ready = false;
  }
  std::lock_guard<std::mutex> lock(mu_);
  const RankKey key = KeyOf(rank->assignment.ref());
  if (rank->cuda_slot >= 0 && rank->cuda_slot < static_cast<int>(cuda_in_use_.size())) {
    bool shared = false;  // another rank may share an over-assigned GPU
    for (const auto& [k, r] : ranks_) shared |= (r != rank && r->cuda_slot == rank->cuda_slot);
    if (!shared) cuda_in_use_[rank->cuda_slot] = false;
  }
  ranks_.erase(key);
  running_->Set(static_cast<double>(ranks_.size()));
  auto it = rank_threads_.find(key);
  if (it != rank_threads_.end()) {
    finished_threads_.push_back(std::move(it->second));  // joined by Run or StartRank
    rank_threads_.erase(it);
  }
  cv_.notify_all();
}

Agent::Agent(AgentOptions options, std::shared_ptr<grpc::ChannelInterface> channel,
             metrics::Registry* registry)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(channel), registry)) {}
Agent::~Agent() = default;
Status Agent::Run() { return impl_->Run(); }
void Agent::Shutdown() { impl_->Shutdown(); }
void Agent::StopTrainersNow() { impl_->StopTrainersNow(); }
std::string Agent::lease_id() const { return impl_->lease_id(); }
int Agent::registrations() const { return impl_->registrations(); }
int Agent::running_trainers() const { return impl_->running_trainers(); }

}  // namespace tern::agent
