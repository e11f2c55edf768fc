#include "scheduler/scheduler.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <iterator>
#include <tuple>
#include <utility>

#include "common/error_reasons.h"
#include "common/logging.h"
#include "common/utf8.h"

namespace tern::scheduler {
namespace {

using std::chrono::milliseconds;

constexpr char kPageTokenPrefix[] = "after:";
constexpr char kNewestFirstPageTokenPrefix[] = "before:";
constexpr int kMaxRestartsLimit = 1000;
constexpr int kDefaultEventBatch = 100;
constexpr int kMaxEventBatch = 1000;
// Queue keys count aging from here (FakeClock's default start, so that tests'
// whole minutes stay exact in a double).
const TimePoint kAgingEpoch{std::chrono::seconds(1704067200)};

std::string SlotCount(int n, const std::string& kind) {
  return std::to_string(n) + " " + kind + (n == 1 ? " slot" : " slots");
}

// "alice's quota" or "the default quota (*)", for wait reasons and errors.
std::string QuotaName(const OwnerQuota& quota) {
  return quota.line_owner == kDefaultQuotaOwner ? "the default quota (*)"
                                                : quota.line_owner + "'s quota";
}

std::string Seconds(TimePoint::duration d) {
  auto s = std::chrono::duration_cast<std::chrono::seconds>(d).count();
  return std::to_string(s) + "s";
}

// "ranks 0-1 on a, rank 2 on b": ranks are placed in contiguous runs.
std::string DescribePlacement(const std::vector<RankPlacement>& ranks,
                              const std::string* only_agent = nullptr) {
  std::string out;
  size_t i = 0;
  while (i < ranks.size()) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1].agent_id == ranks[i].agent_id) {
      ++j;
    }
    if (only_agent == nullptr || *only_agent == ranks[i].agent_id) {
      if (!out.empty()) out += ", ";
      out += i == j ? "rank " + std::to_string(ranks[i].rank)
                    : "ranks " + std::to_string(ranks[i].rank) + "-" +
                          std::to_string(ranks[j].rank);
      out += " on " + ranks[i].agent_id;
    }
    i = j + 1;
  }
  return out;
}

// `free_of`: the reason of a restart that uses none of the budget, or null.
std::string RequeueMessage(const Job& job, const char* free_of = nullptr) {
  std::string out =
      free_of != nullptr
          ? std::string("no restart used (") + free_of + "; " +
                std::to_string(job.restarts_used) + " of " + std::to_string(job.max_restarts) +
                " used so far), resuming from "
          : "restart " + std::to_string(job.restarts_used) + " of " +
                std::to_string(job.max_restarts) + ", resuming from ";
  out += job.last_checkpoint_step
             ? "step " + std::to_string(*job.last_checkpoint_step)
             : "the start (no committed checkpoint)";
  return out;
}

bool AnyRankRunning(const Job& job) {
  return std::any_of(job.ranks.begin(), job.ranks.end(),
                     [](const RankPlacement& r) { return r.state == RankState::kRunning; });
}

// Whether a rank of the attempt may still run: started, or assigned and not
// yet reported.
bool AnyRankUnfinished(const Job& job) {
  return std::any_of(job.ranks.begin(), job.ranks.end(), [](const RankPlacement& r) {
    return r.state == RankState::kAssigned || r.state == RankState::kRunning;
  });
}

// Whether `r`'s slot is held: every rank's while ADMITTED or RUNNING, only the
// running ranks' while CANCELLING (those it waits for).
bool RankHoldsSlot(const Job& job, const RankPlacement& r) {
  return HoldsSlots(job.state) &&
         (job.state != JobState::kCancelling || r.state == RankState::kRunning);
}

int SlotsHeldBy(const Job& job) {
  return static_cast<int>(
      std::count_if(job.ranks.begin(), job.ranks.end(),
                    [&](const RankPlacement& r) { return RankHoldsSlot(job, r); }));
}

// CANCELLING -> CANCELLED once no rank runs, with the caller's message of the
// change to CANCELLING.
Status FinishCancelIfStopped(Job* job, std::vector<JobEvent>* events, TimePoint now) {
  if (job->state != JobState::kCancelling || AnyRankRunning(*job)) return OkStatus();
  std::string message = "cancelled";
  for (auto it = job->history.rbegin(); it != job->history.rend(); ++it) {
    if (it->to == JobState::kCancelling) {
      message = it->message;
      break;
    }
  }
  return TransitionJob(job, JobState::kCancelled, reason::kCancelledByUser, std::move(message), now,
                       events);
}

// Job::last_failure for rank `r` of `job`'s current attempt; `exit_code` as
// RankExit::exit_code (< 0: -signal).
RankFailure FailureOf(const Job& job, const RankPlacement& r, int exit_code,
                      std::string trainer_code, const char* why, std::string message,
                      TimePoint now) {
  RankFailure f;
  f.attempt = job.attempt;
  f.rank = r.rank;
  f.agent_id = r.agent_id;
  f.exit_code = exit_code > 0 ? exit_code : 0;
  f.signal = exit_code < 0 ? -exit_code : 0;
  f.trainer_code = std::move(trainer_code);
  f.reason = why;
  f.message = std::move(message);
  f.time = now;
  return f;
}

// ADMITTED -> RUNNING once no rank waits to start; RUNNING -> SUCCEEDED once
// every rank exited 0.
Status AdvanceJob(Job* job, std::vector<JobEvent>* events, TimePoint now) {
  auto all = [&](auto pred) {
    return std::all_of(job->ranks.begin(), job->ranks.end(), pred);
  };
  if (job->state == JobState::kAdmitted && all([](const RankPlacement& r) {
        return r.state != RankState::kAssigned;
      })) {
    TERN_RETURN_IF_ERROR(TransitionJob(
        job, JobState::kRunning, reason::kAllRanksStarted,
        "all " + std::to_string(job->world_size) + " ranks started", now,
        events));
  }
  if (job->state == JobState::kRunning && all([](const RankPlacement& r) {
        return r.state == RankState::kSucceeded;
      })) {
    std::string message =
        "all " + std::to_string(job->world_size) + " ranks exited 0";
    if (!job->artifact_path.empty())
      message += "; artifact " + job->artifact_path;
    TERN_RETURN_IF_ERROR(TransitionJob(job, JobState::kSucceeded,
                                       reason::kAllRanksSucceeded,
                                       std::move(message), now, events));
  }
  return OkStatus();
}

Status ValidateJobRequest(const JobRequest& r, int max_world_size) {
  if (r.owner.empty()) return InvalidArgumentError("owner: required");
  for (const auto& [key, value] : r.labels) {
    if (key.empty() || key.find('=') != std::string::npos) {
      return InvalidArgumentError("labels: key " + Quoted(key) +
                                  " must be non-empty and without '='");
    }
  }
  if (r.world_size < 1 || r.world_size > max_world_size) {
    return InvalidArgumentError("world_size: must be in [1, " +
                                std::to_string(max_world_size) + "], got " +
                                std::to_string(r.world_size));
  }
  if (!IsKnownDeviceKind(r.device_kind)) {
    return InvalidArgumentError(
        "device_kind: must be \"cpu\" or \"cuda\", got " + Quoted(r.device_kind));
  }
  if (r.max_restarts < 0 || r.max_restarts > kMaxRestartsLimit) {
    return InvalidArgumentError("max_restarts: must be in [0, " +
                                std::to_string(kMaxRestartsLimit) + "], got " +
                                std::to_string(r.max_restarts));
  }
  return ValidateIdempotencyKey(r.idempotency_key);
}

StatusOr<JobId> ParsePageToken(const std::string& token, bool newest_first) {
  if (token.empty()) return JobId{0};
  const std::string_view prefix(newest_first ? kNewestFirstPageTokenPrefix
                                             : kPageTokenPrefix);
  JobId id = 0;
  if (token.compare(0, prefix.size(), prefix) == 0) {
    const char* begin = token.data() + prefix.size();
    const char* end = token.data() + token.size();
    auto [ptr, ec] = std::from_chars(begin, end, id);
    if (ec == std::errc() && ptr == end && begin != end && id >= 0) return id;
  }
  return InvalidArgumentError("page_token: not a token this server issued")
      .WithReason(error_reason::kPageTokenInvalid)
      .WithFieldViolation("page_token", "not a token this server issued");
}

bool Matches(const Job& job, const ListJobsQuery& q) {
  if (!q.states.empty() && q.states.count(job.state) == 0) return false;
  if (!q.owner.empty() && job.owner != q.owner) return false;
  for (const auto& [key, value] : q.labels) {
    auto it = job.labels.find(key);
    if (it == job.labels.end() || it->second != value) return false;
  }
  return true;
}

}  // namespace

