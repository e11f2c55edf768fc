#include "worker/agent/child_process.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace tern::agent {
namespace {

constexpr int kPipeBytes = 1 << 20;  // stdout and stderr pipe capacity

// Where the child reports a failed setup step before execve succeeds.
struct ChildError {
  int step;  // 0 chdir, 1 execve, 2 other, 3 Landlock
  int error;
};

void CloseIfOpen(int* fd) {
  if (*fd >= 0) {
    ::close(*fd);
    *fd = -1;
  }
}

// In the child between fork and execve: async-signal-safe calls only.
[[noreturn]] void ExecChild(const ChildProcess::Options& options, char* const* argv,
                            char* const* envp, pid_t parent, int stdout_w,
                            int stderr_w, int error_w) {
  auto fail = [&](int step) {
    ChildError e{step, errno};
    ssize_t ignored = ::write(error_w, &e, sizeof e);
    (void)ignored;
    ::_exit(127);
  };
  ::setpgid(0, 0);
  if (options.kill_on_parent_death) {
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(2);
    if (::getppid() != parent) ::_exit(127);  // the agent died before prctl
  }
  // Default signal dispositions and an empty mask (the agent blocks SIGINT
  // and SIGTERM in every thread and waits for them with sigwait).
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);

  if (options.landlock_ruleset_fd >= 0) {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        ::syscall(SYS_landlock_restrict_self, options.landlock_ruleset_fd, 0) != 0) {
      fail(3);
    }
  }
  const int devnull = ::open("/dev/null", O_RDONLY);
  if (devnull < 0) fail(2);
  if (::dup2(devnull, 0) < 0 || ::dup2(stdout_w, 1) < 0 || ::dup2(stderr_w, 2) < 0) {
    fail(2);
  }
  // Close every other fd the agent holds (the error pipe closes on exec).
  const unsigned e = static_cast<unsigned>(error_w);  // >= 3
  if ((e > 3 && ::close_range(3, e - 1, 0) != 0) || ::close_range(e + 1, ~0U, 0) != 0) {
    for (int fd = 3; fd < 65536; ++fd) {
      if (fd != error_w) ::close(fd);
    }
  }
  if (!options.working_dir.empty() && ::chdir(options.working_dir.c_str()) != 0) {
    fail(0);
  }
  ::execve(argv[0], argv, envp);
  fail(1);
  ::_exit(127);
}

}  // namespace

std::string SignalName(int signal) {
  switch (signal) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGSEGV: return "SIGSEGV";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    default: return "SIG" + std::to_string(signal);
  }
}

std::string ExitStatus::ToString() const {
  if (signal != 0) return "signal " + std::to_string(signal) + " (" + SignalName(signal) + ")";
  return "exit code " + std::to_string(exit_code);
}

StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(const Options& options) {
  if (options.argv.empty() || options.argv[0].empty()) {
    return InvalidArgumentError("argv: must name an executable");
  }
  // Everything the child needs is built before fork (no allocation after).
  std::vector<char*> argv;
  for (const std::string& a : options.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const std::string& e : options.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  int out[2] = {-1, -1}, err[2] = {-1, -1}, error_pipe[2] = {-1, -1};
  auto close_all = [&] {
    for (int* fd : {&out[0], &out[1], &err[0], &err[1], &error_pipe[0], &error_pipe[1]}) {
      CloseIfOpen(fd);
    }
  };
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0 ||
      ::pipe2(error_pipe, O_CLOEXEC) != 0) {
    const int e = errno;
    close_all();
    return InternalError(std::string("pipe: ") + std::strerror(e));
  }
  // Room for ~2000 event lines: a trainer whose agent stalls (a slow ternd
  // call, a frozen agent) blocks on stdout much later. Best effort: the
  // kernel caps it at /proc/sys/fs/pipe-max-size for unprivileged users.
  for (int fd : {out[0], err[0]}) ::fcntl(fd, F_SETPIPE_SZ, kPipeBytes);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int e = errno;
    close_all();
    return InternalError(std::string("fork: ") + std::strerror(e));
  }
  if (pid == 0) {
    ExecChild(options, argv.data(), envp.data(), parent, out[1], err[1], error_pipe[1]);
  }
  // Parent. setpgid here too, so the group exists before we ever signal it.
  ::setpgid(pid, pid);
  CloseIfOpen(&out[1]);
  CloseIfOpen(&err[1]);
  CloseIfOpen(&error_pipe[1]);
  ChildError child_error{};
  ssize_t n;
  do {
    n = ::read(error_pipe[0], &child_error, sizeof child_error);
  } while (n < 0 && errno == EINTR);
  CloseIfOpen(&error_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof child_error)) {
    // execve (or a step before it) failed; the child has _exit()ed.
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    close_all();
    const std::string what = child_error.step == 0   ? "chdir " + options.working_dir
                             : child_error.step == 1 ? "exec " + options.argv[0]
                             : child_error.step == 3 ? "confining the writes of " + options.argv[0]
                                                     : "starting " + options.argv[0];
    const std::string message = what + ": " + std::strerror(child_error.error);
    if (child_error.error == ENOENT) return NotFoundError(message);
    if (child_error.error == EACCES || child_error.error == EPERM) {
      return Status(StatusCode::kPermissionDenied, message);
    }
    return InternalError(message);
  }
  for (int fd : {out[0], err[0]}) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  }
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, out[0], err[0]));
}

ChildProcess::~ChildProcess() {
  CloseStdout();
  CloseStderr();
  std::lock_guard<std::mutex> lock(mu_);
  if (!exit_) {
    ::kill(-pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
}

void ChildProcess::CloseStdout() { CloseIfOpen(&stdout_fd_); }
void ChildProcess::CloseStderr() { CloseIfOpen(&stderr_fd_); }

void ChildProcess::SignalGroup(int signal) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!exit_) ::kill(-pid_, signal);
}

std::optional<ExitStatus> ChildProcess::TryWait() {
  std::lock_guard<std::mutex> lock(mu_);
  if (exit_) return exit_;
  siginfo_t info;
  std::memset(&info, 0, sizeof info);
  if (::waitid(P_PID, pid_, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid != pid_) {
    return std::nullopt;
  }
  // Exited: the zombie keeps the group id reserved until it is reaped.
  ::kill(-pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  ExitStatus s;
  if (WIFEXITED(status)) {
    s.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    s.signal = WTERMSIG(status);
  }
  exit_ = s;
  return exit_;
}

}  // namespace tern::agent
