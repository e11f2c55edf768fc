// FsConfinement: a Landlock ruleset (Linux 5.13+) that lets a trainer create,
// change, rename or remove files only beneath given directories and,
// optionally, read and execute files only beneath given directories (or
// those files themselves). The kernel enforces the rules for the trainer and
// every process it starts, whatever path, symlink or ".." it uses. Without
// read rules, reads, execution and device ioctls stay unrestricted (what a job
// may read is then checked by name only, path_policy/spec_paths.h); device ioctls
// always do (CUDA and NCCL need them).
//
// Usage (tern-agent, when an assignment carries a PathGrant):
//   FsRules rules;
//   rules.writable = {...};
//   rules.readable = SystemReadablePaths();  // + data roots: confine reads too
//   TERN_ASSIGN_OR_RETURN(FsConfinement c, FsConfinement::Create(rules));
//   options.landlock_ruleset_fd = c.fd();   // ChildProcess applies it
//   ChildProcess::Start(options);           // while `c` is alive
// Not thread-safe per object; distinct objects are independent.
#ifndef TERN_WORKER_AGENT_FS_CONFINEMENT_H_
#define TERN_WORKER_AGENT_FS_CONFINEMENT_H_

#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace tern::agent {

struct FsRules {
  // Read and write beneath these directories (absolute).
  std::vector<std::string> writable;
  // Set: reads (opening files and listing directories) and execution are
  // confined as well, to beneath these paths (absolute directories, or
  // single files) and `writable`. nullopt: reads are not confined.
  std::optional<std::vector<std::string>> readable;
};

// What every process needs to read on a Linux system, and nothing of a
// user's: the system's programs, libraries and their configuration (/usr,
// /lib*, /bin, /sbin, /opt), /proc, /sys, /dev, and the files of /etc that
// the loader, the C library's name service and the time zone read (not /etc
// as a whole: keys and tokens often live there).
std::vector<std::string> SystemReadablePaths();

class FsConfinement {
 public:
  // The Landlock ABI version the kernel offers; 0 when it offers none
  // (an older kernel, Landlock disabled, or a seccomp profile that blocks it).
  static int AbiVersion();

  // Handles every write-type access right of the kernel's ABI (and the read
  // rights when rules.readable is set) and allows them beneath each path of
  // the rules. A path that does not exist is left out, so nothing beneath it
  // is allowed. UNAVAILABLE when the kernel offers no Landlock; INTERNAL when
  // a syscall fails.
  static StatusOr<FsConfinement> Create(const FsRules& rules);

  FsConfinement(FsConfinement&& other) noexcept;
  FsConfinement& operator=(FsConfinement&& other) noexcept;
  FsConfinement(const FsConfinement&) = delete;
  FsConfinement& operator=(const FsConfinement&) = delete;
  ~FsConfinement();

  // The ruleset: ChildProcess::Options::landlock_ruleset_fd.
  int fd() const { return fd_; }
  // The writable directories that got a rule (existing ones).
  const std::vector<std::string>& allowed() const { return allowed_; }
  // The readable paths that got a rule; empty when reads are not confined.
  const std::vector<std::string>& readable() const { return readable_; }
  bool confines_reads() const { return confines_reads_; }

 private:
  explicit FsConfinement(int fd) : fd_(fd) {}
  int fd_ = -1;
  bool confines_reads_ = false;
  std::vector<std::string> allowed_;
  std::vector<std::string> readable_;
};

}  // namespace tern::agent

#endif  // TERN_WORKER_AGENT_FS_CONFINEMENT_H_