Status ValidateIdempotencyKey(std::string_view key) {
  if (key.empty()) return OkStatus();
  const bool printable =
      std::all_of(key.begin(), key.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
  if (key.size() > kMaxIdempotencyKeyLength || !printable) {
    const std::string rule =
        "must be 1.." + std::to_string(kMaxIdempotencyKeyLength) + " printable ASCII characters";
    return InvalidArgumentError("idempotency_key: " + rule)
        .WithReason(error_reason::kIdempotencyKeyInvalid)
        .WithFieldViolation("idempotency_key", rule);
  }
  return OkStatus();
}

struct Scheduler::Agent {
  std::string id;
  std::string host;
  std::map<std::string, int> slots;  // capacity by device kind, as registered
  std::map<std::string, int> used;   // held by ADMITTED/RUNNING jobs
  // Ranks told to stop (of a job that restarted or ended, or that the
  // scheduler no longer expects) and not yet seen to exit, by (job, attempt,
  // rank), with their device kind. Their trainers still run in their slots
  // (a SIGTERM grace, a last checkpoint), so those slots are not handed to
  // another job until the exit report, a heartbeat or registration that no
  // longer lists the rank, or the agent's loss.
  std::map<std::tuple<JobId, int, int>, std::string> stopping;
  std::set<int> ports;  // rendezvous ports of jobs whose rank 0 is here
  // Ports found taken by another process here, and until when they are not
  // handed out (SchedulerOptions::port_quarantine).
  std::map<int, TimePoint> quarantined_ports;
  int next_port = 0;  // where the search for a free port starts (0: min)
  TimePoint lease_expires;
  // Registered and not lost. false: restored from the store after a ternd
  // restart, no capacity until the agent re-registers within its lease.
  bool live = false;
  // Shutting down (DrainAgent): live, but no capacity for new work.
  bool draining = false;
  AgentWork outbox;

  // Slots of `kind` not free: held by jobs or by stopping ranks.
  int Taken(const std::string& kind) const {
    auto held = used.find(kind);
    int n = held == used.end() ? 0 : held->second;
    for (const auto& [key, k] : stopping) n += k == kind ? 1 : 0;
    return n;
  }
};

struct Scheduler::Batch {
  Batch() { writes.reserve(32); }  // most batches: no reallocation of Job copies

  std::vector<JobWrite> writes;
  std::vector<std::function<void()>> effects;  // run under mu_ once committed
  bool events = false;                         // some write appends events (WaitForEvents)
  Status status;                               // set (under mu_) before `done`
  // Its callers wait on `resolved` under `done_mu`, not under mu_: a commit
  // wakes only the calls it answers, and they leave without queueing for
  // mu_ behind the writer and new calls.
  std::mutex done_mu;
  std::condition_variable resolved;
  bool done = false;  // committed or failed; `status` says which. Written
                      // under mu_ and done_mu: read under either.

  // Marks the batch resolved and wakes its callers (with mu_ held).
  void Resolve() {
    {
      std::lock_guard<std::mutex> l(done_mu);
      done = true;
    }
    resolved.notify_all();
  }
  // Waits until resolved, with mu_ released (`lock` is left unlocked).
  void AwaitUnlocked(std::unique_lock<std::mutex>& lock) {
    lock.unlock();
    std::unique_lock<std::mutex> l(done_mu);
    resolved.wait(l, [&] { return done; });
  }
  // Waits until resolved; returns with `lock` (on mu_) held again.
  void Await(std::unique_lock<std::mutex>& lock) {
    if (done) return;
    AwaitUnlocked(lock);
    lock.lock();
  }
};

bool Scheduler::QueueKey::operator<(const QueueKey& other) const {
  if (rank != other.rank) return rank > other.rank;
  if (submit_time != other.submit_time) return submit_time < other.submit_time;
  return id < other.id;
}

const char* CommitModeName(CommitMode mode) {
  return mode == CommitMode::kGroup ? "group" : "per-call";
}

StatusOr<CommitMode> ParseCommitMode(std::string_view name) {
  if (name == "group") return CommitMode::kGroup;
  if (name == "per-call") return CommitMode::kPerCall;
  return InvalidArgumentError("commit mode: want \"group\" or \"per-call\", got " +
                              Quoted(std::string(name)));
}

struct Scheduler::Placement {
  std::vector<std::string> agent_of_rank;
  std::string host;
  int port = 0;
};

Status SchedulerOptions::Validate() const {
  if (!(aging_per_minute >= 0) || !std::isfinite(aging_per_minute)) {
    return InvalidArgumentError("aging_per_minute: must be finite and >= 0");
  }
  if (backfill_window.count() < 0) {
    return InvalidArgumentError("backfill_window: must be >= 0");
  }
  if (agent_lease_ttl.count() <= 0) {
    return InvalidArgumentError("agent_lease_ttl: must be > 0");
  }
  if (restart_backoff.count() < 0 || max_restart_backoff < restart_backoff) {
    return InvalidArgumentError(
        "restart_backoff: must be >= 0 and <= max_restart_backoff");
  }
  if (collective_failure_grace.count() < 0) {
    return InvalidArgumentError("collective_failure_grace: must be >= 0");
  }
  if (rendezvous_port_min < 1 || rendezvous_port_max > 65535 ||
      rendezvous_port_min > rendezvous_port_max) {
    return InvalidArgumentError(
        "rendezvous_port_min/max: need 1 <= min <= max <= 65535");
  }
  if (port_quarantine.count() < 0) {
    return InvalidArgumentError("port_quarantine: must be >= 0");
  }
  if (max_world_size < 1) {
    return InvalidArgumentError("max_world_size: must be >= 1");
  }
  if (default_page_size < 1 || max_page_size < default_page_size) {
    return InvalidArgumentError(
        "default_page_size: need 1 <= default_page_size <= max_page_size");
  }
  return OkStatus();
}

Scheduler::Scheduler(SchedulerOptions options, std::unique_ptr<JobStore> store,
                     std::shared_ptr<Clock> clock)
    : options_(std::move(options)),
      store_(std::move(store)),
      clock_(std::move(clock)) {}

Scheduler::~Scheduler() {
  if (writer_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    writer_wake_.notify_all();
    writer_.join();  // commits what is queued first
  }
}

StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(
    SchedulerOptions options, std::unique_ptr<JobStore> store,
    std::shared_ptr<Clock> clock) {
  TERN_RETURN_IF_ERROR(options.Validate());
  if (store == nullptr) return InvalidArgumentError("store: required");
  if (clock == nullptr) clock = std::make_shared<SystemClock>();
  std::unique_ptr<Scheduler> scheduler(
      new Scheduler(std::move(options), std::move(store), std::move(clock)));
  {
    std::lock_guard<std::mutex> lock(scheduler->mu_);
    TERN_RETURN_IF_ERROR(scheduler->LoadLocked());
  }
  if (scheduler->options_.commit_mode == CommitMode::kGroup) {
    Scheduler* raw = scheduler.get();
    raw->open_ = std::make_shared<Batch>();
    raw->writer_ = std::thread([raw] { raw->WriterLoop(); });
  }
  return StatusOr<std::unique_ptr<Scheduler>>(std::move(scheduler));
}

Status Scheduler::LoadLocked() {
  TERN_ASSIGN_OR_RETURN(std::vector<Job> jobs, store_->LoadJobs());
  // Above every id ever issued, deleted jobs' included.
  TERN_ASSIGN_OR_RETURN(const JobId highest, store_->HighestJobIdEver());
  next_id_ = std::max(next_id_, highest + 1);
  const TimePoint now = clock_->Now();
  TERN_RETURN_IF_ERROR(ApplyLoadedLocked(std::move(jobs), now + options_.agent_lease_ttl));
  TERN_LOG(INFO) << "scheduler: loaded " << jobs_.size() << " jobs (" << queued_.size()
                 << " queued, " << holding_.size() << " admitted or running); waiting for "
                 << agents_.size() << " agents to re-register";
  return OkStatus();
}

Status Scheduler::ApplyLoadedLocked(std::vector<Job> jobs, TimePoint lease_until) {
  for (Job& job : jobs) {
    const std::string where = "job store: job " + std::to_string(job.id);
    for (size_t i = 0; i < job.ranks.size(); ++i) {
      if (job.ranks[i].rank != static_cast<int>(i)) {
        return DataLossError(where + ": ranks are not 0..n-1");
      }
    }
    if (HoldsSlots(job.state)) {
      if (static_cast<int>(job.ranks.size()) != job.world_size) {
        return DataLossError(where + ": " + JobStateName(job.state) + " with " +
                             std::to_string(job.ranks.size()) + " of " +
                             std::to_string(job.world_size) + " ranks placed");
      }
      // The agents will re-register; until then they have no capacity.
      for (const RankPlacement& r : job.ranks) {
        std::unique_ptr<Agent>& agent = agents_[r.agent_id];
        if (agent == nullptr) {
          agent = std::make_unique<Agent>();
          agent->id = r.agent_id;
          agent->lease_expires = lease_until;
        }
      }
    }
    next_id_ = std::max(next_id_, job.id + 1);
    if (!job.idempotency_key.empty()) {
      by_idempotency_key_[{job.owner, job.idempotency_key}] = job.id;
    }
    ApplyLocked(std::move(job));
  }
  return OkStatus();
}

// --- Bookkeeping -----------------------------------------------------------

Status Scheduler::CommitLocked(Job job, std::vector<JobEvent> events, bool create) {
  if (open_ == nullptr) {  // per-call
    TERN_RETURN_IF_ERROR(create ? store_->CreateJob(job, events) : store_->UpdateJob(job, events));
    if (!events.empty()) ++events_version_;
  } else {
    open_->events = open_->events || !events.empty();
    Unflushed& pending = unflushed_[job.id];
    pending.batch = open_;
    pending.created = pending.created || create;
    JobWrite write;
    write.kind = create ? JobWrite::Kind::kCreate : JobWrite::Kind::kUpdate;
    write.job = job;
    write.job.history.clear();  // not stored from here
    write.events = std::move(events);
    open_->writes.push_back(std::move(write));
    // No wake-up of the writer here: the call commits it in FinishLocked,
    // or the commit under way hands it to the writer when done.
  }
  ApplyLocked(std::move(job));
  if (open_ == nullptr) changed_.notify_all();  // group: once committed
  return OkStatus();
}

Status Scheduler::CommitWriteLocked(JobWrite write) {
  write.job.history.clear();                             // not stored from here
  if (open_ == nullptr) return store_->Commit({write});  // per-call
  unflushed_[write.job.id].batch = open_;
  open_->writes.push_back(std::move(write));
  return OkStatus();
}

void Scheduler::ForgetLocked(const Job& job) {
  CountOwnerLocked(job, -1);
  --state_counts_[job.state];
  if (!job.idempotency_key.empty()) by_idempotency_key_.erase({job.owner, job.idempotency_key});
  wait_reasons_.erase(job.id);
  head_since_.erase(job.id);
  waiting_on_quota_.erase(job.id);
  jobs_.erase(job.id);
}

// --- Group commit ----------------------------------------------------------

void Scheduler::WriterLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    writer_wake_.wait(lock, [&] {
      return (stopping_ && in_flight_ == nullptr) ||
             (!open_->writes.empty() && in_flight_ == nullptr);
    });
    if (open_->writes.empty()) return;  // stopping, nothing left to write
    CommitOpenBatchLocked(lock);
  }
}

void Scheduler::CommitOpenBatchLocked(std::unique_lock<std::mutex>& lock) {
  in_flight_ = std::exchange(open_, std::make_shared<Batch>());
  const std::shared_ptr<Batch> batch = in_flight_;
  lock.unlock();
  Status status = store_->Commit(batch->writes);
  lock.lock();
  ResolveLocked(batch, std::move(status));
  in_flight_.reset();
  if (!open_->writes.empty() || stopping_) writer_wake_.notify_one();
}

