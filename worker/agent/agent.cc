#include "worker/agent/agent.h"

#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <tuple>
#include <vector>

#include "common/file_util.h"
#include "common/logging.h"
#include "common/utf8.h"
#include "failover/server_list.h"
#include "tern/v1/worker_service.grpc.pb.h"
#include "trainer_protocol/exit_codes.h"
#include "trainer_protocol/lease_file.h"
#include "worker/agent/agent_lease.h"
#include "worker/agent/child_process.h"
#include "worker/agent/event_outbox.h"
#include "worker/agent/trainer_launch.h"
#include "worker/agent/trainer_metrics.h"
#include "worker/agent/trainer_output.h"
#include "worker/agent/trainer_stopper.h"

namespace tern::agent {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using google::protobuf::util::TimeUtil;

constexpr const char* kAgentVersion = "tern-agent 0.1";
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

using RankKey = std::tuple<std::string, int, int>;  // job, attempt, rank
RankKey KeyOf(const v1::RankRef& r) { return {r.job_id(), r.attempt(), r.rank()}; }

}  // namespace

class Agent::Impl {
 public:
  Impl(AgentOptions options, std::shared_ptr<failover::ServerList> servers,
       metrics::Registry* registry)
      : options_(std::move(options)),
        servers_(std::move(servers)),
        registry_(registry),
        running_(
            registry
                ->AddGauge("tern_agent_trainers_running", "Trainer processes this agent runs now.")
                .WithLabels({})),
        exits_(registry->AddCounter("tern_agent_trainer_exits_total",
                                    "Trainer processes that ended, by exit code or signal name.",
                                    {"code"})),
        slots_(registry->AddGauge("tern_agent_slots", "Slots this agent offers, by device kind.",
                                  {"device_kind"})),
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
    for (size_t i = 0; i < servers_->size(); ++i) {
      stubs_.push_back(v1::WorkerService::NewStub(servers_->channel(i)));
    }
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
    return lease_.valid() ? lease_.id() : "";
  }
  int registrations() const {
    std::lock_guard<std::mutex> lock(mu_);
    return lease_.generation();
  }
  int running_trainers() const {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(ranks_.size());
  }

 private:
  // One trainer process and what the agent knows about it.
  struct Rank {
    Rank(const v1::Assignment& a, std::string log_prefix)
        : assignment(a),
          prefix(std::move(log_prefix)),
          job(a.ref().job_id()),
          rank_label(std::to_string(a.ref().rank())),
          stopper(prefix) {}
    const v1::Assignment assignment;
    const std::string prefix;  // "[job J attempt A rank r/W] "
    const std::string job, rank_label;
    int cuda_slot = -1;
    // The registration it runs under: the one it was assigned under, or a
    // later one that the agent re-registered with it listed as running.
    std::atomic<int> lease_generation{0};
    // The trainer's agent-lease file (TrainerLauncher::LeaseFile).
    std::string lease_file;
    // Guarded by lease_files_mu_: whether the rank directory exists (the
    // file can be written), and the newest deadline written.
    bool lease_file_ready = false;
    Clock::time_point lease_deadline;
    // Set by the rank's thread before ReportExit when the job's own spec kept
    // the trainer from starting (ReportExitRequest.failure_code).
    std::string failure_code;
    TrainerStopper stopper;  // kill orders, lost leases, shutdown
  };

  void Sleep(milliseconds d);  // wakes early on Shutdown
  bool ShuttingDown() const {
    std::lock_guard<std::mutex> lock(mu_);
    return shutdown_;
  }
  // False when it failed; *failover_wait: retry on another ternd after
  // this long instead of the agent's backoff.
  bool Register(std::optional<milliseconds>* failover_wait);
  void StreamOnce(milliseconds* backoff);
  void HeartbeatLoop();
  // A heartbeat of lease `generation` sent at `sent` got through: renews the
  // lease and its trainers' lease files, stops the trainers ternd does not
  // expect. Returns when the next heartbeat is due. Call without mu_.
  Clock::time_point HeartbeatAnswered(int generation, Clock::time_point sent,
                                      const v1::HeartbeatResponse& response);
  // Stops the trainers of the order's job (and attempt).
  void KillOrdered(const v1::KillOrder& order);
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
  // The rank's thread: waits for earlier attempts to exit, launches the
  // trainer, supervises it, reports its exit.
  void RunRank(std::shared_ptr<Rank> rank);
  void WaitForEarlierAttempts(const Rank& rank);
  // The started trainer, or why it did not start (*drained: stopped by a
  // drain before it started).
  StatusOr<std::unique_ptr<ChildProcess>> Launch(Rank& rank, bool* drained);
  // The trainer stops by itself past the lease's deadline unless renewals
  // move it (RenewLeaseFiles).
  Status WriteFirstLeaseFile(Rank& rank);
  // Relays the trainer's output until it exited and its pipes are drained
  // (or a second after its exit), sends what is left, reports the exit.
  void Supervise(Rank& rank, ChildProcess& child);
  void ReportNotStarted(Rank& rank, const Status& why, bool drained);
  void ReportEnded(Rank& rank, const ChildProcess& child, const ExitStatus& ended,
                   const TrainerOutput& output);
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
  // With several ternd (--server A,B) a call fails at once on one that is
  // down, so that the next one is tried (failover/server_list.h).
  void SetDeadline(grpc::ClientContext* ctx,
                   std::optional<milliseconds> limit = std::nullopt) const {
    milliseconds timeout = options_.rpc_timeout;
    if (limit) timeout = std::clamp(*limit, milliseconds(100), timeout);
    ctx->set_deadline(std::chrono::system_clock::now() + timeout);
    ctx->set_wait_for_ready(servers_->size() == 1);
  }
  // The ternd to call now (the leader, as far as the agent knows) and its stub.
  failover::ServerList::Target Target() const { return servers_->Current(); }
  v1::WorkerService::Stub* Stub(const failover::ServerList::Target& target) const {
    return stubs_[target.index].get();
  }
  // A call to `target` ended with `status`: on NOT_LEADER or an unreachable
  // ternd the next call goes to another one, after the returned wait
  // (nullopt: not such a failure).
  std::optional<milliseconds> Observe(const failover::ServerList::Target& target,
                                      const grpc::Status& status) {
    if (status.ok()) {
      servers_->OnSuccess(target);
      return std::nullopt;
    }
    const std::optional<milliseconds> wait = servers_->OnFailure(target, status);
    const failover::ServerList::Target now = servers_->Current();
    if (wait && now.index != target.index) {
      TERN_LOG(INFO) << "ternd " << servers_->address(target.index) << " answered "
                     << GrpcStatusString(status) << "; trying " << servers_->address(now.index);
    }
    return wait;
  }

  const AgentOptions options_;
  const std::shared_ptr<failover::ServerList> servers_;
  std::vector<std::unique_ptr<v1::WorkerService::Stub>> stubs_;  // one per address
  metrics::Registry* registry_;
  std::shared_ptr<metrics::Gauge> running_;
  metrics::Family<metrics::Counter>& exits_;
  metrics::Family<metrics::Gauge>& slots_;
  metrics::Family<metrics::Counter>& lease_losses_;
  metrics::Family<metrics::Counter>& rejoins_;
  TrainerMetrics trainer_metrics_;  // the per-rank tern_job_* series
  TrainerLauncher launcher_{&options_};

  std::mutex lease_files_mu_;  // serializes the agent-lease file writes
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool shutdown_ = false;
  // Heartbeats go on after Shutdown() until the trainers have stopped and
  // their exits are reported, so the lease outlives a drain.
  bool stop_heartbeats_ = false;
  AgentLease lease_;
  bool heartbeat_now_ = false;  // RequestHeartbeat() was called
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
  *id = lease_.id();
  *generation = lease_.generation();
  if (rejoining != nullptr) *rejoining = !lease_.valid() && lease_.rejoining();
  return lease_.valid();
}

