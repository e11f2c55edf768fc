// ChildProcess: one trainer process started with fork + execve, in a process
// group of its own, with its stdout and stderr on pipes.
//
// Usage:
//   ChildProcess::Options o;  o.argv = {"/bin/tern-trainer", "--spec", p};
//   TERN_ASSIGN_OR_RETURN(std::unique_ptr<ChildProcess> child,
//                         ChildProcess::Start(o));
//   poll() on child->stdout_fd() / child->stderr_fd(), read until EOF,
//   child->TryWait() until it returns an exit status.
//   child->SignalGroup(SIGTERM);   // the trainer and everything it started
//
// The child gets PR_SET_PDEATHSIG = SIGKILL, so it dies when the thread that
// started it dies (with the agent): call Start() from a thread that outlives
// the child. It starts with the default signal mask and dispositions, the
// environment given in Options (nothing inherited unless listed), and only
// fds 0 (/dev/null), 1 and 2 open.
//
// Thread safety: SignalGroup() may be called from any thread; the other
// methods belong to one thread (the one that reads the pipes).
#ifndef TERN_WORKER_AGENT_CHILD_PROCESS_H_
#define TERN_WORKER_AGENT_CHILD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace tern::agent {

// How a process ended.
struct ExitStatus {
  int exit_code = -1;  // exit status when it exited normally; -1 when killed
  int signal = 0;      // signal that killed it; 0 when it exited normally
  bool ok() const { return exit_code == 0 && signal == 0; }
  // "exit code 1", "signal 9 (SIGKILL)".
  std::string ToString() const;
};

// "SIGKILL" for 9, "SIG42" for a number without a name.
std::string SignalName(int signal);

class ChildProcess {
 public:
  struct Options {
    std::vector<std::string> argv;  // argv[0] is the executable's path
    std::vector<std::string> env;   // "NAME=value" entries, the whole environment
    std::string working_dir;        // chdir here first; empty: the agent's cwd
    bool kill_on_parent_death = true;  // PR_SET_PDEATHSIG = SIGKILL
    // A Landlock ruleset (FsConfinement::fd()) the child restricts itself
    // to before execve, with PR_SET_NO_NEW_PRIVS; -1: none.
    int landlock_ruleset_fd = -1;
  };

  // Forks and execs. Returns once execve succeeded; INVALID_ARGUMENT for an
  // empty argv, NOT_FOUND / PERMISSION_DENIED / INTERNAL when the executable
  // cannot be run (the errno of the failed execve, chdir or pipe).
  static StatusOr<std::unique_ptr<ChildProcess>> Start(const Options& options);

  // Sends SIGKILL to the group and reaps the child if it is still running.
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  // Read ends of the pipes, non-blocking; -1 after Close*().
  int stdout_fd() const { return stdout_fd_; }
  int stderr_fd() const { return stderr_fd_; }
  void CloseStdout();
  void CloseStderr();

  // Sends `signal` to the child's process group (the child and its
  // descendants). No-op once the child has been reaped. Thread-safe.
  void SignalGroup(int signal);

  // Non-blocking wait: nullopt while the child runs. Once it has exited,
  // SIGKILLs what is left of its process group (while the zombie still holds
  // the group id), reaps it and returns its status (the same on every later
  // call).
  std::optional<ExitStatus> TryWait();

 private:
  explicit ChildProcess(pid_t pid, int stdout_fd, int stderr_fd)
      : pid_(pid), stdout_fd_(stdout_fd), stderr_fd_(stderr_fd) {}

  const pid_t pid_;
  int stdout_fd_;
  int stderr_fd_;
  std::mutex mu_;  // orders SignalGroup against reaping
  std::optional<ExitStatus> exit_;  // set once reaped (guarded by mu_)
};

}  // namespace tern::agent

#endif  // TERN_WORKER_AGENT_CHILD_PROCESS_H_