void Scheduler::ResolveLocked(const std::shared_ptr<Batch>& batch, Status status) {
  if (status.ok()) {
    for (const JobWrite& w : batch->writes) {
      auto it = unflushed_.find(w.job.id);
      if (it != unflushed_.end() && it->second.batch == batch) {
        unflushed_.erase(it);
      }
    }
    if (batch->events) ++events_version_;
    for (std::function<void()>& effect : batch->effects) effect();
  } else {
    batch->status = status;
    // The open batch was built on the failed one: it fails too, and memory
    // goes back to what the store holds.
    const size_t behind = open_->writes.size();
    if (behind != 0) {
      open_->status = status;
      open_->Resolve();
    }
    open_ = std::make_shared<Batch>();
    unflushed_.clear();
    TERN_LOG(ERROR) << "scheduler: job store commit of " << batch->writes.size()
                    << " changes failed (" << behind
                    << " queued behind it fail too); reloading the jobs from "
                       "the store: "
                    << status;
    jobs_.clear();
    by_idempotency_key_.clear();
    queued_.clear();
    queue_order_.clear();
    restarting_.clear();
    holding_.clear();
    collective_failures_.clear();
    state_counts_.clear();
    wait_reasons_.clear();
    waiting_on_quota_.clear();
    unfinished_by_owner_.clear();
    held_by_owner_.clear();
    for (auto& [id, agent] : agents_) {
      agent->used.clear();
      agent->ports.clear();
      // The reloaded jobs hold what they held before the failed batch; its
      // kill orders were never sent.
      agent->stopping.clear();
    }
    // Ids as the store has them: a job the failed batch did not store frees
    // its id; a deleted job's stays taken.
    StatusOr<JobId> highest = store_->HighestJobIdEver();
    next_id_ = highest.ok() ? *highest + 1 : 1;
    StatusOr<std::vector<Job>> jobs = store_->LoadJobs();
    Status reloaded = !highest.ok() ? highest.status()
                      : jobs.ok()   ? ApplyLoadedLocked(std::move(jobs).value(), clock_->Now())
                                    : jobs.status();
    // Memory that matches no store would hand out wrong work: stop, and let
    // a restart load the store.
    TERN_CHECK(reloaded.ok()) << "scheduler: cannot reload the job store after a failed commit: "
                              << reloaded;
    for (auto it = head_since_.begin(); it != head_since_.end();) {
      auto job = jobs_.find(it->first);
      const bool queued = job != jobs_.end() && job->second.state == JobState::kQueued;
      it = queued ? std::next(it) : head_since_.erase(it);
    }
  }
  batch->Resolve();
  changed_.notify_all();
}

std::shared_ptr<Scheduler::Batch> Scheduler::UnresolvedLocked() const {
  if (open_ == nullptr) return nullptr;
  if (!open_->writes.empty()) return open_;
  return in_flight_;
}

void Scheduler::DeferLocked(std::function<void()> effect) {
  std::shared_ptr<Batch> batch = UnresolvedLocked();
  if (batch != nullptr) {
    batch->effects.push_back(std::move(effect));
  } else {
    effect();
  }
}

Status Scheduler::FinishLocked(std::unique_lock<std::mutex>& lock, Status status) {
  if (!status.ok()) {
    // Writes this call queued before failing still get committed.
    if (open_ != nullptr && !open_->writes.empty() && in_flight_ == nullptr) {
      writer_wake_.notify_one();
    }
    return status;
  }
  const std::shared_ptr<Batch> batch = UnresolvedLocked();
  if (batch == nullptr) return OkStatus();
  if (batch == open_ && in_flight_ == nullptr) {
    // No commit under way: commit here, sparing a lone caller the hand-off
    // to the writer thread and back (two wake-ups). Calls arriving
    // meanwhile queue behind it; the writer takes those.
    CommitOpenBatchLocked(lock);
  }
  if (batch->done) return batch->status;
  batch->AwaitUnlocked(lock);
  return batch->status;
}

void Scheduler::AwaitJobLocked(std::unique_lock<std::mutex>& lock, JobId id) const {
  for (;;) {
    auto it = unflushed_.find(id);
    if (it == unflushed_.end()) return;
    const std::shared_ptr<Batch> batch = it->second.batch;
    batch->Await(lock);
  }
}

void Scheduler::ApplyLocked(Job job) {
  const JobId id = job.id;
  auto old = jobs_.find(id);
  if (old != jobs_.end() && HoldsSlots(old->second.state)) {
    ReleaseSlotsLocked(old->second);
  }
  if (HoldsSlots(job.state)) TakeSlotsLocked(job);
  if (old != jobs_.end()) {
    CountOwnerLocked(old->second, -1);
    --state_counts_[old->second.state];
    if (old->second.state == JobState::kQueued && job.state != JobState::kQueued) {
      queue_order_.erase(QueueKeyOf(old->second));
    }
  }
  CountOwnerLocked(job, +1);
  ++state_counts_[job.state];
  if (job.state == JobState::kQueued) queue_order_.insert(QueueKeyOf(job));
  auto set_member = [id](std::set<JobId>& set, bool member) {
    if (member) {
      set.insert(id);
    } else {
      set.erase(id);
    }
  };
  set_member(queued_, job.state == JobState::kQueued);
  set_member(restarting_, job.state == JobState::kRestarting);
  set_member(holding_, HoldsSlots(job.state));
  if ((job.state == JobState::kAdmitted || job.state == JobState::kRunning) &&
      std::any_of(job.ranks.begin(), job.ranks.end(),
                  [](const RankPlacement& r) { return r.state == RankState::kFailed; })) {
    collective_failures_.emplace(id, clock_->Now() + options_.collective_failure_grace);
  } else {
    collective_failures_.erase(id);
  }
  if (job.state != JobState::kQueued) {
    wait_reasons_.erase(id);
    head_since_.erase(id);
    waiting_on_quota_.erase(id);
  }
  jobs_.insert_or_assign(id, std::move(job));
}

Scheduler::QueueKey Scheduler::QueueKeyOf(const Job& job) const {
  const double minutes =
      std::chrono::duration<double, std::ratio<60>>(job.submit_time - kAgingEpoch).count();
  return QueueKey{job.priority - options_.aging_per_minute * minutes, job.submit_time, job.id};
}

void Scheduler::CountOwnerLocked(const Job& job, int sign) {
  if (!IsTerminal(job.state)) {
    auto it = unfinished_by_owner_.try_emplace(job.owner, 0).first;
    if ((it->second += sign) == 0) unfinished_by_owner_.erase(it);
  }
  if (HoldsSlots(job.state)) {
    auto owner = held_by_owner_.try_emplace(job.owner).first;
    auto kind = owner->second.try_emplace(job.device_kind, 0).first;
    if ((kind->second += sign * SlotsHeldBy(job)) == 0) owner->second.erase(kind);
    if (owner->second.empty()) held_by_owner_.erase(owner);
  }
}

void Scheduler::TakeSlotsLocked(const Job& job) {
  for (const RankPlacement& r : job.ranks) {
    if (!RankHoldsSlot(job, r)) continue;
    auto it = agents_.find(r.agent_id);
    TERN_CHECK(it != agents_.end()) << "job " << job.id << " rank " << r.rank
                                    << " on unknown agent " << r.agent_id;
    ++it->second->used[job.device_kind];
  }
  if (!job.ranks.empty() && RankHoldsSlot(job, job.ranks[0])) {
    Agent& rank0 = *agents_.at(job.ranks[0].agent_id);
    rank0.ports.insert(job.rendezvous_port);
    rank0.next_port = job.rendezvous_port + 1;  // the next job gets the next one
  }
}

int Scheduler::FreePortLocked(const Agent& agent, TimePoint now) const {
  const int lo = options_.rendezvous_port_min, hi = options_.rendezvous_port_max;
  const int start = agent.next_port >= lo && agent.next_port <= hi ? agent.next_port : lo;
  const int count = hi - lo + 1;
  for (int i = 0; i < count; ++i) {
    const int port = lo + (start - lo + i) % count;
    if (agent.ports.count(port) != 0) continue;
    auto q = agent.quarantined_ports.find(port);
    if (q != agent.quarantined_ports.end() && q->second > now) continue;
    return port;
  }
  return 0;
}

void Scheduler::ReleaseSlotsLocked(const Job& job) {
  for (const RankPlacement& r : job.ranks) {
    if (!RankHoldsSlot(job, r)) continue;
    auto it = agents_.find(r.agent_id);
    if (it != agents_.end()) --it->second->used[job.device_kind];
  }
  if (!job.ranks.empty() && RankHoldsSlot(job, job.ranks[0])) {
    auto it = agents_.find(job.ranks[0].agent_id);
    if (it != agents_.end()) it->second->ports.erase(job.rendezvous_port);
  }
}

int Scheduler::SlotsLocked(const std::string& kind, bool free_only) const {
  int total = 0;
  for (const auto& [id, agent] : agents_) {
    if (!agent->live || agent->draining) continue;
    auto cap = agent->slots.find(kind);
    if (cap == agent->slots.end()) continue;
    int n = cap->second;
    if (free_only) n = std::max(0, n - agent->Taken(kind));
    total += n;
  }
  return total;
}

void Scheduler::SendAssignmentLocked(const Job& job, int rank) {
  const RankPlacement& r = job.ranks.at(rank);
  auto it = agents_.find(r.agent_id);
  if (it == agents_.end() || !it->second->live) return;
  Assignment a = AssignmentOf(job, rank);
  DeferLocked([this, a = std::move(a)]() mutable {
    auto agent = agents_.find(a.agent_id);
    if (agent == agents_.end() || !agent->second->live) return;
    agent->second->outbox.assignments.push_back(std::move(a));
    changed_.notify_all();
  });
}

std::vector<KillOrder> Scheduler::KillOrdersLocked(const Job& job,
                                                   const char* why) const {
  std::vector<KillOrder> kills;
  for (const RankPlacement& r : job.ranks) {
    if (r.state != RankState::kAssigned && r.state != RankState::kRunning) {
      continue;
    }
    auto it = agents_.find(r.agent_id);
    if (it == agents_.end() || !it->second->live) continue;
    kills.push_back(KillOrder{r.agent_id, job.id, job.attempt, r.rank, why});
  }
  return kills;
}

void Scheduler::HoldStoppingLocked(const std::string& device_kind,
                                   const std::vector<KillOrder>& kills) {
  for (const KillOrder& kill : kills) {
    auto it = agents_.find(kill.agent_id);
    if (it == agents_.end()) continue;
    const std::vector<Assignment>& pending = it->second->outbox.assignments;
    if (std::any_of(pending.begin(), pending.end(), [&](const Assignment& a) {
          return a.job_id == kill.job_id && a.attempt == kill.attempt && a.rank == kill.rank;
        })) {
      continue;  // not taken by the agent: withdrawn, nothing runs
    }
    it->second->stopping[{kill.job_id, kill.attempt, kill.rank}] = device_kind;
  }
}

void Scheduler::SendKillsLocked(const std::vector<KillOrder>& kills) {
  if (kills.empty()) return;
  DeferLocked([this, kills] {
    for (const KillOrder& kill : kills) {
      auto it = agents_.find(kill.agent_id);
      if (it == agents_.end() || !it->second->live) continue;
      AgentWork& outbox = it->second->outbox;
      // An assignment not yet taken is withdrawn; the kill still goes out.
      auto& pending = outbox.assignments;
      auto withdrawn = std::remove_if(pending.begin(), pending.end(), [&](const Assignment& a) {
        return a.job_id == kill.job_id && a.attempt == kill.attempt && a.rank == kill.rank;
      });
      if (withdrawn != pending.end()) {  // never reached the agent: nothing runs
        it->second->stopping.erase({kill.job_id, kill.attempt, kill.rank});
      }
      pending.erase(withdrawn, pending.end());
      outbox.kills.push_back(kill);
    }
    changed_.notify_all();
  });
}

