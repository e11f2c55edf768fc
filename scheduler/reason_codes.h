// Every machine-readable reason code ternd emits, in one place.
//
// State reasons: the code of a state change (tern.v1.StateChange.reason,
// Job.state_reason, JobFailure.reason) and of a kill order. Wait reasons: the
// code of Job.wait_reason (why a QUEUED or RESTARTING job is not running).
// Every code here is documented in proto/tern/v1/job.proto's StateReason
// comment, and tests/scheduler/reason_codes_test.cc checks that the two lists
// agree. Never derive a code from a message: set the constant where the
// decision is made.
#ifndef TERN_SCHEDULER_REASON_CODES_H_
#define TERN_SCHEDULER_REASON_CODES_H_

namespace tern::scheduler {

namespace reason {
// --- State reasons ---
inline constexpr char kSubmitted[] = "SUBMITTED";                    // -> QUEUED
inline constexpr char kAdmitted[] = "ADMITTED";                      // QUEUED -> ADMITTED
inline constexpr char kAllRanksStarted[] = "ALL_RANKS_STARTED";      // ADMITTED -> RUNNING
inline constexpr char kAllRanksSucceeded[] = "ALL_RANKS_SUCCEEDED";  // RUNNING -> SUCCEEDED
inline constexpr char kTrainerFailed[] = "TRAINER_FAILED";  // a trainer exited with code > 0
inline constexpr char kRankLost[] = "RANK_LOST";            // signal, or gone from its agent
// A collective between the ranks failed (trainer exit 6) and no rank
// reported a failure of its own within collective_failure_grace: the ranks
// cannot reach each other (a cut network, a hung peer).
inline constexpr char kCollectiveFailed[] = "COLLECTIVE_FAILED";
inline constexpr char kAgentLeaseExpired[] = "AGENT_LEASE_EXPIRED";
inline constexpr char kAgentDeregistered[] = "AGENT_DEREGISTERED";
// A rank stopped on request after committing a checkpoint (its agent shut
// down, or the trainer got SIGUSR1). Not charged to max_restarts.
inline constexpr char kRankPreempted[] = "RANK_PREEMPTED";
// Rank 0 could not listen on its rendezvous port: another process holds it
// on that host. Not the job's fault: not charged to max_restarts, and the
// next attempt gets another port (the taken one is quarantined).
inline constexpr char kRendezvousPortInUse[] = "RENDEZVOUS_PORT_IN_USE";
inline constexpr char kRequeued[] = "REQUEUED";  // RESTARTING -> QUEUED
inline constexpr char kRestartBudgetExhausted[] = "RESTART_BUDGET_EXHAUSTED";
// RESTARTING -> FAILED for a rank failure that a restart would repeat.
inline constexpr char kNotRetryable[] = "FAILURE_NOT_RETRYABLE";
// -> CANCELLING and -> CANCELLED (CancelJob); the message is the caller's.
inline constexpr char kCancelledByUser[] = "CANCELLED_BY_USER";
// Kill orders only: an agent runs a rank the scheduler no longer assigns.
inline constexpr char kStaleRank[] = "STALE_RANK";

inline constexpr const char* kAllStateReasons[] = {
    kSubmitted,
    kAdmitted,
    kAllRanksStarted,
    kAllRanksSucceeded,
    kTrainerFailed,
    kRankLost,
    kCollectiveFailed,
    kAgentLeaseExpired,
    kAgentDeregistered,
    kRankPreempted,
    kRendezvousPortInUse,
    kRequeued,
    kRestartBudgetExhausted,
    kNotRetryable,
    kCancelledByUser,
    kStaleRank,
};

// --- Wait reasons ---
inline constexpr char kInsufficientSlots[] = "INSUFFICIENT_SLOTS";  // too few free or registered
inline constexpr char kSlotsReserved[] = "SLOTS_RESERVED";  // free slots held for a job ahead
inline constexpr char kNoRendezvousPort[] = "NO_RENDEZVOUS_PORT";
inline constexpr char kOwnerQuota[] = "OWNER_QUOTA";  // the owner's jobs hold its slot quota
// Fits, and is admitted by the next admission pass.
inline constexpr char kWaitingForAdmission[] = "WAITING_FOR_ADMISSION";
inline constexpr char kRestartBackoff[] = "RESTART_BACKOFF";  // RESTARTING, backing off

inline constexpr const char* kAllWaitReasons[] = {
    kInsufficientSlots, kSlotsReserved,       kNoRendezvousPort,
    kOwnerQuota,        kWaitingForAdmission, kRestartBackoff,
};

// --- Tags of the stored non-state events (never a StateReason code) ---
inline constexpr char kProgress[] = "PROGRESS";
inline constexpr char kCheckpointCommitted[] = "CHECKPOINT_COMMITTED";
// The kProgress event after SUCCEEDED: payload = Job::metrics_json.
inline constexpr char kResult[] = "RESULT";
}  // namespace reason

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_REASON_CODES_H_