bool Agent::Impl::MustStopTrainersBeforeRegistering() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!lease_.rejoining()) return true;
  if (Clock::now() - lease_.last_renewed() <= lease_.ttl()) return false;
  lease_.StopRejoining();
  rejoins_.WithLabels({"timed_out"})->Increment();
  TERN_LOG(WARNING) << "no new lease within the lease TTL (" << lease_.ttl().count()
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
      std::optional<milliseconds> failover_wait;
      if (!Register(&failover_wait)) {
        if (failover_wait) {  // another ternd leads: no growing backoff
          Sleep(*failover_wait);
          continue;
        }
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

bool Agent::Impl::Register(std::optional<milliseconds>* failover_wait) {
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
    if (lease_.rejoining()) {
      for (const auto& [key, rank] : ranks_) *request.add_running() = rank->assignment.ref();
      limit = lease_.TimeLeft();
    }
  }
  grpc::ClientContext ctx;
  SetDeadline(&ctx, limit);
  v1::RegisterResponse response;
  const failover::ServerList::Target target = Target();
  const grpc::Status status = Stub(target)->Register(&ctx, request, &response);
  *failover_wait = Observe(target, status);
  if (!status.ok()) {
    TERN_LOG(WARNING) << "Register: " << GrpcStatusString(status);
    return false;
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (lease_.Registered(response, Clock::now())) {
    // The kept trainers run under the new lease; those the server does not
    // expect get kill orders on the stream. A rank that started after the
    // request was built cannot exist (no lease, no assignments).
    for (auto& [key, rank] : ranks_) rank->lease_generation = lease_.generation();
    TERN_LOG(INFO) << "rejoined with " << request.running_size() << " running trainer(s)";
    rejoins_.WithLabels({"kept"})->Increment();
  }
  cv_.notify_all();  // the heartbeat loop starts counting from now
  TERN_LOG(INFO) << "registered as " << options_.agent_id << " (lease " << lease_.id() << ", ttl "
                 << lease_.ttl().count() << " ms, " << options_.cpu_slots << " cpu + "
                 << options_.cuda_slots << " cuda slots)";
  const std::vector<std::shared_ptr<Rank>> kept = RanksOfLeaseLocked(lease_.generation());
  const Clock::time_point deadline = lease_.deadline();
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
  const failover::ServerList::Target target = Target();
  grpc::Status status = (Stub(target)->*rpc)(&ctx, request, &response);
  // Refused by a standby: once more, on the ternd it named.
  if (const std::optional<milliseconds> wait = Observe(target, status);
      wait && *wait < kShutdownCallLimit) {
    Sleep(*wait);
    grpc::ClientContext again;
    SetDeadline(&again, kShutdownCallLimit);
    const failover::ServerList::Target next = Target();
    status = (Stub(next)->*rpc)(&again, request, &response);
    (void)Observe(next, status);
  }
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
  lease_.End();
  TERN_LOG(INFO) << "deregistered (lease " << lease_.id() << " ended)";
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
  if (!lease_.Lose(generation, keep_trainers)) return;
  lease_losses_.WithLabels({keep_trainers ? "unknown_to_server" : "not_renewed"})->Increment();
  if (keep_trainers) {
    TERN_LOG(WARNING) << "lease " << lease_.id() << " lost (" << why << "): registering again with "
                      << ranks_.size() << " running trainer(s)";
  } else {
    TERN_LOG(WARNING) << "lease " << lease_.id() << " lost (" << why
                      << "): stopping trainers, registering again";
  }
  if (stream_ctx_) stream_ctx_->TryCancel();
  cv_.notify_all();
}

void Agent::Impl::StreamOnce(milliseconds* backoff) {
  grpc::ClientContext ctx;  // no deadline: lives as long as the lease
  ctx.set_wait_for_ready(servers_->size() == 1);
  std::string lease;
  int generation = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_ || !lease_.valid()) return;
    lease = lease_.id();
    generation = lease_.generation();
    stream_ctx_ = &ctx;
  }
  v1::StreamAssignmentsRequest request;
  request.set_agent_id(options_.agent_id);
  request.set_lease_id(lease);
  const failover::ServerList::Target target = Target();
  std::unique_ptr<grpc::ClientReader<v1::AssignmentEvent>> reader =
      Stub(target)->StreamAssignments(&ctx, request);
  v1::AssignmentEvent event;
  bool any = false;
  while (reader->Read(&event)) {
    if (!any) servers_->OnSuccess(target);
    any = true;
    *backoff = options_.backoff_min;  // the stream works
    if (event.has_assignment()) {
      StartRank(event.assignment());
    } else if (event.has_kill()) {
      KillOrdered(event.kill());
    }
  }
  const grpc::Status status = reader->Finish();
  const std::optional<milliseconds> failover_wait = Observe(target, status);
  bool retry_later = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stream_ctx_ = nullptr;
    retry_later = !shutdown_ && lease_.valid() && generation == lease_.generation();
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
    // Another ternd leads: reconnect there without a growing backoff.
    cv_.wait_for(lock, failover_wait ? *failover_wait : *backoff,
                 [&] { return shutdown_ || !lease_.valid() || generation != lease_.generation(); });
    if (!failover_wait) *backoff = std::min(*backoff * 2, options_.backoff_max);
  }
}

