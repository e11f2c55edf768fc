// Scheduler: the job queue, gang admission and agent leases of ternd.
//
// Usage: Scheduler::Create(options, SqliteJobStore::Open(path), clock); then
// SubmitJob/GetJob/ListJobs/CancelJob/ReadEvents for clients, RegisterAgent/
// Heartbeat/TakeAgentWork/Report* for agents, and Tick() about once a second
// (expires leases, re-queues restarting jobs, runs admission).
//
// Policy:
// - Order: effective priority = priority + aging_per_minute * minutes since
//   submission, highest first; ties by submission time, then id (FIFO). A
//   re-queued job keeps its submission time, hence its age.
// - Gang admission: a job of W ranks is admitted only when W free slots of
//   its device kind exist on live agents, all at once; ranks are packed onto
//   the agents with most free slots, rank 0 first, and rank 0's agent gets a
//   rendezvous port from the configured range. Slots stay held until the job
//   leaves ADMITTED/RUNNING.
// - Backfill: a job that cannot fit (the head of its device kind) lets later
//   jobs of that kind that do fit start ahead of it, for backfill_window;
//   after that it reserves the kind: nothing behind it is admitted until it
//   starts. A job larger than the kind's registered capacity never blocks.
// - Quotas (SetQuotas, scheduler/quota.h): a queued job whose ranks would
//   take its owner past the owner's slot quota of its kind is skipped (it
//   waits, saying so) and neither becomes a kind's head nor reserves slots,
//   so one owner at its quota holds back no other owner. SubmitJob refuses a
//   job that could never fit its owner's quota (FAILED_PRECONDITION), one
//   beyond the owner's unfinished-jobs limit (RESOURCE_EXHAUSTED) and one
//   above the owner's highest priority (PERMISSION_DENIED).
// - Success: a job SUCCEEDS when every rank of the attempt exits 0; the
//   result (artifact path, metrics) is rank 0's, and a kProgress event with
//   reason RESULT and payload = rank 0's metrics_json follows the
//   SUCCEEDED state change (the job's last event).
// - Failure: a rank exiting non-zero (TRAINER_FAILED, or RANK_LOST on a
//   signal), an agent's lease expiring or a rank missing from a
//   re-registering agent moves the job to RESTARTING: the other ranks get
//   kill orders, the slots are freed, and after a backoff the job is QUEUED
//   again to resume from its last committed checkpoint; beyond max_restarts
//   it is FAILED (RESTART_BUDGET_EXHAUSTED). A rank exit marked not
//   retryable (RankExit::retryable: the spec, data or paths are at fault)
//   goes on from RESTARTING to FAILED at once (FAILURE_NOT_RETRYABLE).
//   Job::last_failure records each rank failure or loss. A rank whose
//   collective with its peers failed (COLLECTIVE_FAILED) is a symptom: the
//   job waits up to collective_failure_grace for another rank's own failure
//   and restarts for that cause instead, which a user can act on.
// - Cancellation: a job with a rank that reported its start (ADMITTED or
//   RUNNING) becomes CANCELLING: its ranks get kill orders and it keeps its
//   slots until every such rank has reported its exit, or its agent's lease
//   ended (expired, deregistered, or re-registered without the rank); then
//   CANCELLED. Kill orders go out again when its agent re-registers (after a
//   ternd restart too). A job with no started rank (QUEUED, RESTARTING, or
//   ADMITTED before any start) is CANCELLED at once; a rank that had not
//   reported its start still gets its kill order, but is not waited for.
// - Order is kept in a sorted set (aging adds the same amount to every job,
//   so it never reorders two jobs), and an admission pass stops as soon as
//   no device kind can admit anything more: a submission into a queue that
//   cannot move costs the same at 10 or 100,000 queued jobs. Wait reasons
//   of the jobs a pass did not reach are worked out when asked for.
// - Durability: every acknowledged change is in the JobStore before the call
//   returns OK; a new Scheduler over the same store resumes with it. Agents
//   are not stored: the agents of running jobs must re-register within one
//   lease TTL of the restart (listing the ranks they still run).
// - Group commit (CommitMode::kGroup, the default): a call changes memory
//   under the lock and queues its store writes; one committer at a time (the
//   calling thread when no commit is under way, else the writer thread once
//   it is) commits everything queued in one transaction (one fsync) and then
//   answers every call of that batch. What a change sends out (assignments, kill orders,
//   event notifications) waits for its commit. GetJob, ListJobs and
//   ReadEvents show no change that is not committed yet (they wait for it, or
//   leave out jobs whose submission is not committed). A failed commit fails
//   every call of the batch and of the batch queued behind it, and the
//   scheduler reloads its jobs from the store, so memory again matches it.
//   CommitMode::kPerCall commits each change in its own transaction under
//   the lock, as before group commit (kept to compare the two).
//
// Thread-safe: one mutex guards all state. ReadEvents and TakeAgentWork may
// block up to their max_wait (real time); a changing call blocks until its
// batch is committed. Destroy the Scheduler only once no call is in flight.
#ifndef TERN_SCHEDULER_SCHEDULER_H_
#define TERN_SCHEDULER_SCHEDULER_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/ports.h"
#include "common/status.h"
#include "scheduler/clock.h"
#include "scheduler/dispatch.h"
#include "scheduler/job.h"
#include "scheduler/job_store.h"
#include "scheduler/quota.h"

