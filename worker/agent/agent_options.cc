#include "worker/agent/agent_options.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <optional>

#include "common/utf8.h"
#include "worker/agent/fs_confinement.h"

namespace tern::agent {
namespace {

namespace fs = std::filesystem;

// `path` with symlinks resolved as far as it exists.
std::string Resolved(const std::string& path) {
  std::error_code ec;
  const fs::path resolved = fs::weakly_canonical(path, ec);
  return ec ? path : resolved.string();
}

// The first of `roots` that `path` lies beneath (or is), symlinks resolved.
std::optional<std::string> ReadableRootOf(const std::string& path,
                                          const std::vector<std::string>& roots) {
  const std::string target = Resolved(path);
  for (const std::string& root : roots) {
    const std::string r = Resolved(root);
    if (target == r || (target.size() > r.size() && target.compare(0, r.size(), r) == 0 &&
                        (r == "/" || target[r.size()] == '/'))) {
      return root;
    }
  }
  return std::nullopt;
}

}  // namespace

std::vector<std::string> TrainerReadable(const AgentOptions& options) {
  std::vector<std::string> paths = SystemReadablePaths();
  const std::string trainer_dir = fs::path(Resolved(options.trainer_path)).parent_path().string();
  if (!trainer_dir.empty()) paths.push_back(trainer_dir);
  paths.insert(paths.end(), options.trainer_readable.begin(), options.trainer_readable.end());
  paths.insert(paths.end(), options.trainer_writable.begin(), options.trainer_writable.end());
  return paths;
}

Status AgentOptions::Validate() const {
  if (agent_id.empty() || agent_id.size() > 128 ||
      !std::all_of(agent_id.begin(), agent_id.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
      })) {
    return InvalidArgumentError("agent_id: must be 1..128 characters of [A-Za-z0-9_.-], got " +
                                Quoted(agent_id));
  }
  if (host.empty()) return InvalidArgumentError("host: must not be empty");
  if (cpu_slots < 0 || cpu_slots > 1024)
    return InvalidArgumentError("cpu_slots: must be in [0, 1024]");
  if (cuda_slots < 0 || cuda_slots > 1024) {
    return InvalidArgumentError("cuda_slots: must be in [0, 1024]");
  }
  if (cpu_slots + cuda_slots == 0) {
    return InvalidArgumentError("cpu_slots, cuda_slots: at least one slot is needed");
  }
  if (trainer_path.empty()) return InvalidArgumentError("trainer_path: must not be empty");
  if (workdir.empty()) return InvalidArgumentError("workdir: must not be empty");
  for (auto [name, d] : {std::pair{"rpc_timeout", rpc_timeout},
                         {"kill_grace", kill_grace},
                         {"shutdown_grace", shutdown_grace},
                         {"flush_interval", flush_interval},
                         {"backoff_min", backoff_min},
                         {"backoff_max", backoff_max},
                         {"exit_report_retry", exit_report_retry}}) {
    if (d.count() <= 0) return InvalidArgumentError(std::string(name) + ": must be > 0");
  }
  if (backoff_max < backoff_min) return InvalidArgumentError("backoff_max: must be >= backoff_min");
  if (stderr_tail_lines < 0) return InvalidArgumentError("stderr_tail_lines: must be >= 0");
  for (const auto& [field, dirs] : {std::pair{"trainer_writable", &trainer_writable},
                                    {"trainer_readable", &trainer_readable}}) {
    for (const std::string& dir : *dirs) {
      if (dir.empty() || dir[0] != '/') {
        return InvalidArgumentError(std::string(field) + ": must be absolute paths, got '" + dir +
                                    "'");
      }
    }
  }
  if (confine_reads == ConfineReads::kOn) {
    if (confine_writes == ConfineWrites::kOff) {
      return InvalidArgumentError("confine_reads: on needs confine_writes auto or on");
    }
    const std::vector<std::string> readable = TrainerReadable(*this);
    for (const auto& [flag, path] : secret_files) {
      if (path.empty()) continue;
      if (const std::optional<std::string> root = ReadableRootOf(path, readable)) {
        return InvalidArgumentError("confine_reads: " + flag + " " + path +
                                    " would be readable by every trainer (it lies beneath " +
                                    *root + "); move it out of the trainers' readable paths");
      }
    }
  }
  return OkStatus();
}

}  // namespace tern::agent
