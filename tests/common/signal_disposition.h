// IgnoresSignal: whether a running process ignores a signal, read from the
// SigIgn mask of /proc/PID/status (Linux). Lets a test check that a daemon or
// trainer it started set its dispositions, without racing for the event the
// disposition is for. Test-only; header-only, no LibTorch.
#ifndef TERN_TESTS_COMMON_SIGNAL_DISPOSITION_H_
#define TERN_TESTS_COMMON_SIGNAL_DISPOSITION_H_

#include <sys/types.h>

#include <fstream>
#include <string>

namespace tern::testing_util {

inline bool IgnoresSignal(pid_t pid, int signal) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("SigIgn:", 0) != 0) continue;
    const unsigned long long mask = std::stoull(line.substr(7), nullptr, 16);
    return (mask >> (signal - 1)) & 1ULL;
  }
  return false;
}

}  // namespace tern::testing_util

#endif  // TERN_TESTS_COMMON_SIGNAL_DISPOSITION_H_