namespace tern::scheduler {

enum class CommitMode {
  kGroup,    // many calls' changes share one transaction (one writer thread)
  kPerCall,  // each change its own transaction, under the scheduler's lock
};
const char* CommitModeName(CommitMode mode);  // "group", "per-call"
// INVALID_ARGUMENT naming the accepted values.
StatusOr<CommitMode> ParseCommitMode(std::string_view name);

struct SchedulerOptions {
  // Effective priority a queued job gains per minute since its submission.
  double aging_per_minute = 1.0;
  // How long a blocked head job lets later jobs that fit pass it before it
  // reserves its device kind; 0 = strict priority order.
  std::chrono::milliseconds backfill_window{std::chrono::minutes(5)};
  std::chrono::milliseconds agent_lease_ttl{std::chrono::seconds(15)};
  // Delay before a restarted job is queued again: doubles with every restart
  // of the job, up to max_restart_backoff. 0 = queue it at once.
  std::chrono::milliseconds restart_backoff{std::chrono::seconds(2)};
  std::chrono::milliseconds max_restart_backoff{std::chrono::minutes(1)};
  // A rank whose collective failed (RankExit::collective_failed) is usually
  // the symptom of another rank's failure, whose report may come a moment
  // later (another agent; or the same one, which reaped it second). While
  // other ranks of the attempt still run, the job waits this long for such a
  // report and restarts for it (RANK_LOST, TRAINER_FAILED, ...); when none
  // comes, or every rank's collective failed, it restarts as
  // COLLECTIVE_FAILED. 0 = restart at the first report.
  std::chrono::milliseconds collective_failure_grace{std::chrono::seconds(5)};
  // Range rank 0's rendezvous port is taken from, per agent, inclusive.
  // Each agent hands its ports out in turn (the next attempt of a job gets
  // another port), and a port that rank 0 found taken by another process
  // (RENDEZVOUS_PORT_IN_USE) is not handed out on that agent again for
  // port_quarantine. The default range avoids PyTorch's 29500 (torchrun),
  // Kubernetes' NodePorts (30000-32767) and the kernel's ephemeral ports.
  int rendezvous_port_min = kDefaultRendezvousPortMin;
  int rendezvous_port_max = kDefaultRendezvousPortMax;
  std::chrono::milliseconds port_quarantine{std::chrono::minutes(10)};
  int max_world_size = 1024;        // SubmitJob rejects larger jobs
  int default_page_size = 50;       // ListJobs with page_size 0
  int max_page_size = 500;          // larger page sizes are lowered to this
  CommitMode commit_mode = CommitMode::kGroup;  // see the header comment
  Status Validate() const;
};

// SubmitJobRequest.idempotency_key (job_service.proto): at most this many
// characters, printable ASCII.
constexpr size_t kMaxIdempotencyKeyLength = 128;
// OK for "" (no deduplication) and for 1..kMaxIdempotencyKeyLength printable
// ASCII characters; INVALID_ARGUMENT naming the field otherwise.
Status ValidateIdempotencyKey(std::string_view key);

struct JobRequest {
  std::string owner;                          // required
  std::map<std::string, std::string> labels;  // keys non-empty, without '='
  int priority = 0;
  int world_size = 1;                    // 1..max_world_size
  std::string device_kind = kDeviceCpu;  // "cpu" or "cuda"
  int max_restarts = 0;                  // 0..1000
  std::string idempotency_key;           // optional; ValidateIdempotencyKey
  std::string spec;                      // opaque payload handed to every rank
};

// Why a QUEUED or RESTARTING job waits.
struct WaitReasonInfo {
  std::string code;     // reason::k* wait reason (reason_codes.h)
  std::string message;  // e.g. "needs 4 cuda slots, 2 free"
};

// What Scheduler::RelabelJob stores: a job's new labels and spec payload.
struct Relabel {
  std::map<std::string, std::string> labels;
  std::string spec;
};

struct SubmitResult {
  Job job;
  bool created = true;  // false: an earlier job with the same idempotency key
  // Why `job` waits (Scheduler::WaitReasonOf), as of the same moment as `job`.
  WaitReasonInfo wait_reason;
};

struct ListJobsQuery {
  std::set<JobState> states;  // filters (any of these states); empty matches everything
  std::string owner;
  std::map<std::string, std::string> labels;  // every pair must match
  int page_size = 0;                          // 0: default_page_size
  std::string page_token;  // "" or a previous next_page_token (same filters)
  bool newest_first = false;  // descending id (same on every page)
};

struct ListJobsResult {
  std::vector<Job> jobs;        // ascending id (descending if newest_first)
  std::string next_page_token;  // "" on the last page
};

// One agent as ListAgents reports it.
struct AgentSummary {
  std::string id;
  std::string host;
  std::map<std::string, int> slots;  // by device kind, as registered
  // Held by ADMITTED/RUNNING/CANCELLING jobs and by ranks told to stop that
  // have not exited yet.
  std::map<std::string, int> used;
  bool live = false;      // registered (false: restored, awaiting registration)
  bool draining = false;  // DrainAgent: no new work
  TimePoint lease_expires;
};

// One owner's share of the cluster, as quotas count it.
struct OwnerUsage {
  std::map<std::string, int> slots;  // by device kind: held by ADMITTED/RUNNING jobs
  int unfinished_jobs = 0;           // QUEUED, ADMITTED, RUNNING, RESTARTING
  std::optional<OwnerQuota> quota;   // nullopt: no limits
};

struct SchedulerStats {
  std::map<JobState, int> jobs;            // by state
  std::map<std::string, int> total_slots;  // by device kind, agents taking work
  std::map<std::string, int> free_slots;
  int live_agents = 0;
  int draining_agents = 0;  // live, but taking no work (DrainAgent)
  int jobs_waiting_on_quota = 0;  // QUEUED, held back by their owner's quota
  // Every owner with unfinished jobs (quota left unset).
  std::map<std::string, OwnerUsage> owners;
};

class Scheduler {
 public:
  // Loads every job from `store` (blocks on it). Agents of ADMITTED/RUNNING
  // jobs get one lease TTL from now to re-register. A null `clock` means
  // SystemClock. DATA_LOSS for an inconsistent store; INVALID_ARGUMENT for
  // bad options.
  static StatusOr<std::unique_ptr<Scheduler>> Create(
      SchedulerOptions options, std::unique_ptr<JobStore> store,
      std::shared_ptr<Clock> clock);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // --- Clients ---
  // Validates (INVALID_ARGUMENT naming the field), checks the owner's quota
  // (FAILED_PRECONDITION, RESOURCE_EXHAUSTED, PERMISSION_DENIED), stores and
  // queues the job, then runs admission. An (owner, idempotency_key) seen before returns
  // that job with created=false, whatever the rest of the request says.
  StatusOr<SubmitResult> SubmitJob(const JobRequest& request);
  StatusOr<Job> GetJob(JobId id) const;  // NOT_FOUND
  StatusOr<ListJobsResult> ListJobs(const ListJobsQuery& query) const;
  // Moves a non-terminal job to CANCELLING or CANCELLED (see Cancellation
  // above) and returns the kill orders sent to its ranks' agents (also queued
  // for TakeAgentWork). A CANCELLING job: no-op, no orders. FAILED_PRECONDITION
  // when the job already ended.
  StatusOr<std::vector<KillOrder>> CancelJob(JobId id,
                                             const std::string& message);
  // Why a QUEUED or RESTARTING job waits; code and message "" for other
  // states. NOT_FOUND.
  StatusOr<WaitReasonInfo> WaitReasonOf(JobId id) const;
  // Replaces a job's spec payload and labels, in any state, with what
  // `change` makes of the job as it is now, and stores them (UpdateJob: the
  // display name lives in the spec). Atomic: `change` runs under the
  // scheduler's lock, so no other change of the job comes between what it
  // reads and what is stored. It must be short and must not call the
  // scheduler; it validates what it returns (as for SubmitJob), and its error
  // is returned as is, changing nothing. Records no event. Returns the job;
  // NOT_FOUND.
  StatusOr<Job> RelabelJob(JobId id, const std::function<StatusOr<Relabel>(const Job&)>& change);
  // Removes a SUCCEEDED, FAILED or CANCELLED job and every stored row of it
  // (FAILED_PRECONDITION for another state, NOT_FOUND) and returns it as it
  // was; its (owner, idempotency key) is free afterwards. Files are the
  // caller's business. A deleted job's id is never handed out again, also
  // after a restart (JobStore::HighestJobIdEver).
  StatusOr<Job> DeleteJob(JobId id);
  // WaitReasonOf's message ("needs 4 cuda slots, 2 free").
  StatusOr<std::string> WaitReason(JobId id) const;
  std::vector<JobId> QueueOrder() const;  // QUEUED jobs, next admitted first
  // Replaces the quotas (initially none) and runs admission: a raised
  // quota admits waiting jobs at once; a lowered one stops nothing.
  void SetQuotas(QuotaTable quotas);
  OwnerUsage UsageOf(const std::string& owner) const;
  // A number that changes whenever events are appended to any job. Blocks
  // up to max_wait (real time) until it differs from `seen`; returns it.
  // Lets one thread serve many event streams (server/watch_hub.h).
  uint64_t WaitForEvents(uint64_t seen, std::chrono::milliseconds max_wait) const;
  // A job's newest event and state, without copying the job (NOT_FOUND).
  struct EventHead {
    int64_t last_event_seq = 0;
    JobState state = JobState::kUnspecified;
  };
  StatusOr<EventHead> EventHeadOf(JobId id) const;
  // Events with seq > after_seq (at most max_events, ascending). Blocks up
  // to max_wait for the first one; returns empty when none came.
  StatusOr<std::vector<JobEvent>> ReadEvents(
      JobId id, int64_t after_seq, int max_events,
      std::chrono::milliseconds max_wait = std::chrono::milliseconds(0)) const;

