// The agent-lease file: how tern-agent tells its trainers until when their
// work counts, so that a trainer stops writing even when its agent cannot
// stop it (frozen by SIGSTOP or a paused VM, or cut off from ternd).
//
// tern-agent writes the file (atomically, in the rank directory) before the
// trainer starts and after every lease renewal, and names it in
// TERN_LEASE_FILE. It holds one decimal integer: the deadline, in
// nanoseconds of std::chrono::steady_clock (CLOCK_MONOTONIC on Linux, one
// clock for every process on the machine): the renewal's send time plus the
// lease TTL, never later than ternd's own expiry of the lease. Past it,
// ternd restarts the job elsewhere, so the trainer commits nothing more and
// exits kExitFenced (exit_codes.h).
//
// Header-only: the agent writes what the trainer reads without linking it.
#ifndef TERN_TRAINER_PROTOCOL_LEASE_FILE_H_
#define TERN_TRAINER_PROTOCOL_LEASE_FILE_H_

#include <charconv>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tern::trainer {

inline constexpr char kLeaseFileEnv[] = "TERN_LEASE_FILE";

inline std::string FormatLeaseDeadline(std::chrono::steady_clock::time_point deadline) {
  return std::to_string(
             std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch())
                 .count()) +
         "\n";
}

// nullopt unless `text` is one non-negative decimal integer (a newline after
// it allowed).
inline std::optional<std::chrono::steady_clock::time_point> ParseLeaseDeadline(
    std::string_view text) {
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  int64_t ns = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, ns);
  if (text.empty() || ec != std::errc() || ptr != end || ns < 0) return std::nullopt;
  return std::chrono::steady_clock::time_point(
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          std::chrono::nanoseconds(ns)));
}

}  // namespace tern::trainer

#endif  // TERN_TRAINER_PROTOCOL_LEASE_FILE_H_
