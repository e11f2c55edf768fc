#include "worker/trainer/stop_request.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "common/file_util.h"
#include "common/logging.h"
#include "trainer_protocol/exit_codes.h"
#include "trainer_protocol/lease_file.h"

namespace tern::trainer {
namespace {

// Lock-free atomics: read and written from the signal handler.
std::atomic<bool> g_requested{false};
std::atomic<bool> g_in_loop{false};
static_assert(std::atomic<bool>::is_always_lock_free);

constexpr char kStopMessage[] = "stopped on request";
constexpr char kFencedMessage[] = "fenced: ";

void WriteStderr(const char* text) {
  // write(2) is async-signal-safe; a short write only shortens the message.
  const ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

void OnStopSignal(int signal) {
  if (!g_in_loop.load()) {
    WriteStderr("tern-trainer: stop requested outside the training loop; nothing to save, "
                "exiting 3\n");
    ::_exit(kExitStopped);
  }
  if (g_requested.exchange(true)) {
    // A second request: stop now, as the signal's default action does.
    ::signal(signal, SIG_DFL);
    ::raise(signal);
    return;
  }
  WriteStderr("tern-trainer: stop requested; committing a checkpoint at the next step, then "
              "exiting 3 (signal again to stop at once)\n");
}

}  // namespace

void InstallStopHandlers() {
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // reads and writes go on; the loop polls
  ::sigaction(SIGUSR1, &action, nullptr);
  ::sigaction(SIGINT, &action, nullptr);
}

bool StopRequested() { return g_requested.load(); }
void RequestStop() { g_requested.store(true); }
void ClearStopRequest() { g_requested.store(false); }

TrainingLoopScope::TrainingLoopScope() { g_in_loop.store(true); }
TrainingLoopScope::~TrainingLoopScope() { g_in_loop.store(false); }

Status StoppedOnRequest(int64_t step) {
  return Status(StatusCode::kCancelled,
                std::string(kStopMessage) + " at step " +
                    std::to_string(step) + " after every rank committed its checkpoint");
}

bool IsStoppedOnRequest(const Status& status) {
  return status.code() == StatusCode::kCancelled &&
         status.message().rfind(kStopMessage, 0) == 0;
}

AgentLeaseWatch::AgentLeaseWatch(std::string path) : path_(std::move(path)) {}

bool AgentLeaseWatch::Expired() {
  if (path_.empty()) return false;
  const StatusOr<std::string> text = ReadFileToString(path_);
  const auto deadline = text.ok() ? ParseLeaseDeadline(*text) : std::nullopt;
  if (!deadline) {
    if (!warned_) {
      TERN_LOG(WARNING) << "agent lease file " << path_ << ": "
                        << (text.ok() ? "not a deadline" : text.status().ToString())
                        << "; going on as if the lease were valid";
      warned_ = true;
    }
    return false;
  }
  return std::chrono::steady_clock::now() > *deadline;
}

void StartLeaseWatchdog(const std::string& path, std::chrono::milliseconds grace) {
  if (path.empty()) return;
  std::thread([path, grace] {
    while (true) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      const StatusOr<std::string> text = ReadFileToString(path);
      const auto deadline = text.ok() ? ParseLeaseDeadline(*text) : std::nullopt;
      if (!deadline || std::chrono::steady_clock::now() <= *deadline + grace) continue;
      // stderr may be a pipe its frozen reader no longer drains: write only
      // when a short note fits without blocking (POLLOUT: PIPE_BUF free).
      pollfd out{STDERR_FILENO, POLLOUT, 0};
      if (::poll(&out, 1, 0) == 1 && (out.revents & POLLOUT) != 0) {
        WriteStderr(
            "tern-trainer: fenced: the agent's lease ran out and the trainer did not "
            "stop by itself; exiting 4 at once\n");
      }
      ::_exit(kExitFenced);
    }
  }).detach();
}

Status Fenced(const std::string& lease_file) {
  return Status(StatusCode::kAborted,
                std::string(kFencedMessage) + "the agent's lease (" + lease_file +
                    ") ran out, so ternd has restarted the job; stopped without writing more");
}

bool IsFenced(const Status& status) {
  return status.code() == StatusCode::kAborted &&
         status.message().rfind(kFencedMessage, 0) == 0;
}

}  // namespace tern::trainer