  // --- Agents ---
  // Registers (or re-registers) an agent and reconciles its `running` ranks
  // with the placements: missing started ranks restart their job, unknown
  // ones get kill orders, unstarted ones are assigned again.
  StatusOr<Lease> RegisterAgent(const AgentRegistration& registration);
  StatusOr<Lease> Heartbeat(
      const std::string& agent_id);  // NOT_FOUND: re-register
  // An agent that shuts down: nothing more is placed on it (its slots leave
  // the free and total counts) until it registers again. Its trainers are
  // being stopped at a checkpoint; their exits follow. NOT_FOUND when the
  // agent is not registered.
  Status DrainAgent(const std::string& agent_id);
  // An agent that leaves on purpose: its lease ends now and jobs still
  // placed on it restart (AGENT_DEREGISTERED) without using a restart.
  Status DeregisterAgent(const std::string& agent_id);
  // Takes the agent's pending work, blocking up to max_wait while there is
  // none. NOT_FOUND when the agent is not registered (or was lost meanwhile).
  StatusOr<AgentWork> TakeAgentWork(
      const std::string& agent_id,
      std::chrono::milliseconds max_wait = std::chrono::milliseconds(0));
  // Rank reports. A report about an attempt the scheduler has moved past is
  // acknowledged and ignored; one about an attempt or agent it never
  // assigned is FAILED_PRECONDITION; a rank outside [0, W) INVALID_ARGUMENT.
  Status ReportRankStarted(const RankRef& rank);
  // An agent's heartbeat: of the ranks alive on it (`running`), one the
  // scheduler still expects (IsExpectedRank) and has only assigned is marked
  // started; the others are returned, to be killed. One lock and one commit
  // for all of them, so that a heartbeat listing many ranks is answered as
  // fast as one listing a single rank, however busy the store is.
  // A rank told to stop that `agent_id`'s heartbeat no longer lists has
  // exited: its slot is free again.
  StatusOr<std::vector<RankRef>> ReconcileRunningRanks(const std::string& agent_id,
                                                       const std::vector<RankRef>& running);
  Status ReportRankExit(const RankExit& exit);
  Status ReportProgress(const RankRef& rank, std::string payload);
  // Ignores step <= last; `payload` is kept in the event (opaque).
  Status ReportCheckpoint(const RankRef& rank, int64_t step,
                          std::string payload = {});