// --- Admission -------------------------------------------------------------

std::vector<JobId> Scheduler::QueueOrderLocked(TimePoint /*now*/) const {
  std::vector<JobId> order;
  order.reserve(queue_order_.size());
  for (const QueueKey& key : queue_order_) order.push_back(key.id);
  return order;
}

std::optional<Scheduler::Placement> Scheduler::PlaceLocked(
    const Job& job, TimePoint now) const {
  struct Candidate {
    const Agent* agent;
    int free;
  };
  std::vector<Candidate> candidates;
  int free_total = 0;
  for (const auto& [id, agent] : agents_) {
    if (!agent->live || agent->draining) continue;
    auto cap = agent->slots.find(job.device_kind);
    if (cap == agent->slots.end()) continue;
    const int free = cap->second - agent->Taken(job.device_kind);
    if (free <= 0) continue;
    candidates.push_back({agent.get(), free});
    free_total += free;
  }
  if (free_total < job.world_size) return std::nullopt;
  // Pack: fewest agents first (most free slots), ties by agent id.
  std::stable_sort(
      candidates.begin(), candidates.end(),
      [](const Candidate& a, const Candidate& b) { return a.free > b.free; });
  // Rank 0 goes to the first candidate with a free rendezvous port.
  Placement placement;
  for (size_t i = 0; i < candidates.size() && placement.port == 0; ++i) {
    const int port = FreePortLocked(*candidates[i].agent, now);
    if (port == 0) continue;
    placement.port = port;
    placement.host = candidates[i].agent->host;
    std::rotate(candidates.begin(), candidates.begin() + i,
                candidates.begin() + i + 1);
  }
  if (placement.port == 0) return std::nullopt;
  for (const Candidate& c : candidates) {
    for (int k = 0;
         k < c.free &&
         static_cast<int>(placement.agent_of_rank.size()) < job.world_size;
         ++k) {
      placement.agent_of_rank.push_back(c.agent->id);
    }
  }
  return placement;
}

Status Scheduler::AdmitJobLocked(JobId id, const Placement& placement,
                                 TimePoint now) {
  Job job = jobs_.at(id);
  job.attempt += 1;
  job.ranks.clear();
  for (int rank = 0; rank < job.world_size; ++rank) {
    job.ranks.push_back(RankPlacement{rank, placement.agent_of_rank[rank],
                                      RankState::kAssigned, 0});
  }
  job.rendezvous_host = placement.host;
  job.rendezvous_port = placement.port;
  std::string message = "attempt " + std::to_string(job.attempt) + ": " +
                        DescribePlacement(job.ranks) + "; rendezvous " +
                        placement.host + ":" + std::to_string(placement.port);
  TERN_LOG(INFO) << "job " << id << " admitted, " << message;
  std::vector<JobEvent> events;
  TERN_RETURN_IF_ERROR(TransitionJob(&job, JobState::kAdmitted,
                                     reason::kAdmitted, std::move(message), now,
                                     &events));
  TERN_RETURN_IF_ERROR(CommitLocked(std::move(job), std::move(events)));
  const Job& admitted = jobs_.at(id);
  for (int rank = 0; rank < admitted.world_size; ++rank) {
    SendAssignmentLocked(admitted, rank);
  }
  return OkStatus();
}

std::optional<std::string> Scheduler::QuotaWaitLocked(const Job& job) const {
  const OwnerQuota* quota = quotas_.For(job.owner);
  if (quota == nullptr) return std::nullopt;
  const std::optional<int> limit = quota->SlotLimit(job.device_kind);
  if (!limit) return std::nullopt;
  const int owner_holds = HeldByOwnerLocked(job.owner, job.device_kind);
  if (owner_holds + job.world_size <= *limit) return std::nullopt;
  return "needs " + SlotCount(job.world_size, job.device_kind) + ", but owner " + job.owner +
         " holds " + std::to_string(owner_holds) + " of the " + SlotCount(*limit, job.device_kind) +
         " " + QuotaName(*quota) + " allows";
}

Status Scheduler::AdmitLocked(TimePoint now) {
  // Per device kind, as the pass goes down the queue.
  struct Kind {
    int total = 0;
    int free = 0;
    JobId head = 0;         // the first job that can't fit (0: none yet)
    bool reserved = false;  // the head's backfill window is over
    // Nothing more of this kind can be admitted in this pass, and its head
    // (if one can exist) is known: the rest of its jobs need no visit.
    bool Settled() const { return head != 0 ? free == 0 || reserved : total == 0; }
  };
  std::map<std::string, Kind> kinds;
  auto refresh = [&](const std::string& kind) -> Kind& {
    Kind& k = kinds[kind];
    k.total = SlotsLocked(kind, /*free_only=*/false);
    k.free = SlotsLocked(kind, /*free_only=*/true);
    return k;
  };
  for (const char* kind : {kDeviceCpu, kDeviceCuda}) refresh(kind);
  auto all_settled = [&] {
    return std::all_of(kinds.begin(), kinds.end(),
                       [](const auto& k) { return k.second.Settled(); });
  };
  std::map<JobId, WaitReasonInfo> reasons;
  std::map<JobId, TimePoint> head_since;
  std::set<JobId> waiting_on_quota;
  for (auto it = queue_order_.begin(); it != queue_order_.end() && !all_settled();) {
    const JobId id = it->id;
    ++it;  // admitting `id` erases its key
    const Job& job = jobs_.at(id);
    auto found = kinds.find(job.device_kind);
    Kind& kind = found != kinds.end() ? found->second : refresh(job.device_kind);
    const std::string needs = "needs " + SlotCount(job.world_size, job.device_kind);
    if (std::optional<std::string> wait = QuotaWaitLocked(job)) {
      // Waits for its owner's own jobs: it must not hold anyone back.
      reasons[id] = {reason::kOwnerQuota, std::move(*wait)};
      waiting_on_quota.insert(id);
      continue;
    }
    if (job.world_size > kind.total) {
      // Can never fit as things stand: it must not hold anyone back.
      reasons[id] = {reason::kInsufficientSlots,
                     needs + ", only " + std::to_string(kind.total) + " registered"};
      continue;
    }
    if (job.world_size > kind.free) {
      reasons[id] = {reason::kInsufficientSlots,
                     needs + ", " + std::to_string(kind.free) + " free"};
      if (kind.head == 0) {
        kind.head = id;
        auto since = head_since_.find(id);
        head_since[id] = since == head_since_.end() ? now : since->second;
        kind.reserved = now - head_since[id] >= options_.backfill_window;
      }
      continue;
    }
    if (kind.reserved) {
      const Job& blocker = jobs_.at(kind.head);
      reasons[id] = {reason::kSlotsReserved,
                     needs + ", " + std::to_string(kind.free) +
                         " free, but they are held for job " + std::to_string(blocker.id) +
                         " (ahead in the queue, " + "needs " +
                         SlotCount(blocker.world_size, job.device_kind) + ")"};
      continue;
    }
    std::optional<Placement> placement = PlaceLocked(job, now);
    if (!placement) {
      reasons[id] = {reason::kNoRendezvousPort,
                     needs + ", " + std::to_string(kind.free) +
                         " free, but no rendezvous port is free in [" +
                         std::to_string(options_.rendezvous_port_min) + ", " +
                         std::to_string(options_.rendezvous_port_max) +
                         "] (in use by jobs, or found taken by other processes)"};
      continue;
    }
    const std::string kind_name = job.device_kind;
    TERN_RETURN_IF_ERROR(AdmitJobLocked(id, *placement, now));  // counts its slots
    refresh(kind_name);
  }
  wait_reasons_ = std::move(reasons);
  head_since_ = std::move(head_since);
  waiting_on_quota_ = std::move(waiting_on_quota);
  return OkStatus();
}

void Scheduler::AdmitAndLogLocked(TimePoint now) {
  Status status = AdmitLocked(now);
  if (!status.ok()) {
    TERN_LOG(ERROR) << "scheduler: admission pass failed (retried on the next "
                       "tick): "
                    << status;
  }
}

// --- Restarts --------------------------------------------------------------

Status Scheduler::RestartLocked(Job job, const char* why, std::string message,
                                TimePoint now, bool retryable,
                                RestartCharge charge) {
  const std::vector<KillOrder> kills = KillOrdersLocked(job, why);
  std::vector<JobEvent> events;
  TERN_RETURN_IF_ERROR(
      TransitionJob(&job, JobState::kRestarting, why, message, now, &events));
  if (!retryable) {
    TERN_RETURN_IF_ERROR(TransitionJob(
        &job, JobState::kFailed, reason::kNotRetryable,
        "not restarted: the failure would recur on every attempt (" +
            std::to_string(job.max_restarts - job.restarts_used) +
            " restarts left unused); failure: " + message,
        now, &events));
  } else if (charge == RestartCharge::kFree) {
    job.restart_not_before = now;
    TERN_RETURN_IF_ERROR(TransitionJob(
        &job, JobState::kQueued, reason::kRequeued,
        RequeueMessage(job, why), now, &events));
  } else if (job.restarts_used >= job.max_restarts) {
    TERN_RETURN_IF_ERROR(
        TransitionJob(&job, JobState::kFailed, reason::kRestartBudgetExhausted,
                      "max_restarts is " + std::to_string(job.max_restarts) +
                          " and " + std::to_string(job.restarts_used) +
                          " were used; last failure: " + message,
                      now, &events));
  } else {
    ++job.restarts_used;
    milliseconds delay = options_.restart_backoff;
    for (int i = 1;
         i < job.restarts_used && delay < options_.max_restart_backoff; ++i) {
      delay *= 2;
    }
    delay = std::min(delay, options_.max_restart_backoff);
    job.restart_not_before = now + delay;
    if (delay.count() == 0) {
      TERN_RETURN_IF_ERROR(TransitionJob(&job, JobState::kQueued,
                                         reason::kRequeued, RequeueMessage(job),
                                         now, &events));
    }
  }
  TERN_LOG(WARNING) << "job " << job.id << " attempt " << job.attempt << " "
                    << why << " (" << message << "), now "
                    << JobStateName(job.state);
  // The job holds no slots from here; its killed ranks do until they exit.
  HoldStoppingLocked(job.device_kind, kills);
  TERN_RETURN_IF_ERROR(CommitLocked(std::move(job), std::move(events)));
  SendKillsLocked(kills);
  return OkStatus();
}

Status Scheduler::RestartForCollectiveFailureLocked(Job job, TimePoint now) {
  std::string message = "a collective between the ranks failed";
  if (job.last_failure && job.last_failure->attempt == job.attempt) {
    message = job.last_failure->message;
  }
  if (options_.collective_failure_grace.count() > 0 && AnyRankUnfinished(job)) {
    message += " (no rank reported a failure of its own within " +
               Seconds(options_.collective_failure_grace) + ")";
  }
  return RestartLocked(std::move(job), reason::kCollectiveFailed, std::move(message), now);
}

