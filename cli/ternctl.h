// ternctl: the command-line client of ternd's JobService.
//
//   ternctl [--server HOST:PORT] [--owner NAME] [--json] [--timeout S]
//           [--tls | --tls-ca F] [--tls-cert F --tls-key F] [--tls-server-name N]
//           COMMAND
//     submit FILE [--method M --epochs N --ranks N --batch-size N --lr X
//                  --name S --label K=V --priority N --device cpu|cuda
//                  --cuda-graph on|off
//                  --idempotency-key K --watch]
//     list [--state S --label K=V --owner NAME --limit N]
//     get ID | watch ID | cancel ID | logs ID [-f] | fetch ID [-o PATH]
//     inspect FILE.tern        (local: no server)
//
// RunTernctl is main() without the process: tests call it with their own
// streams against a fake server. Every unary call has a deadline
// (--timeout); `watch` and `logs -f` streams have none, and `fetch` has 30
// minutes. Owner identity travels as metadata "x-tern-owner". TLS: see
// auth/tls_credentials.h; a bad --tls-* file is a usage error (exit 2).
//
// Exit codes (also in `ternctl --help` and cli/README.md):
//   0 ok; 1 the watched job ended FAILED or CANCELLED; 2 usage error or
//   INVALID_ARGUMENT; 3 NOT_FOUND; 4 server unavailable or deadline exceeded;
//   5 anything else (e.g. FAILED_PRECONDITION, a corrupted download).
#ifndef TERN_CLI_TERNCTL_H_
#define TERN_CLI_TERNCTL_H_

#include <ostream>

#include "common/status.h"

namespace tern::cli {

enum ExitCode : int {
  kExitOk = 0,
  kExitJobFailed = 1,
  kExitUsage = 2,
  kExitNotFound = 3,
  kExitUnavailable = 4,
  kExitOther = 5,
};

// The exit code for a failed call with `code` (kExitOk for kOk).
int ExitCodeFor(StatusCode code);

// Parses `argv` and runs the command. Results go to `out`, diagnostics to
// `err`; `out_is_tty` turns on watch's progress bar. Blocks until the
// command is done; returns the exit code. Thread-compatible (one call per
// thread; each builds its own channel).
int RunTernctl(int argc, const char* const* argv, std::ostream& out, std::ostream& err,
               bool out_is_tty);

}  // namespace tern::cli

#endif  // TERN_CLI_TERNCTL_H_
