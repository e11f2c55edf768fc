// AgentOptions: what a tern-agent is configured with (agent.h runs it),
// checked once by Validate(). Also what every confined trainer of the agent
// may read (TrainerReadable), which Validate checks the agent's own secrets
// against.
//
// Plain data; Validate() and TrainerReadable() are const and thread-safe.
#ifndef TERN_WORKER_AGENT_AGENT_OPTIONS_H_
#define TERN_WORKER_AGENT_AGENT_OPTIONS_H_

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace tern::agent {

struct AgentOptions {
  std::string agent_id;                             // 1..128 of [A-Za-z0-9_.-]
  std::string host = "127.0.0.1";                   // where other ranks reach this machine's ranks
                                                    // (TERN_BIND_ADDR of every trainer)
  int cpu_slots = 0;                                // CPU ranks run at once
  int cuda_slots = 0;                               // GPUs; rank i gets CUDA_VISIBLE_DEVICES=<slot>
  std::string trainer_path;                         // tern-trainer executable (absolute)
  std::string workdir;                              // per-job files (see above); created
  std::chrono::milliseconds rpc_timeout{5000};      // deadline of unary calls
  std::chrono::milliseconds kill_grace{10000};      // kill orders without one
  std::chrono::milliseconds shutdown_grace{20000};  // shutdown (a drain), lost lease
  std::chrono::milliseconds flush_interval{250};    // ReportProgress batching
  std::chrono::milliseconds backoff_min{200};       // reconnect / re-register
  std::chrono::milliseconds backoff_max{5000};
  std::chrono::milliseconds exit_report_retry{60000};  // keep retrying ReportExit
  int stderr_tail_lines = 20;                          // last stderr lines in the exit report
  bool relay_logs = true;                              // stderr lines as `log` events
  // Landlock write confinement of trainers whose assignment carries a
  // PathGrant: kAuto applies it where the kernel offers Landlock (a warning
  // once where not), kOn fails such ranks on a kernel without it, kOff never.
  enum class ConfineWrites { kAuto, kOn, kOff };
  ConfineWrites confine_writes = ConfineWrites::kAuto;
  // Further directories confined trainers may write beneath (e.g. a CUDA
  // cache, ~/.nv); absolute.
  std::vector<std::string> trainer_writable;
  // Landlock read confinement of the same trainers (needs confine_writes
  // kAuto or kOn): kOn confines reads where writes are confined, and fails
  // such ranks on a kernel without Landlock; kOff (the default) leaves reads
  // unrestricted. Opt-in: a LibTorch, CUDA or Python install outside the
  // system directories must be named in trainer_readable.
  enum class ConfineReads { kOff, kOn };
  ConfineReads confine_reads = ConfineReads::kOff;
  // Further paths confined trainers may read beneath; absolute.
  std::vector<std::string> trainer_readable;
  // The agent's own credentials ({flag, path}, e.g. {"--tls-key", ...}):
  // with confine_reads kOn, Validate refuses one that a trainer could read.
  std::vector<std::pair<std::string, std::string>> secret_files;
  // INVALID_ARGUMENT naming the field: bad agent_id, no slots, slots out of
  // [0, 1024], empty trainer_path or workdir, non-positive durations,
  // confine_reads without confine_writes, a secret file trainers could read.
  Status Validate() const;
};

// What every confined trainer of this agent may read, whatever its job: the
// system's directories, the trainer's own directory, trainer_readable and
// trainer_writable.
std::vector<std::string> TrainerReadable(const AgentOptions& options);

}  // namespace tern::agent

#endif  // TERN_WORKER_AGENT_AGENT_OPTIONS_H_