Status Scheduler::LoseAgentLocked(const std::string& agent_id, const char* why,
                                  const std::string& message, TimePoint now) {
  auto it = agents_.find(agent_id);
  if (it == agents_.end()) return OkStatus();
  Agent& agent = *it->second;
  agent.live = false;  // no capacity, no kill orders, no work from now on
  agent.slots.clear();
  agent.stopping.clear();
  agent.outbox = AgentWork();
  // Should a store write fail below, the next Tick retries.
  agent.lease_expires = std::min(agent.lease_expires, now);
  changed_.notify_all();
  std::vector<JobId> affected;
  for (JobId id : holding_) {
    const Job& job = jobs_.at(id);
    if (std::any_of(
            job.ranks.begin(), job.ranks.end(),
            [&](const RankPlacement& r) { return r.agent_id == agent_id; })) {
      affected.push_back(id);
    }
  }
  // An agent that deregistered left on purpose: not the jobs' failure.
  const RestartCharge charge = std::string_view(why) == reason::kAgentDeregistered
                                   ? RestartCharge::kFree
                                   : RestartCharge::kCounted;
  for (JobId id : affected) {
    const Job& job = jobs_.at(id);
    if (job.state == JobState::kCancelling) {
      TERN_RETURN_IF_ERROR(LoseCancellingRanksLocked(job, agent_id, now));
      continue;
    }
    Job failed = job;
    const RankPlacement* first = nullptr;
    for (const RankPlacement& r : failed.ranks) {
      if (r.agent_id == agent_id) {
        first = &r;
        break;
      }
    }
    failed.last_failure =
        FailureOf(failed, *first, 0, "", why,
                  message + " (" + DescribePlacement(job.ranks, &agent_id) + ")", now);
    TERN_RETURN_IF_ERROR(RestartLocked(
        std::move(failed), why, message + " (" + DescribePlacement(job.ranks, &agent_id) + ")", now,
        /*retryable=*/true, charge));
  }
  agents_.erase(agent_id);
  return OkStatus();
}

Status Scheduler::LoseCancellingRanksLocked(Job job, const std::string& agent_id, TimePoint now) {
  bool changed = false;
  for (RankPlacement& r : job.ranks) {
    if (r.agent_id == agent_id && r.state == RankState::kRunning) {
      r.state = RankState::kFailed;  // gone with its agent
      changed = true;
    }
  }
  if (!changed) return OkStatus();
  std::vector<JobEvent> events;
  TERN_RETURN_IF_ERROR(FinishCancelIfStopped(&job, &events, now));
  return CommitLocked(std::move(job), std::move(events));
}

// --- Clients ---------------------------------------------------------------

StatusOr<SubmitResult> Scheduler::SubmitJob(const JobRequest& request) {
  TERN_RETURN_IF_ERROR(ValidateJobRequest(request, options_.max_world_size));
  std::unique_lock<std::mutex> lock(mu_);
  const TimePoint now = clock_->Now();
  while (!request.idempotency_key.empty()) {
    auto it =
        by_idempotency_key_.find({request.owner, request.idempotency_key});
    if (it == by_idempotency_key_.end()) break;
    const JobId id = it->second;
    if (unflushed_.count(id) == 0) {
      const Job& earlier = jobs_.at(id);
      return SubmitResult{earlier, /*created=*/false, WaitReasonLocked(earlier)};
    }
    // The earlier submission (or a change of its job) is being committed:
    // answer once it is. Should that commit fail, the key is free again
    // and this call submits the job itself.
    AwaitJobLocked(lock, id);
  }
  TERN_RETURN_IF_ERROR(CheckSubmitQuotaLocked(request));
  Job job;
  job.id = next_id_;
  job.owner = request.owner;
  job.labels = request.labels;
  job.priority = request.priority;
  job.world_size = request.world_size;
  job.device_kind = request.device_kind;
  job.max_restarts = request.max_restarts;
  job.idempotency_key = request.idempotency_key;
  job.spec = request.spec;
  job.submit_time = now;
  job.state = JobState::kQueued;
  job.restart_not_before = now;
  std::vector<JobEvent> events;
  JobEvent submitted;
  submitted.time = now;
  submitted.from = JobState::kUnspecified;
  submitted.to = JobState::kQueued;
  submitted.reason = reason::kSubmitted;
  submitted.message = "submitted by " + request.owner + ": " +
                      SlotCount(request.world_size, request.device_kind) +
                      ", priority " + std::to_string(request.priority);
  job.history.push_back(AppendJobEvent(&job, std::move(submitted), &events));
  const JobId id = job.id;
  const std::pair<std::string, std::string> key{job.owner, job.idempotency_key};
  TERN_RETURN_IF_ERROR(CommitLocked(std::move(job), std::move(events),
                                    /*create=*/true));
  ++next_id_;
  if (!key.second.empty()) by_idempotency_key_[key] = id;
  AdmitAndLogLocked(now);
  const Job& stored = jobs_.at(id);
  SubmitResult result{stored, /*created=*/true, WaitReasonLocked(stored)};
  TERN_RETURN_IF_ERROR(FinishLocked(lock, OkStatus()));
  return result;
}

StatusOr<Job> Scheduler::GetJob(JobId id) const {
  std::unique_lock<std::mutex> lock(mu_);
  AwaitJobLocked(lock, id);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return NotFoundError("job " + std::to_string(id) + " does not exist");
  }
  return it->second;
}

StatusOr<ListJobsResult> Scheduler::ListJobs(const ListJobsQuery& query) const {
  if (query.page_size < 0) {
    return InvalidArgumentError("page_size: must be >= 0");
  }
  TERN_ASSIGN_OR_RETURN(JobId after,
                        ParsePageToken(query.page_token, query.newest_first));
  const size_t page_size = static_cast<size_t>(
      query.page_size == 0 ? options_.default_page_size
                           : std::min(query.page_size, options_.max_page_size));
  std::unique_lock<std::mutex> lock(mu_);
  ListJobsResult result;
  // Returns false once the page is full (and sets the token). Jobs whose
  // submission is not committed yet are left out (a later page has them).
  auto visit = [&](const Job& job) {
    if (!Matches(job, query)) return true;
    if (!unflushed_.empty()) {
      auto pending = unflushed_.find(job.id);
      if (pending != unflushed_.end() && pending->second.created) return true;
    }
    if (result.jobs.size() == page_size) {
      result.next_page_token = (query.newest_first ? kNewestFirstPageTokenPrefix
                                                   : kPageTokenPrefix) +
                               std::to_string(result.jobs.back().id);
      return false;
    }
    result.jobs.push_back(job);
    return true;
  };
  auto fill = [&] {
    result = ListJobsResult();
    if (query.newest_first) {
      auto end = after == 0 ? jobs_.end() : jobs_.lower_bound(after);
      for (auto it = std::make_reverse_iterator(end); it != jobs_.rend(); ++it) {
        if (!visit(it->second)) break;
      }
    } else {
      for (auto it = jobs_.upper_bound(after); it != jobs_.end(); ++it) {
        if (!visit(it->second)) break;
      }
    }
  };
  fill();
  // A listed job with a change not committed yet: wait for what is queued
  // now to be committed, once, and list again.
  if (std::any_of(result.jobs.begin(), result.jobs.end(),
                  [&](const Job& job) { return unflushed_.count(job.id) != 0; })) {
    const std::shared_ptr<Batch> batch = UnresolvedLocked();
    if (batch != nullptr) batch->Await(lock);
    fill();
  }
  return result;
}

StatusOr<std::vector<KillOrder>> Scheduler::CancelJob(
    JobId id, const std::string& message) {
  std::unique_lock<std::mutex> lock(mu_);
  StatusOr<std::vector<KillOrder>> kills = CancelJobLocked(id, message);
  TERN_RETURN_IF_ERROR(FinishLocked(lock, kills.status()));
  return kills;
}

StatusOr<Job> Scheduler::RelabelJob(JobId id,
                                    const std::function<StatusOr<Relabel>(const Job&)>& change) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return NotFoundError("job " + std::to_string(id) + " does not exist");
  TERN_ASSIGN_OR_RETURN(Relabel relabel, change(it->second));
  Job job = it->second;
  job.labels = std::move(relabel.labels);
  job.spec = std::move(relabel.spec);
  JobWrite write;
  write.kind = JobWrite::Kind::kRelabel;
  write.job = job;
  Status status = CommitWriteLocked(std::move(write));
  if (status.ok()) ApplyLocked(job);
  TERN_RETURN_IF_ERROR(FinishLocked(lock, std::move(status)));
  return job;
}

StatusOr<Job> Scheduler::DeleteJob(JobId id) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return NotFoundError("job " + std::to_string(id) + " does not exist");
  if (!IsTerminal(it->second.state)) {
    return FailedPreconditionError("job " + std::to_string(id) + " is " +
                                   JobStateName(it->second.state) +
                                   ": only a SUCCEEDED, FAILED or CANCELLED job can be deleted "
                                   "(cancel it first)");
  }
  const Job job = it->second;
  JobWrite write;
  write.kind = JobWrite::Kind::kDelete;
  write.job = job;
  Status status = CommitWriteLocked(std::move(write));
  if (status.ok()) ForgetLocked(job);
  TERN_RETURN_IF_ERROR(FinishLocked(lock, std::move(status)));
  return job;
}

StatusOr<std::vector<KillOrder>> Scheduler::CancelJobLocked(JobId id, const std::string& message) {
  const TimePoint now = clock_->Now();
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return NotFoundError("job " + std::to_string(id) + " does not exist");
  }
  if (IsTerminal(it->second.state)) {
    return FailedPreconditionError(
        "job " + std::to_string(id) +
        " already ended: " + JobStateName(it->second.state));
  }
  if (it->second.state == JobState::kCancelling) return std::vector<KillOrder>();
  Job job = it->second;
  std::vector<KillOrder> kills;
  if (HoldsSlots(job.state))
    kills = KillOrdersLocked(job, reason::kCancelledByUser);
  // Ranks that run keep their slots until they have exited.
  const JobState to =
      HoldsSlots(job.state) && AnyRankRunning(job) ? JobState::kCancelling : JobState::kCancelled;
  std::vector<JobEvent> events;
  TERN_RETURN_IF_ERROR(TransitionJob(&job, to, reason::kCancelledByUser,
                                     message.empty() ? "cancelled" : message, now, &events));
  // CANCELLING holds its running ranks' slots itself; assigned ranks of a
  // job CANCELLED at once hold theirs until they are seen not to run.
  if (to == JobState::kCancelled) HoldStoppingLocked(job.device_kind, kills);
  TERN_RETURN_IF_ERROR(CommitLocked(std::move(job), std::move(events)));
  SendKillsLocked(kills);
  AdmitAndLogLocked(now);
  return kills;
}

