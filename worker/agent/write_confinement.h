// WriteConfinement: a Landlock ruleset (Linux 5.13+) that lets a trainer
// create, change, rename or remove files only beneath given directories.
// Reads, execution and device ioctls stay unrestricted (the dynamic loader,
// CUDA and NCCL need them); what a job may read is checked by name
// (paths/spec_paths.h). The kernel enforces the rules for the trainer and
// every process it starts, whatever path, symlink or ".." it uses.
//
// Usage (tern-agent, when an assignment carries a PathGrant):
//   TERN_ASSIGN_OR_RETURN(WriteConfinement c, WriteConfinement::Create(dirs));
//   options.landlock_ruleset_fd = c.fd();  // ChildProcess applies it
//   ChildProcess::Start(options);          // while `c` is alive
// Not thread-safe per object; distinct objects are independent.
#ifndef TERN_WORKER_AGENT_WRITE_CONFINEMENT_H_
#define TERN_WORKER_AGENT_WRITE_CONFINEMENT_H_

#include <string>
#include <vector>

#include "common/status.h"

namespace tern::agent {

class WriteConfinement {
 public:
  // The Landlock ABI version the kernel offers; 0 when it offers none
  // (an older kernel, Landlock disabled, or a seccomp profile that blocks it).
  static int AbiVersion();

  // Handles every write-type access right of the kernel's ABI and allows
  // them beneath each of `writable_dirs` (absolute; a directory that does not
  // exist is left out, so nothing beneath it may be written). UNAVAILABLE
  // when the kernel offers no Landlock; INTERNAL when a syscall fails.
  static StatusOr<WriteConfinement> Create(const std::vector<std::string>& writable_dirs);

  WriteConfinement(WriteConfinement&& other) noexcept;
  WriteConfinement& operator=(WriteConfinement&& other) noexcept;
  WriteConfinement(const WriteConfinement&) = delete;
  WriteConfinement& operator=(const WriteConfinement&) = delete;
  ~WriteConfinement();

  // The ruleset: ChildProcess::Options::landlock_ruleset_fd.
  int fd() const { return fd_; }
  // The directories that got a rule (existing ones).
  const std::vector<std::string>& allowed() const { return allowed_; }

 private:
  explicit WriteConfinement(int fd) : fd_(fd) {}
  int fd_ = -1;
  std::vector<std::string> allowed_;
};

}  // namespace tern::agent

#endif  // TERN_WORKER_AGENT_WRITE_CONFINEMENT_H_