  // --- Time ---
  // Expires leases, re-queues jobs whose restart backoff passed, runs
  // admission. Returns the first store error (the next Tick retries).
  Status Tick();
  SchedulerStats Stats() const;
  // Every agent known, sorted by id.
  std::vector<AgentSummary> ListAgents() const;

 private:
  struct Agent;
  struct Placement;
  struct Batch;  // group commit: writes committed together, and their effects
  // Queue order that does not depend on the time (see the header comment).
  struct QueueKey {
    double rank;  // priority - aging_per_minute * minutes since kAgingEpoch
    TimePoint submit_time;
    JobId id;
    bool operator<(const QueueKey& other) const;
  };
  // A job whose latest change is not committed yet.
  struct Unflushed {
    std::shared_ptr<Batch> batch;  // holds its latest write
    bool created = false;          // its submission is not committed either
  };

  Scheduler(SchedulerOptions options, std::unique_ptr<JobStore> store,
            std::shared_ptr<Clock> clock);
  Status LoadLocked();
  // Applies jobs read from the store; agents their ranks name that are not
  // known get a lease until `lease_until`.
  Status ApplyLoadedLocked(std::vector<Job> jobs, TimePoint lease_until);
  // A rank of `current` (its current attempt) reported alive: ASSIGNED
  // becomes RUNNING (committed); in a CANCELLING job it is told to stop
  // again. Anything else is a repeat and changes nothing.
  Status MarkRankStartedLocked(const Job& current, const RankRef& rank);
  // Stores (per-call) or queues (group) the change, then applies it.
  Status CommitLocked(Job job, std::vector<JobEvent> events, bool create = false);
  // Stores (per-call: its own transaction) or queues (group) a kRelabel or
  // kDelete write; memory is the caller's to change once this is OK.
  Status CommitWriteLocked(JobWrite write);
  // Drops a deleted job from memory.
  void ForgetLocked(const Job& job);
  void ApplyLocked(Job job);
  QueueKey QueueKeyOf(const Job& job) const;
  // --- Group commit ---
  void WriterLoop();
  // Takes the open batch, commits it without the lock, answers its calls.
  void CommitOpenBatchLocked(std::unique_lock<std::mutex>& lock);
  // Answers `batch`'s calls; on error fails the open batch and reloads.
  void ResolveLocked(const std::shared_ptr<Batch>& batch, Status status);
  // The newest batch not committed yet (open or being written); null when
  // none (always null per-call).
  std::shared_ptr<Batch> UnresolvedLocked() const;
  // Runs `effect` once everything queued so far is committed (now if so).
  void DeferLocked(std::function<void()> effect);
  // `status` if not OK; else waits until everything queued so far is
  // committed and returns that commit's status. May return with `lock`
  // released: callers return right after it.
  Status FinishLocked(std::unique_lock<std::mutex>& lock, Status status);
  // Waits until job `id` has no uncommitted change.
  void AwaitJobLocked(std::unique_lock<std::mutex>& lock, JobId id) const;
  // WaitReasonOf for `job`, a job of jobs_.
  WaitReasonInfo WaitReasonLocked(const Job& job) const;
  // Why `job` waits on its owner's slot quota; nullopt when it does not.
  std::optional<std::string> QuotaWaitLocked(const Job& job) const;
  void TakeSlotsLocked(const Job& job);
  void ReleaseSlotsLocked(const Job& job);
  Status AdmitLocked(TimePoint now);
  void AdmitAndLogLocked(TimePoint now);
  std::optional<Placement> PlaceLocked(const Job& job, TimePoint now) const;
  // A rendezvous port of `agent` that no job holds and that is not
  // quarantined, searched from the agent's cursor; 0 when none.
  int FreePortLocked(const Agent& agent, TimePoint now) const;
  Status AdmitJobLocked(JobId id, const Placement& placement, TimePoint now);
  std::vector<JobId> QueueOrderLocked(TimePoint now) const;
  int SlotsLocked(const std::string& kind, bool free_only) const;
  OwnerUsage UsageOfLocked(const std::string& owner) const;
  // Adds (sign +1) or removes (-1) `job` from the per-owner counts.
  void CountOwnerLocked(const Job& job, int sign);
  int HeldByOwnerLocked(const std::string& owner, const std::string& kind) const;
  // FAILED_PRECONDITION / RESOURCE_EXHAUSTED: see the header comment.
  Status CheckSubmitQuotaLocked(const JobRequest& request) const;
  // How a restart is charged: kCounted uses one of the job's max_restarts
  // and grows its back-off; kFree (a preempted rank, an agent that left on
  // purpose: not the job's failure) uses none and requeues at once.
  enum class RestartCharge { kCounted, kFree };
  // `retryable` false: FAILED at once (reason::kNotRetryable).
  Status RestartLocked(Job job, const char* why, std::string message,
                       TimePoint now, bool retryable = true,
                       RestartCharge charge = RestartCharge::kCounted);
  // Restarts `job` as COLLECTIVE_FAILED with the message of its attempt's
  // first failed collective (Job::last_failure).
  Status RestartForCollectiveFailureLocked(Job job, TimePoint now);
  Status LoseAgentLocked(const std::string& agent_id, const char* why,
                         const std::string& message, TimePoint now);
  std::vector<KillOrder> KillOrdersLocked(const Job& job,
                                          const char* why) const;
  // The killed ranks keep their slots (Agent::stopping) until they exit.
  void HoldStoppingLocked(const std::string& device_kind, const std::vector<KillOrder>& kills);
  void SendKillsLocked(const std::vector<KillOrder>& kills);
  void SendAssignmentLocked(const Job& job, int rank);
  StatusOr<const Job*> CurrentRankLocked(const RankRef& ref) const;
  StatusOr<std::vector<KillOrder>> CancelJobLocked(JobId id, const std::string& message);
  // A CANCELLING job's rank on a lost agent: marks `job`'s running ranks on
  // `agent_id` exited (all of them when empty) and commits, finishing the
  // cancellation when none runs any more.
  Status LoseCancellingRanksLocked(Job job, const std::string& agent_id, TimePoint now);