StatusOr<std::string> Scheduler::WaitReason(JobId id) const {
  TERN_ASSIGN_OR_RETURN(WaitReasonInfo wait, WaitReasonOf(id));
  return std::move(wait.message);
}

StatusOr<WaitReasonInfo> Scheduler::WaitReasonOf(JobId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return NotFoundError("job " + std::to_string(id) + " does not exist");
  }
  return WaitReasonLocked(it->second);
}

WaitReasonInfo Scheduler::WaitReasonLocked(const Job& job) const {
  const JobId id = job.id;
  if (job.state == JobState::kQueued) {
    auto found = wait_reasons_.find(id);
    if (found != wait_reasons_.end()) return found->second;
    // The last admission pass stopped before this job: say it from now.
    if (std::optional<std::string> wait = QuotaWaitLocked(job)) {
      return WaitReasonInfo{reason::kOwnerQuota, *wait};
    }
    const std::string needs = "needs " + SlotCount(job.world_size, job.device_kind);
    const int total = SlotsLocked(job.device_kind, /*free_only=*/false);
    const int free = SlotsLocked(job.device_kind, /*free_only=*/true);
    if (job.world_size > total) {
      return WaitReasonInfo{reason::kInsufficientSlots,
                            needs + ", only " + std::to_string(total) + " registered"};
    }
    if (job.world_size > free) {
      return WaitReasonInfo{reason::kInsufficientSlots,
                            needs + ", " + std::to_string(free) + " free"};
    }
    const TimePoint now = clock_->Now();
    for (const auto& [head, since] : head_since_) {
      const Job& blocker = jobs_.at(head);
      if (head != id && blocker.device_kind == job.device_kind &&
          now - since >= options_.backfill_window) {
        return WaitReasonInfo{reason::kSlotsReserved,
                              needs + ", " + std::to_string(free) +
                                  " free, but they are held for job " + std::to_string(head) +
                                  " (ahead in the queue, needs " +
                                  SlotCount(blocker.world_size, job.device_kind) + ")"};
      }
    }
    return WaitReasonInfo{reason::kWaitingForAdmission, "waiting for admission"};
  }
  if (job.state == JobState::kRestarting) {
    const TimePoint now = clock_->Now();
    std::string when = job.restart_not_before > now
                           ? "in " + Seconds(job.restart_not_before - now)
                           : "at the next tick";
    return WaitReasonInfo{reason::kRestartBackoff, "restarting: back in the queue " + when +
                                                       " (restart " +
                                                       std::to_string(job.restarts_used) + " of " +
                                                       std::to_string(job.max_restarts) + ")"};
  }
  return WaitReasonInfo{};
}

std::vector<JobId> Scheduler::QueueOrder() const {
  std::lock_guard<std::mutex> lock(mu_);
  return QueueOrderLocked(clock_->Now());
}

StatusOr<std::vector<JobEvent>> Scheduler::ReadEvents(
    JobId id, int64_t after_seq, int max_events, milliseconds max_wait) const {
  if (after_seq < 0) return InvalidArgumentError("after_seq: must be >= 0");
  if (max_events < 0) return InvalidArgumentError("max_events: must be >= 0");
  if (max_events == 0) max_events = kDefaultEventBatch;
  max_events = std::min(max_events, kMaxEventBatch);
  std::unique_lock<std::mutex> lock(mu_);
  auto newest = [&]() -> std::optional<int64_t> {
    // Looked up each time: a failed commit reloads the jobs.
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return std::nullopt;
    return it->second.last_event_seq;
  };
  if (!newest()) {
    return NotFoundError("job " + std::to_string(id) + " does not exist");
  }
  changed_.wait_for(lock, max_wait, [&] {
    std::optional<int64_t> seq = newest();
    return !seq || *seq > after_seq;
  });
  AwaitJobLocked(lock, id);  // the store has what memory has
  std::optional<int64_t> seq = newest();
  if (!seq) return NotFoundError("job " + std::to_string(id) + " does not exist");
  if (*seq <= after_seq) return std::vector<JobEvent>();
  lock.unlock();  // events are append-only: read them without the lock
  return store_->ReadEvents(id, after_seq, max_events);
}

uint64_t Scheduler::WaitForEvents(uint64_t seen, milliseconds max_wait) const {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait_for(lock, max_wait, [&] { return events_version_ != seen; });
  return events_version_;
}

StatusOr<Scheduler::EventHead> Scheduler::EventHeadOf(JobId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return NotFoundError("job " + std::to_string(id) + " does not exist");
  }
  return EventHead{it->second.last_event_seq, it->second.state};
}

// --- Agents ----------------------------------------------------------------

StatusOr<Lease> Scheduler::RegisterAgent(
    const AgentRegistration& registration) {
  const AgentRegistration& reg = registration;
  if (reg.agent_id.empty()) return InvalidArgumentError("agent_id: required");
  if (reg.host.empty()) return InvalidArgumentError("host: required");
  for (const auto& [kind, count] : reg.slots) {
    if (!IsKnownDeviceKind(kind)) {
      return InvalidArgumentError("slots: unknown device kind " + Quoted(kind) +
                                  " (want cpu or cuda)");
    }
    if (count < 0) {
      return InvalidArgumentError("slots[" + kind + "]: must be >= 0");
    }
  }
  for (const RankRef& ref : reg.running) {
    if (!ref.agent_id.empty() && ref.agent_id != reg.agent_id) {
      return InvalidArgumentError("running: job " + std::to_string(ref.job_id) +
                                  " rank " + std::to_string(ref.rank) +
                                  " names agent " + ref.agent_id);
    }
  }
  std::unique_lock<std::mutex> lock(mu_);
  StatusOr<Lease> result = [&]() -> StatusOr<Lease> {
    const TimePoint now = clock_->Now();
    std::unique_ptr<Agent>& slot = agents_[reg.agent_id];
    if (slot == nullptr) {
      slot = std::make_unique<Agent>();
      slot->id = reg.agent_id;
    }
    Agent& agent = *slot;
    agent.host = reg.host;
    agent.slots = reg.slots;
    agent.live = true;
    agent.draining = false;
    agent.lease_expires = now + options_.agent_lease_ttl;
    agent.outbox = AgentWork();  // rebuilt below from the placements

    using Key = std::tuple<JobId, int, int>;  // job, attempt, rank
    std::set<Key> reported;
    for (const RankRef& ref : reg.running) {
      reported.insert({ref.job_id, ref.attempt, ref.rank});
    }
    // A stopping rank the agent no longer runs has exited.
    for (auto it = agent.stopping.begin(); it != agent.stopping.end();) {
      it = reported.count(it->first) != 0 ? std::next(it) : agent.stopping.erase(it);
    }
    std::set<Key> known;
    std::vector<JobId> placed;
    for (JobId id : holding_) {
      const Job& job = jobs_.at(id);
      if (std::any_of(job.ranks.begin(), job.ranks.end(),
                      [&](const RankPlacement& r) { return r.agent_id == agent.id; })) {
        placed.push_back(id);
      }
    }
    std::vector<KillOrder> cancel_kills;  // a CANCELLING job's ranks: told again
    for (JobId id : placed) {
      Job job = jobs_.at(id);
      if (job.state == JobState::kCancelling) {
        for (RankPlacement& r : job.ranks) {
          if (r.agent_id != agent.id) continue;
          const Key key{id, job.attempt, r.rank};
          if (reported.count(key) != 0) {
            known.insert(key);
            r.state = RankState::kRunning;
            cancel_kills.push_back(
                KillOrder{agent.id, id, job.attempt, r.rank, reason::kCancelledByUser});
          } else if (r.state == RankState::kRunning) {
            r.state = RankState::kFailed;  // gone from its agent
          }
        }
        std::vector<JobEvent> events;
        TERN_RETURN_IF_ERROR(FinishCancelIfStopped(&job, &events, now));
        TERN_RETURN_IF_ERROR(CommitLocked(std::move(job), std::move(events)));
        continue;
      }
      bool started = false;
      std::vector<int> resend;
      std::string lost;
      int first_lost = -1;
      for (RankPlacement& r : job.ranks) {
        if (r.agent_id != agent.id) continue;
        const Key key{id, job.attempt, r.rank};
        if (reported.count(key) != 0) {
          known.insert(key);
          if (r.state == RankState::kAssigned) {
            r.state = RankState::kRunning;
            started = true;
          }
        } else if (r.state == RankState::kAssigned) {
          resend.push_back(r.rank);
        } else if (r.state == RankState::kRunning) {
          r.state = RankState::kFailed;
          lost += (lost.empty() ? "" : ", ") + std::to_string(r.rank);
          if (first_lost < 0) first_lost = r.rank;
        }
      }
      if (!lost.empty()) {
        std::string message = "agent " + agent.id + " re-registered without rank(s) " + lost;
        job.last_failure =
            FailureOf(job, job.ranks[first_lost], 0, "", reason::kRankLost, message, now);
        TERN_RETURN_IF_ERROR(
            RestartLocked(std::move(job), reason::kRankLost, std::move(message), now));
        continue;
      }
      if (started) {
        std::vector<JobEvent> events;
        TERN_RETURN_IF_ERROR(AdvanceJob(&job, &events, now));
        TERN_RETURN_IF_ERROR(CommitLocked(std::move(job), std::move(events)));
      }
      for (int rank : resend) SendAssignmentLocked(jobs_.at(id), rank);
    }
    std::vector<KillOrder> kills = std::move(cancel_kills);
    for (const RankRef& ref : reg.running) {
      if (known.count({ref.job_id, ref.attempt, ref.rank}) == 0) {
        kills.push_back(KillOrder{agent.id, ref.job_id, ref.attempt, ref.rank, reason::kStaleRank});
        // It runs in a slot until it has exited (a deleted job's kind is
        // unknown: not counted).
        auto job = jobs_.find(ref.job_id);
        if (job != jobs_.end()) HoldStoppingLocked(job->second.device_kind, {kills.back()});
      }
    }
    SendKillsLocked(kills);
    TERN_LOG(INFO) << "agent " << agent.id << " registered from " << agent.host << " ("
                   << reg.running.size() << " ranks running)";
    AdmitAndLogLocked(now);
    return Lease{agent.id, agent.lease_expires};
  }();
  TERN_RETURN_IF_ERROR(FinishLocked(lock, result.status()));
  return result;
}

StatusOr<Lease> Scheduler::Heartbeat(const std::string& agent_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = agents_.find(agent_id);
  if (it == agents_.end() || !it->second->live) {
    return NotFoundError("agent " + agent_id +
                         " is not registered (lease expired?); register again");
  }
  it->second->lease_expires = clock_->Now() + options_.agent_lease_ttl;
  return Lease{agent_id, it->second->lease_expires};
}

