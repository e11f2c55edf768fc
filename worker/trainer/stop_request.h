// Stopping a trainer on request without losing a step: what tern-agent does
// when it drains (SIGUSR1), and what Ctrl-C (SIGINT) does by hand.
//
// During the training loop a request is a vote: every rank adds its vote to
// the gradient all-reduce, and the ranks read the result at the same steps
// (every step on the CPU; on a GPU at progress reports and every
// kStopCheckEverySteps steps, where the loop syncs anyway or cheaply). Once
// any rank voted, every rank commits a checkpoint of the current step (unless
// one was just committed), waits at a barrier until rank 0 has written the
// commit marker, and RunTraining returns StoppedOnRequest: tern-trainer emits
// "stopped" and exits kExitStopped (exit_codes.h); a request during the last
// epoch's evaluation is taken by one more vote after the loop. Outside the
// loop (set-up, rendezvous, data loading before it; final evaluation and
// export after it, whose checkpoint is committed) nothing would be lost, so
// the handler exits kExitStopped at once. A second signal while a stop is
// pending ends the process at once (the signal's default action).
//
// A trainer also stops when the lease of the agent that runs it runs out
// (AgentLeaseWatch below), without committing anything more. The training
// loop notices at its next check; StartLeaseWatchdog ends the process where
// it cannot (blocked writing events to a frozen agent's full pipe, in a
// collective, in set-up or export).
//
// Usage: tern-trainer's main() calls InstallStopHandlers(); RunTraining holds
// a TrainingLoopScope around its loop and polls StopRequested(). Without the
// handlers (tests, `compare`) only RequestStop() sets the flag.
#ifndef TERN_WORKER_TRAINER_STOP_REQUEST_H_
#define TERN_WORKER_TRAINER_STOP_REQUEST_H_

#include <chrono>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace tern::trainer {

// On a GPU the vote is read at least this often (a host sync per read).
inline constexpr int64_t kStopCheckEverySteps = 10;

// SIGUSR1 and SIGINT handlers; once, from main(), before any thread starts.
void InstallStopHandlers();
// Whether a stop was requested (a signal, or RequestStop()).
bool StopRequested();
// As if a signal came inside the loop; ClearStopRequest() undoes it (tests).
void RequestStop();
void ClearStopRequest();

// While one exists, a signal sets the request instead of exiting at once.
class TrainingLoopScope {
 public:
  TrainingLoopScope();
  ~TrainingLoopScope();
  TrainingLoopScope(const TrainingLoopScope&) = delete;
  TrainingLoopScope& operator=(const TrainingLoopScope&) = delete;
};

// The status RunTraining returns after a stop at `step` (CANCELLED), and the
// test for it.
Status StoppedOnRequest(int64_t step);
bool IsStoppedOnRequest(const Status& status);

// The agent's lease as the trainer sees it (lease_file.h). RunTraining checks
// it where it reads the stop vote and before writing a checkpoint or its
// commit marker; past the deadline it returns Fenced() and tern-trainer exits
// kExitFenced.
class AgentLeaseWatch {
 public:
  // "": no lease (run by hand, or by an older agent): never expired.
  explicit AgentLeaseWatch(std::string path = "");
  // Reads the file. One that cannot be read or parsed counts as not expired
  // (the agent rewrites it every renewal); the first such read is logged.
  bool Expired();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool warned_ = false;
};

// The backstop of AgentLeaseWatch: a thread that reads the lease file every
// 200 ms and, once `grace` past its deadline, ends the process with
// kExitFenced whatever the other threads are doing (its note on stderr only
// if a write there would not block). So a trainer never runs longer than its
// agent's lease plus `grace` (plus one read), even while its agent is frozen.
// Nothing with an empty `path`. Once, from main().
inline constexpr std::chrono::milliseconds kLeaseWatchdogGrace{2000};
void StartLeaseWatchdog(const std::string& path,
                        std::chrono::milliseconds grace = kLeaseWatchdogGrace);

// ABORTED, naming the lease file; and the test for it.
Status Fenced(const std::string& lease_file);
bool IsFenced(const Status& status);

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_STOP_REQUEST_H_