  const SchedulerOptions options_;
  const std::unique_ptr<JobStore> store_;
  const std::shared_ptr<Clock> clock_;

  mutable std::mutex mu_;
  mutable std::condition_variable changed_;  // events appended, work queued
  // Group commit (null / idle per-call):
  std::shared_ptr<Batch> open_;       // collecting the calls' writes
  std::shared_ptr<Batch> in_flight_;  // being committed by the writer
  std::map<JobId, Unflushed> unflushed_;
  std::condition_variable writer_wake_;  // writes queued, or stopping
  bool stopping_ = false;
  std::thread writer_;
  uint64_t events_version_ = 0;  // WaitForEvents
  std::map<JobId, Job> jobs_;                // every job ever, by id
  std::map<std::pair<std::string, std::string>, JobId> by_idempotency_key_;
  std::set<JobId> queued_;      // QUEUED
  std::set<QueueKey> queue_order_;  // QUEUED, next admitted first
  std::map<JobState, int> state_counts_;
  std::set<JobId> restarting_;  // RESTARTING
  std::set<JobId> holding_;     // ADMITTED or RUNNING
  // ADMITTED or RUNNING jobs with a failed rank (its collective failed; see
  // collective_failure_grace): restarted as COLLECTIVE_FAILED at this time
  // unless a rank's own failure restarts them first. Derived from the ranks'
  // states in ApplyLocked, so a reloaded job waits one more grace.
  std::map<JobId, TimePoint> collective_failures_;
  std::map<std::string, std::unique_ptr<Agent>> agents_;
  std::map<JobId, WaitReasonInfo> wait_reasons_;  // from the last admission pass
  std::map<JobId, TimePoint> head_since_;      // blocked heads, per device kind
  std::set<JobId> waiting_on_quota_;           // from the last admission pass
  QuotaTable quotas_;
  // Kept by ApplyLocked, so that quota checks need no scan of the jobs:
  std::map<std::string, int> unfinished_by_owner_;  // owner -> non-terminal jobs
  std::map<std::string, std::map<std::string, int>> held_by_owner_;  // owner -> kind -> slots
  JobId next_id_ = 1;
};

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_SCHEDULER_H_
