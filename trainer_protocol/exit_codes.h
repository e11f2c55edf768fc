// Exit codes of tern-trainer. Header-only: tern-agent and ternd read them
// without linking the trainer (or LibTorch).
#ifndef TERN_TRAINER_PROTOCOL_EXIT_CODES_H_
#define TERN_TRAINER_PROTOCOL_EXIT_CODES_H_

namespace tern::trainer {

inline constexpr int kExitFinished = 0;  // trained, artifact written
inline constexpr int kExitFailed = 1;    // training failed ("failed" event)
inline constexpr int kExitBadSpec = 2;   // bad arguments or job spec: a retry fails again
// Stopped on request (SIGUSR1, SIGINT) after every rank committed a
// checkpoint at the step it stopped at, or before training began (nothing
// to save): a restart resumes without losing a step.
inline constexpr int kExitStopped = 3;
// The agent's lease ran out (lease_file.h): ternd has restarted the job
// elsewhere, so the trainer stopped without committing anything more.
inline constexpr int kExitFenced = 4;
// Rank 0 could not listen on its rendezvous port: another process on this
// host holds it. ternd gives the next attempt another port, free of charge.
inline constexpr int kExitRendezvousPortInUse = 5;
// A collective with the other ranks (all-reduce, broadcast, barrier) failed:
// a peer is gone (connection reset) or unreachable (timed out). The cause is
// usually another rank's, so ternd waits briefly for that rank's own report
// before it restarts the job as COLLECTIVE_FAILED.
inline constexpr int kExitCollectiveFailed = 6;

}  // namespace tern::trainer

#endif  // TERN_TRAINER_PROTOCOL_EXIT_CODES_H_