Status Scheduler::DrainAgent(const std::string& agent_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = agents_.find(agent_id);
  if (it == agents_.end() || !it->second->live) {
    return NotFoundError("agent " + agent_id + " is not registered");
  }
  if (!it->second->draining) {
    TERN_LOG(INFO) << "agent " << agent_id
                   << " is draining: no new work is placed on it";
  }
  it->second->draining = true;
  return OkStatus();
}

Status Scheduler::DeregisterAgent(const std::string& agent_id) {
  std::unique_lock<std::mutex> lock(mu_);
  Status status = [&]() -> Status {
    const TimePoint now = clock_->Now();
    auto it = agents_.find(agent_id);
    if (it == agents_.end() || !it->second->live) {
      return NotFoundError("agent " + agent_id + " is not registered");
    }
    TERN_RETURN_IF_ERROR(LoseAgentLocked(agent_id, reason::kAgentDeregistered,
                                         "agent " + agent_id + " deregistered", now));
    AdmitAndLogLocked(now);
    return OkStatus();
  }();
  return FinishLocked(lock, std::move(status));
}

StatusOr<AgentWork> Scheduler::TakeAgentWork(const std::string& agent_id,
                                             milliseconds max_wait) {
  std::unique_lock<std::mutex> lock(mu_);
  auto live_agent = [&]() -> Agent* {
    auto it = agents_.find(agent_id);
    return it == agents_.end() || !it->second->live ? nullptr
                                                    : it->second.get();
  };
  changed_.wait_for(lock, max_wait, [&] {
    Agent* agent = live_agent();
    return agent == nullptr || !agent->outbox.empty();
  });
  Agent* agent = live_agent();
  if (agent == nullptr) {
    return NotFoundError("agent " + agent_id + " is not registered");
  }
  return std::exchange(agent->outbox, AgentWork());
}

StatusOr<const Job*> Scheduler::CurrentRankLocked(const RankRef& ref) const {
  auto it = jobs_.find(ref.job_id);
  if (it == jobs_.end()) {
    return NotFoundError("job " + std::to_string(ref.job_id) +
                         " does not exist");
  }
  const Job& job = it->second;
  if (ref.rank < 0 || ref.rank >= job.world_size) {
    return InvalidArgumentError("rank: " + std::to_string(ref.rank) +
                                " is outside [0, " +
                                std::to_string(job.world_size) + ")");
  }
  if (ref.attempt < 1 || ref.attempt > job.attempt) {
    return FailedPreconditionError("job " + std::to_string(job.id) +
                                   " attempt " + std::to_string(ref.attempt) +
                                   " was never assigned (latest is " +
                                   std::to_string(job.attempt) + ")");
  }
  if (ref.attempt < job.attempt || !HoldsSlots(job.state)) {
    return static_cast<const Job*>(nullptr);  // stale: acknowledged, ignored
  }
  const RankPlacement& r = job.ranks.at(ref.rank);
  if (r.agent_id != ref.agent_id) {
    return FailedPreconditionError(
        "job " + std::to_string(job.id) + " rank " + std::to_string(ref.rank) +
        " runs on agent " + r.agent_id + ", not " + ref.agent_id);
  }
  return &job;
}

Status Scheduler::ReportRankStarted(const RankRef& rank) {
  std::unique_lock<std::mutex> lock(mu_);
  Status status = [&]() -> Status {
    TERN_ASSIGN_OR_RETURN(const Job* current, CurrentRankLocked(rank));
    if (current == nullptr) return OkStatus();
    return MarkRankStartedLocked(*current, rank);
  }();
  return FinishLocked(lock, std::move(status));
}

Status Scheduler::MarkRankStartedLocked(const Job& current, const RankRef& rank) {
  if (current.ranks[rank.rank].state != RankState::kAssigned) return OkStatus();
  Job job = current;
  job.ranks[rank.rank].state = RankState::kRunning;
  std::vector<JobEvent> events;
  TERN_RETURN_IF_ERROR(AdvanceJob(&job, &events, clock_->Now()));
  const bool cancelling = job.state == JobState::kCancelling;
  TERN_RETURN_IF_ERROR(CommitLocked(std::move(job), std::move(events)));
  if (cancelling) {  // it started after the kill order went out: say it again
    SendKillsLocked(
        {KillOrder{rank.agent_id, rank.job_id, rank.attempt, rank.rank, reason::kCancelledByUser}});
  }
  return OkStatus();
}

StatusOr<std::vector<RankRef>> Scheduler::ReconcileRunningRanks(
    const std::string& agent_id, const std::vector<RankRef>& running) {
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<RankRef> unexpected;
  Status status = [&]() -> Status {
    auto agent = agents_.find(agent_id);
    std::map<std::tuple<JobId, int, int>, std::string>* stopping =
        agent != agents_.end() && agent->second->live ? &agent->second->stopping : nullptr;
    std::set<std::tuple<JobId, int, int>> listed;
    for (const RankRef& ref : running) {
      listed.insert({ref.job_id, ref.attempt, ref.rank});
      auto it = jobs_.find(ref.job_id);
      if (it == jobs_.end() || !IsExpectedRank(it->second, ref)) {
        unexpected.push_back(ref);
        // Killed by the answer: it runs in a slot until it has exited.
        if (stopping != nullptr && it != jobs_.end()) {
          stopping->emplace(std::make_tuple(ref.job_id, ref.attempt, ref.rank),
                            it->second.device_kind);
        }
        continue;
      }
      TERN_RETURN_IF_ERROR(MarkRankStartedLocked(it->second, ref));
    }
    // A stopping rank the heartbeat no longer lists has exited.
    bool freed = false;
    if (stopping != nullptr) {
      for (auto it = stopping->begin(); it != stopping->end();) {
        if (listed.count(it->first) != 0) {
          ++it;
        } else {
          it = stopping->erase(it);
          freed = true;
        }
      }
    }
    if (freed) AdmitAndLogLocked(clock_->Now());
    return OkStatus();
  }();
  // Waits for the commit of these and of any earlier write the verdicts
  // rest on, so that no kill order follows from a state that did not last.
  TERN_RETURN_IF_ERROR(FinishLocked(lock, std::move(status)));
  return unexpected;
}

Status Scheduler::ReportRankExit(const RankExit& exit) {
  std::unique_lock<std::mutex> lock(mu_);
  Status status = [&]() -> Status {
    const TimePoint now = clock_->Now();
    auto agent = agents_.find(exit.rank.agent_id);
    const bool freed =
        agent != agents_.end() &&
        agent->second->stopping.erase({exit.rank.job_id, exit.rank.attempt, exit.rank.rank}) != 0;
    TERN_ASSIGN_OR_RETURN(const Job* current, CurrentRankLocked(exit.rank));
    if (current == nullptr) {  // an earlier attempt's (acknowledged, ignored)
      if (freed) AdmitAndLogLocked(now);
      return OkStatus();
    }
    const RankState before = current->ranks[exit.rank.rank].state;
    if (before == RankState::kSucceeded || before == RankState::kFailed) {
      return OkStatus();  // a repeated report
    }
    Job job = *current;
    RankPlacement& r = job.ranks[exit.rank.rank];
    r.exit_code = exit.exit_code;
    if (job.state == JobState::kCancelling) {  // stopped on the cancellation's order
      r.state = exit.exit_code == 0 ? RankState::kSucceeded : RankState::kFailed;
      std::vector<JobEvent> events;
      TERN_RETURN_IF_ERROR(FinishCancelIfStopped(&job, &events, now));
      const bool ended = IsTerminal(job.state);
      TERN_RETURN_IF_ERROR(CommitLocked(std::move(job), std::move(events)));
      if (ended) AdmitAndLogLocked(now);
      return OkStatus();
    }
    if (exit.exit_code == 0) {
      r.state = RankState::kSucceeded;
      if (r.rank == 0) {
        job.artifact_path = exit.artifact_path;
        job.metrics_json = exit.metrics_json;
      }
      if (collective_failures_.count(job.id) != 0 && !AnyRankUnfinished(job)) {
        // The last rank that ran ended; a peer's collective failed before.
        TERN_RETURN_IF_ERROR(RestartForCollectiveFailureLocked(std::move(job), now));
        AdmitAndLogLocked(now);
        return OkStatus();
      }
      std::vector<JobEvent> events;
      TERN_RETURN_IF_ERROR(AdvanceJob(&job, &events, now));
      const bool ended = IsTerminal(job.state);
      if (job.state == JobState::kSucceeded) {
        JobEvent result;
        result.time = now;
        result.type = JobEventType::kProgress;
        result.reason = reason::kResult;
        result.message = "result of rank 0";
        result.payload = job.metrics_json;
        AppendJobEvent(&job, std::move(result), &events);
      }
      TERN_RETURN_IF_ERROR(CommitLocked(std::move(job), std::move(events)));
      if (ended) AdmitAndLogLocked(now);
      return OkStatus();
    }
    r.state = RankState::kFailed;
    std::string message =
        "rank " + std::to_string(r.rank) + " on agent " + r.agent_id +
        (exit.exit_code > 0 ? " exited with code " + std::to_string(exit.exit_code)
                            : " was killed by signal " + std::to_string(-exit.exit_code));
    if (exit.preempted) {
      message = "rank " + std::to_string(r.rank) + " on agent " + r.agent_id +
                " stopped on request at a committed checkpoint";
    } else if (exit.lease_lost) {
      message = "rank " + std::to_string(r.rank) + " on agent " + r.agent_id +
                " stopped itself: its agent's lease ran out";
    }
    const bool port_in_use = exit.rendezvous_port_in_use && r.rank == 0;
    if (port_in_use) {
      message = "rank 0 on agent " + r.agent_id + " could not listen on rendezvous port " +
                std::to_string(job.rendezvous_port) +
                ": another process holds it; the port is not used there for " +
                Seconds(options_.port_quarantine) + ", the next attempt gets another";
      auto agent = agents_.find(r.agent_id);
      if (agent != agents_.end()) {
        agent->second->quarantined_ports[job.rendezvous_port] = now + options_.port_quarantine;
        // Drop expired entries, so the map stays as small as the range.
        for (auto it = agent->second->quarantined_ports.begin();
             it != agent->second->quarantined_ports.end();) {
          it = it->second <= now ? agent->second->quarantined_ports.erase(it) : std::next(it);
        }
      }
    }
    const bool collective = exit.collective_failed && !exit.preempted && !port_in_use;
    if (collective) {
      message = "rank " + std::to_string(r.rank) + " on agent " + r.agent_id +
                ": a collective with the other ranks failed";
    }
    if (!exit.message.empty()) message += ": " + exit.message;
    if (collective) {
      // A symptom: wait for the cause (another rank's own failure) while
      // ranks still run; the first such report of the attempt is kept.
      if (collective_failures_.count(job.id) == 0) {
        job.last_failure = FailureOf(job, r, exit.exit_code, exit.failure_code,
                                     reason::kCollectiveFailed, message, now);
      }
      if (options_.collective_failure_grace.count() > 0 && AnyRankUnfinished(job)) {
        TERN_LOG(WARNING) << "job " << job.id << " attempt " << job.attempt << ": " << message
                          << "; waiting up to " << Seconds(options_.collective_failure_grace)
                          << " for a rank's own failure before restarting";
        return CommitLocked(std::move(job), {});
      }
      TERN_RETURN_IF_ERROR(RestartForCollectiveFailureLocked(std::move(job), now));
      AdmitAndLogLocked(now);
      return OkStatus();
    }
    const char* why = exit.preempted                           ? reason::kRankPreempted
                      : port_in_use                            ? reason::kRendezvousPortInUse
                      : exit.exit_code > 0 && !exit.lease_lost ? reason::kTrainerFailed
                                                               : reason::kRankLost;
    const bool free = exit.preempted || port_in_use;
    job.last_failure = FailureOf(job, r, exit.exit_code, exit.failure_code, why, message, now);
    TERN_RETURN_IF_ERROR(RestartLocked(std::move(job), why, std::move(message), now,
                                       exit.retryable || free,
                                       free ? RestartCharge::kFree : RestartCharge::kCounted));
    AdmitAndLogLocked(now);
    return OkStatus();
  }();
  return FinishLocked(lock, std::move(status));
}