void Agent::Impl::KillOrdered(const v1::KillOrder& k) {
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

void Agent::Impl::HeartbeatLoop() {
  int failures = 0;
  int generation = 0;  // of the lease the loop renews
  Clock::time_point next = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_heartbeats_) {
    if (!lease_.valid()) {
      cv_.wait(lock, [&] { return stop_heartbeats_ || lease_.valid(); });
      continue;
    }
    if (generation != lease_.generation()) {  // a new registration
      generation = lease_.generation();
      next = lease_.last_renewed() + lease_.heartbeat_interval();
      failures = 0;
    }
    // Awake at the lease deadline too: without a renewal by then the
    // trainers are stopped at once, at the deadline their lease files name
    // (which ternd's expiry never precedes), not at the end of the next
    // failed heartbeat (up to a second later, after ternd may have started
    // their ranks elsewhere).
    const Clock::time_point expiry = lease_.deadline();
    cv_.wait_until(lock, std::min(next, expiry), [&] {
      return stop_heartbeats_ || !lease_.valid() || generation != lease_.generation() ||
             heartbeat_now_;
    });
    if (stop_heartbeats_ || !lease_.valid() || generation != lease_.generation()) continue;
    if (Clock::now() >= lease_.deadline()) {
      lock.unlock();
      LeaseLost(generation, "not renewed within the lease TTL", false);
      lock.lock();
      continue;
    }
    if (!heartbeat_now_ && Clock::now() < next) continue;
    heartbeat_now_ = false;
    v1::HeartbeatRequest request;
    request.set_agent_id(options_.agent_id);
    request.set_lease_id(lease_.id());
    for (const auto& [key, rank] : ranks_) {
      if (rank->lease_generation == generation) *request.add_running() = rank->assignment.ref();
    }
    const Clock::time_point sent = Clock::now();
    const milliseconds left = lease_.TimeLeft();
    lock.unlock();
    grpc::ClientContext ctx;
    SetDeadline(&ctx, left);
    v1::HeartbeatResponse response;
    const failover::ServerList::Target target = Target();
    const grpc::Status status = Stub(target)->Heartbeat(&ctx, request, &response);
    const std::optional<milliseconds> failover_wait = Observe(target, status);
    if (IsLeaseError(status)) {
      LeaseLost(generation, "Heartbeat: " + GrpcStatusString(status), true);
      lock.lock();
      continue;
    }
    if (status.ok()) {
      failures = 0;
      next = HeartbeatAnswered(generation, sent, response);
      lock.lock();
      continue;
    }
    ++failures;
    TERN_LOG(WARNING) << "Heartbeat: " << GrpcStatusString(status);
    lock.lock();
    next = Clock::now() + (failover_wait ? *failover_wait
                                         : std::min<milliseconds>(lease_.heartbeat_interval(),
                                                                  milliseconds(1000)));
    if (generation != lease_.generation()) continue;
    if (Clock::now() - lease_.last_renewed() > lease_.ttl()) {
      lock.unlock();
      LeaseLost(generation, "not renewed within the lease TTL", false);
      lock.lock();
    } else if (failures >= 2 && stream_ctx_) {
      stream_ctx_->TryCancel();  // the connection may be dead: reconnect the stream too
    }
  }
}