Status Scheduler::ReportProgress(const RankRef& rank, std::string payload) {
  std::unique_lock<std::mutex> lock(mu_);
  Status status = [&]() -> Status {
    TERN_ASSIGN_OR_RETURN(const Job* current, CurrentRankLocked(rank));
    if (current == nullptr) return OkStatus();
    Job job = *current;
    JobEvent event;
    event.time = clock_->Now();
    event.type = JobEventType::kProgress;
    event.reason = reason::kProgress;
    event.message = "rank " + std::to_string(rank.rank);
    event.payload = std::move(payload);
    std::vector<JobEvent> events;
    AppendJobEvent(&job, std::move(event), &events);
    return CommitLocked(std::move(job), std::move(events));
  }();
  return FinishLocked(lock, std::move(status));
}

Status Scheduler::ReportCheckpoint(const RankRef& rank, int64_t step,
                                   std::string payload) {
  if (step < 0) return InvalidArgumentError("step: must be >= 0");
  std::unique_lock<std::mutex> lock(mu_);
  Status status = [&]() -> Status {
    TERN_ASSIGN_OR_RETURN(const Job* current, CurrentRankLocked(rank));
    if (current == nullptr ||
        (current->last_checkpoint_step && step <= *current->last_checkpoint_step)) {
      return OkStatus();
    }
    Job job = *current;
    job.last_checkpoint_step = step;
    JobEvent event;
    event.time = clock_->Now();
    event.type = JobEventType::kCheckpoint;
    event.reason = reason::kCheckpointCommitted;
    event.message = "checkpoint at step " + std::to_string(step) + " committed (reported by rank " +
                    std::to_string(rank.rank) + ")";
    event.step = step;
    event.payload = std::move(payload);
    std::vector<JobEvent> events;
    AppendJobEvent(&job, std::move(event), &events);
    return CommitLocked(std::move(job), std::move(events));
  }();
  return FinishLocked(lock, std::move(status));
}

// --- Time ------------------------------------------------------------------

Status Scheduler::Tick() {
  std::unique_lock<std::mutex> lock(mu_);
  Status status = [&]() -> Status {
    const TimePoint now = clock_->Now();
    std::vector<std::string> expired;
    for (const auto& [id, agent] : agents_) {
      if (agent->lease_expires <= now) expired.push_back(id);
    }
    for (const std::string& id : expired) {
      const Agent& agent = *agents_.at(id);
      TERN_RETURN_IF_ERROR(LoseAgentLocked(
          id, reason::kAgentLeaseExpired,
          "agent " + id + " lease expired " + Seconds(now - agent.lease_expires) + " ago" +
              (agent.live ? "" : " (did not re-register after a ternd restart)"),
          now));
    }
    std::vector<JobId> settled;
    for (const auto& [id, deadline] : collective_failures_) {
      if (deadline <= now) settled.push_back(id);
    }
    for (JobId id : settled) {
      TERN_RETURN_IF_ERROR(RestartForCollectiveFailureLocked(jobs_.at(id), now));
    }
    std::vector<JobId> due;
    for (JobId id : restarting_) {
      if (jobs_.at(id).restart_not_before <= now) due.push_back(id);
    }
    for (JobId id : due) {
      Job job = jobs_.at(id);
      std::vector<JobEvent> events;
      TERN_RETURN_IF_ERROR(TransitionJob(&job, JobState::kQueued, reason::kRequeued,
                                         RequeueMessage(job), now, &events));
      TERN_RETURN_IF_ERROR(CommitLocked(std::move(job), std::move(events)));
    }
    return AdmitLocked(now);
  }();
  return FinishLocked(lock, std::move(status));
}

std::vector<AgentSummary> Scheduler::ListAgents() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<AgentSummary> out;
  for (const auto& [id, agent] : agents_) {  // a std::map: sorted by id
    AgentSummary a;
    a.id = agent->id;
    a.host = agent->host;
    a.slots = agent->slots;
    a.used = agent->used;
    for (const auto& [key, kind] : agent->stopping) ++a.used[kind];
    a.live = agent->live;
    a.draining = agent->draining;
    a.lease_expires = agent->lease_expires;
    out.push_back(std::move(a));
  }
  return out;
}

SchedulerStats Scheduler::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerStats stats;
  for (const auto& [state, count] : state_counts_) {
    if (count != 0) stats.jobs[state] = count;
  }
  for (const char* kind : {kDeviceCpu, kDeviceCuda}) {
    stats.total_slots[kind] = SlotsLocked(kind, /*free_only=*/false);
    stats.free_slots[kind] = SlotsLocked(kind, /*free_only=*/true);
  }
  for (const auto& [id, agent] : agents_) {
    stats.live_agents += agent->live;
    stats.draining_agents += agent->live && agent->draining;
  }
  stats.jobs_waiting_on_quota = static_cast<int>(waiting_on_quota_.size());
  if (quotas_.size() != 0) {  // and the queued jobs the last pass did not reach
    for (JobId id : queued_) {
      if (wait_reasons_.count(id) == 0 && QuotaWaitLocked(jobs_.at(id))) {
        ++stats.jobs_waiting_on_quota;
      }
    }
  }
  for (const auto& [owner, count] : unfinished_by_owner_) {
    stats.owners[owner].unfinished_jobs = count;
  }
  for (const auto& [owner, slots] : held_by_owner_) stats.owners[owner].slots = slots;
  return stats;
}

// --- Quotas ----------------------------------------------------------------

void Scheduler::SetQuotas(QuotaTable quotas) {
  std::unique_lock<std::mutex> lock(mu_);
  [&] {
    quotas_ = std::move(quotas);
    AdmitAndLogLocked(clock_->Now());
  }();
  (void)FinishLocked(lock, OkStatus());  // a failed commit is logged
}

OwnerUsage Scheduler::UsageOf(const std::string& owner) const {
  std::lock_guard<std::mutex> lock(mu_);
  return UsageOfLocked(owner);
}

int Scheduler::HeldByOwnerLocked(const std::string& owner, const std::string& kind) const {
  auto it = held_by_owner_.find(owner);
  if (it == held_by_owner_.end()) return 0;
  auto held = it->second.find(kind);
  return held == it->second.end() ? 0 : held->second;
}

OwnerUsage Scheduler::UsageOfLocked(const std::string& owner) const {
  OwnerUsage usage;
  auto unfinished = unfinished_by_owner_.find(owner);
  if (unfinished != unfinished_by_owner_.end()) usage.unfinished_jobs = unfinished->second;
  auto held = held_by_owner_.find(owner);
  if (held != held_by_owner_.end()) usage.slots = held->second;
  if (const OwnerQuota* quota = quotas_.For(owner)) usage.quota = *quota;
  return usage;
}

Status Scheduler::CheckSubmitQuotaLocked(const JobRequest& request) const {
  const OwnerQuota* quota = quotas_.For(request.owner);
  if (quota == nullptr) return OkStatus();
  const std::optional<int> limit = quota->SlotLimit(request.device_kind);
  if (limit && request.world_size > *limit) {
    return FailedPreconditionError(
               "the job needs " + SlotCount(request.world_size, request.device_kind) +
               " at once, and " + QuotaName(*quota) + " lets owner " + request.owner +
               " hold at most " + std::to_string(*limit) +
               ": it could never start (ask for fewer ranks, or for a larger quota)")
        .WithReason(error_reason::kQuotaNeverFits)
        .WithMetadata("owner", request.owner)
        .WithMetadata("device_kind", request.device_kind)
        .WithMetadata("slot_limit", std::to_string(*limit))
        .WithQuotaViolation("owner:" + request.owner, "at most " + std::to_string(*limit) + " " +
                                                          request.device_kind + " slots at once (" +
                                                          QuotaName(*quota) + ")");
  }
  if (quota->max_priority && request.priority > *quota->max_priority) {
    return Status(StatusCode::kPermissionDenied,
                  "priority " + std::to_string(request.priority) + " is above the " +
                      std::to_string(*quota->max_priority) + " that " + QuotaName(*quota) +
                      " allows owner " + request.owner)
        .WithReason(error_reason::kPriorityNotAllowed)
        .WithMetadata("owner", request.owner)
        .WithMetadata("max_priority", std::to_string(*quota->max_priority))
        .WithFieldViolation("spec.priority", "at most " + std::to_string(*quota->max_priority) +
                                                 " for owner " + request.owner + " (" +
                                                 QuotaName(*quota) + ")");
  }
  if (quota->max_jobs) {
    const int unfinished = UsageOfLocked(request.owner).unfinished_jobs;
    if (unfinished >= *quota->max_jobs) {
      return Status(StatusCode::kResourceExhausted,
                    "owner " + request.owner + " has " + std::to_string(unfinished) +
                        " unfinished jobs, the most " + QuotaName(*quota) +
                        " allows (jobs=" + std::to_string(*quota->max_jobs) +
                        "); submit again when one ends, or cancel one")
          .WithReason(error_reason::kQuotaExceeded)
          .WithMetadata("owner", request.owner)
          .WithMetadata("max_unfinished_jobs", std::to_string(*quota->max_jobs))
          .WithQuotaViolation("owner:" + request.owner,
                              "at most " + std::to_string(*quota->max_jobs) + " unfinished jobs (" +
                                  QuotaName(*quota) + ")");
    }
  }
  return OkStatus();
}

}  // namespace tern::scheduler