Clock::time_point Agent::Impl::HeartbeatAnswered(int generation, Clock::time_point sent,
                                                 const v1::HeartbeatResponse& response) {
  std::vector<std::shared_ptr<Rank>> renewed, unexpected;
  Clock::time_point deadline, next;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (generation == lease_.generation()) {
      lease_.Renewed(response, sent);
      renewed = RanksOfLeaseLocked(generation);
    }
    deadline = sent + lease_.ttl();
    next = sent + lease_.heartbeat_interval();
    for (const v1::RankRef& ref : response.unexpected()) {
      auto it = ranks_.find(KeyOf(ref));
      if (it != ranks_.end()) unexpected.push_back(it->second);
    }
  }
  RenewLeaseFiles(renewed, deadline);
  for (auto& r : unexpected) Kill(*r, options_.kill_grace, "not expected by the server");
  return next;
}

void Agent::Impl::StartRank(const v1::Assignment& a) {
  const RankKey key = KeyOf(a.ref());
  auto rank = std::make_shared<Rank>(
      a, "[job " + a.ref().job_id() + " attempt " + std::to_string(a.ref().attempt()) + " rank " +
             std::to_string(a.ref().rank()) + "/" + std::to_string(a.world_size()) + "] ");
  rank->lease_file = launcher_.LeaseFile(a.ref());
  std::unique_lock<std::mutex> lock(mu_);
  if (shutdown_ || !lease_.valid()) return;
  if (ranks_.count(key)) {
    TERN_LOG(DEBUG) << rank->prefix << "already running; repeat assignment ignored";
    return;
  }
  rank->lease_generation = lease_.generation();
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
  rank.stopper.Request(signal, grace, reason);
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
    const failover::ServerList::Target target = Target();
    const grpc::Status status = Stub(target)->ReportProgress(&ctx, request, &response);
    (void)Observe(target, status);
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
  const bool killed = rank.stopper.requested();
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
      const failover::ServerList::Target target = Target();
      const grpc::Status status = Stub(target)->ReportExit(&ctx, request, &response);
      (void)Observe(target, status);
      if (status.ok()) return;
      if (IsLeaseError(status)) {
        // The lease this report named is gone. Not the report: when the agent
        // rejoins with this rank still listed, the server keeps the rank
        // running under the new lease and learns of its exit only from here
        // (a dropped report left such a job RUNNING forever). The loop's
        // checks above end it when the rank was written off instead.
        TERN_LOG(WARNING) << rank.prefix << "ReportExit: " << GrpcStatusString(status)
                          << "; again once the lease is settled";
        RequestHeartbeat();  // it decides whether the lease is lost
      } else {
        TERN_LOG(WARNING) << rank.prefix << "ReportExit: " << GrpcStatusString(status);
        if (status.error_code() != grpc::StatusCode::UNAVAILABLE &&
            status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
          return;
        }
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
  WaitForEarlierAttempts(*rank);
  bool drained = false;
  StatusOr<std::unique_ptr<ChildProcess>> child = Launch(*rank, &drained);
  if (child.ok()) {
    Supervise(*rank, **child);
    child->reset();
  } else {
    ReportNotStarted(*rank, child.status(), drained);
  }
  FinishRank(rank);
}

void Agent::Impl::WaitForEarlierAttempts(const Rank& rank) {
  // Earlier attempts of the job still here were told to stop (StartRank).
  std::unique_lock<std::mutex> lock(mu_);
  const bool gone = cv_.wait_for(lock, options_.kill_grace + options_.shutdown_grace, [&] {
    return shutdown_ || EarlierAttemptsLocked(rank.job, rank.assignment.ref().attempt()).empty();
  });
  if (!gone) {
    TERN_LOG(WARNING) << rank.prefix << "an earlier attempt's trainer is still running";
  }
}

StatusOr<std::unique_ptr<ChildProcess>> Agent::Impl::Launch(Rank& rank, bool* drained) {
  TERN_ASSIGN_OR_RETURN(const LaunchPlan plan, launcher_.Plan(rank.assignment, rank.cuda_slot,
                                                              rank.prefix, &rank.failure_code));
  TERN_RETURN_IF_ERROR(WriteFirstLeaseFile(rank));
  // No trainer starts once the agent shuts down (ternd was told to place
  // nothing more here).
  return rank.stopper.Start(plan.process, ShuttingDown(), drained);
}

Status Agent::Impl::WriteFirstLeaseFile(Rank& rank) {
  Clock::time_point deadline;
  {
    std::lock_guard<std::mutex> lock(mu_);
    deadline = lease_.deadline();
  }
  std::lock_guard<std::mutex> files(lease_files_mu_);
  const Status written =
      WriteFileAtomically(rank.lease_file, trainer::FormatLeaseDeadline(deadline));
  rank.lease_file_ready = written.ok();
  rank.lease_deadline = deadline;
  return written;
}

void Agent::Impl::Supervise(Rank& rank, ChildProcess& child) {
  const v1::Assignment& a = rank.assignment;
  TrainerOutput output(
      a.spec(), child.pid(),
      {a.ref().rank(), options_.relay_logs, options_.stderr_tail_lines, options_.flush_interval},
      &trainer_metrics_, rank.job, rank.rank_label);
  // Sent by the outbox's thread: a call to an unreachable ternd must not
  // delay reaping the trainer or escalating its stop (event_outbox.h).
  EventOutbox outbox(
      [this, &rank](std::deque<v1::TrainerEvent>* events) { return Flush(rank, events); },
      std::chrono::seconds(1));
  std::optional<ExitStatus> ended;
  Clock::time_point drain_until = Clock::time_point::max();
  while (true) {
    rank.stopper.EscalateIfDue();
    if (!ended) {
      ended = child.TryWait();
      if (ended) drain_until = Clock::now() + milliseconds(1000);  // for the last lines
    }
    const bool open = child.stdout_fd() >= 0 || child.stderr_fd() >= 0;
    if (ended && (!open || Clock::now() >= drain_until)) break;
    // The timeout is also how often the exit status is checked.
    if (!output.Poll(child, milliseconds(100))) continue;
    std::deque<v1::TrainerEvent> read;
    const Clock::time_point due = output.Read(child, &read);
    outbox.Add(&read, due);
  }
  child.CloseStdout();
  child.CloseStderr();

  // Events first (the `finished` event carries the result), then the exit;
  // both wait as long for ternd (restarting, or the agent rejoining it).
  if (const size_t dropped = outbox.Close(Clock::now() + options_.exit_report_retry,
                                          [this] { return ShuttingDown(); })) {
    TERN_LOG(WARNING) << rank.prefix << "dropping " << dropped << " unsent events";
  }
  rank.stopper.Detach();
  ReportEnded(rank, child, *ended, output);
}

void Agent::Impl::ReportNotStarted(Rank& rank, const Status& why, bool drained) {
  ExitStatus never;
  if (drained) {
    // As tern-trainer stops before its training loop: nothing to save.
    TERN_LOG(INFO) << rank.prefix << "drained before the trainer started";
    never.exit_code = trainer::kExitStopped;
  } else {
    TERN_LOG(ERROR) << rank.prefix << "cannot start trainer: " << why;
    never.exit_code = 127;  // as a shell reports a command it cannot run
  }
  exits_.WithLabels({std::to_string(never.exit_code)})->Increment();
  ReportExit(rank, never, "cannot start trainer: " + why.ToString());
}

void Agent::Impl::ReportEnded(Rank& rank, const ChildProcess& child, const ExitStatus& ended,
                              const TrainerOutput& output) {
  std::string reason;
  if (rank.stopper.requested()) reason = "killed by the agent: " + rank.stopper.reason();
  const std::deque<std::string>& tail = output.stderr_tail();
  if (reason.empty() && !ended.ok()) {
    reason = !output.failed_reason().empty() ? output.failed_reason()
             : !tail.empty()                 ? tail.back()
                                             : "trainer ended with " + ended.ToString();
  }
  if (!ended.ok() && !tail.empty()) {
    // The stderr tail helps whoever reads the job's failure reason.
    std::string joined;
    for (const std::string& l : tail) joined += "\n" + l;
    reason += "\n--- last stderr lines ---" + ToValidUtf8(joined, 8192);
  }
  if (ended.ok()) {
    TERN_LOG(INFO) << rank.prefix << "trainer pid " << child.pid() << " finished";
  } else {
    TERN_LOG(WARNING) << rank.prefix << "trainer pid " << child.pid() << " ended with "
                      << ended.ToString();
  }
  exits_
      .WithLabels({ended.signal != 0 ? SignalName(ended.signal) : std::to_string(ended.exit_code)})
      ->Increment();
  ReportExit(rank, ended, reason);
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
    : Agent(std::move(options), failover::ServerList::Single("ternd", std::move(channel)),
            registry) {}

Agent::Agent(AgentOptions options, std::shared_ptr<failover::ServerList> servers,
             metrics::Registry* registry)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(servers), registry)) {}
Agent::~Agent() = default;
Status Agent::Run() { return impl_->Run(); }
void Agent::Shutdown() { impl_->Shutdown(); }
void Agent::StopTrainersNow() { impl_->StopTrainersNow(); }
std::string Agent::lease_id() const { return impl_->lease_id(); }
int Agent::registrations() const { return impl_->registrations(); }
int Agent::running_trainers() const { return impl_->running_trainers(); }

}  // namespace tern::agent
