// tern-agent: the node daemon. Registers this machine's slots with ternd and
// runs the tern-trainer processes ternd assigns to it.
//
//   tern-agent --server 127.0.0.1:7070 --cpu-slots 2
//              [--agent-id ID] [--host ADDR] [--cuda-slots N]
//              [--trainer PATH] [--workdir DIR] [--metrics-listen HOST:PORT]
//              [--tls | --tls-ca F] [--tls-cert F --tls-key F]  (auth/tls_credentials.h)
//              [--token-file F] [--metrics-token-file F]         (auth/bearer_token.h)
//              [--metrics-tls-cert F --metrics-tls-key F]
//              [--confine-writes auto|on|off] [--trainer-writable DIRS]  (fs_confinement.h)
//              [--confine-reads off|on] [--trainer-readable DIRS]
//
// Prints "tern-agent metrics on HOST:PORT" as its first stdout line (the
// bound port, useful with --metrics-listen :0). SIGINT/SIGTERM drain the
// agent (agent.h): every trainer stops at a checkpoint (SIGUSR1, SIGKILL
// after --shutdown-grace), the lease ends, exit 0. A second SIGINT/SIGTERM
// stops the trainers at once.
#include <pthread.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <iostream>
#include <thread>

#include "auth/tls_flags.h"
#include "common/logging.h"
#include "worker/agent/agent_daemon.h"

namespace {

using tern::agent::AgentDaemon;
using tern::agent::AgentDaemonOptions;
using tern::agent::AgentOptions;

// Flags that are not fields of AgentDaemonOptions as they are typed.
struct FlagText {
  std::string confine_writes = "auto";
  std::string confine_reads = "off";
  double grace_s = 20.0;
  double rpc_timeout_s = 5.0;
};

void AddFlags(CLI::App& app, AgentDaemonOptions* o, FlagText* text) {
  app.add_option("--server", o->server,
                 "ternd's address, HOST:PORT; several ternd sharing one store: all of them, "
                 "comma-separated (the agent follows the leader)")
      ->envname("TERN_SERVER")
      ->capture_default_str();
  app.add_option("--agent-id", o->agent.agent_id,
                 "stable identity, [A-Za-z0-9_.-]{1,128} (default: the --tls-cert "
                 "certificate's common name, else hostname-pid)");
  app.add_option("--host", o->agent.host,
                 "address of this machine that other machines reach it at: ternd gives it to "
                 "the other ranks of a job whose rank 0 runs here, and every trainer here "
                 "listens for its peers on it (TERN_BIND_ADDR); on several machines, not a "
                 "loopback address")
      ->capture_default_str();
  app.add_option("--cpu-slots", o->agent.cpu_slots, "CPU ranks to run at once")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--cuda-slots", o->agent.cuda_slots, "GPUs to run ranks on (one rank each)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--trainer", o->trainer,
                 "tern-trainer executable (default: next to tern-agent, then "
                 "../trainer/tern-trainer, then $PATH)");
  app.add_option("--workdir", o->agent.workdir,
                 "directory for job files (default: $TMPDIR/tern-agent-<agent-id>)");
  app.add_option("--metrics-listen", o->metrics_listen,
                 "HOST:PORT of the /metrics endpoint (:0 picks a port; empty disables)")
      ->capture_default_str();
  app.add_option("--metrics-token-file", o->metrics_token_file,
                 "file holding the bearer token /metrics requires (Prometheus: authorization "
                 "credentials_file); re-read when it changes");
  app.add_option("--metrics-tls-cert", o->metrics_tls_cert,
                 "PEM certificate (chain): serve /metrics over HTTPS (with --metrics-tls-key)");
  app.add_option("--metrics-tls-key", o->metrics_tls_key, "PEM private key of --metrics-tls-cert");
  app.add_option("--shutdown-grace", text->grace_s,
                 "seconds trainers get to checkpoint and exit on shutdown (keep it below the "
                 "pod's terminationGracePeriodSeconds), or to exit on a lost lease, before SIGKILL")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--rpc-timeout", text->rpc_timeout_s, "deadline of each call to ternd, seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--confine-writes", text->confine_writes,
                 "Landlock-confine the writes of trainers whose job has path roots (ternd "
                 "--write-roots): auto (where the kernel offers it), on (refuse such ranks "
                 "where not), off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  app.add_option("--trainer-writable", o->agent.trainer_writable,
                 "further directories confined trainers may write beneath (repeatable or "
                 "comma-separated; e.g. a CUDA cache)")
      ->delimiter(',');
  app.add_option("--confine-reads", text->confine_reads,
                 "Landlock-confine the reads of those trainers too: on (to their data roots, "
                 "rank, checkpoint and artifact directories, the system's directories, the "
                 "trainer's own directory and --trainer-readable; refuse such ranks without "
                 "Landlock), off")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  app.add_option("--trainer-readable", o->agent.trainer_readable,
                 "with --confine-reads on: further paths confined trainers may read beneath "
                 "(repeatable or comma-separated; e.g. a LibTorch or CUDA install outside /usr "
                 "and /opt)")
      ->delimiter(',');
  tern::tls::AddClientTlsFlags(app, &o->tls);
  app.add_option("--tls-reload-interval", o->tls.reload_interval_s,
                 "seconds between re-reads of the --tls-* files (with --tls-ca; 0: read once)")
      ->capture_default_str();
}

// The options of FlagText, and the agent's secrets (AgentOptions::secret_files).
void ApplyFlags(const FlagText& text, AgentDaemonOptions* o) {
  o->agent.confine_writes = text.confine_writes == "on"    ? AgentOptions::ConfineWrites::kOn
                            : text.confine_writes == "off" ? AgentOptions::ConfineWrites::kOff
                                                           : AgentOptions::ConfineWrites::kAuto;
  o->agent.confine_reads = text.confine_reads == "on" ? AgentOptions::ConfineReads::kOn
                                                      : AgentOptions::ConfineReads::kOff;
  o->agent.secret_files = {{"--tls-key", o->tls.key_file},
                           {"--token-file", o->tls.token_file},
                           {"--metrics-tls-key", o->metrics_tls_key},
                           {"--metrics-token-file", o->metrics_token_file}};
  o->agent.shutdown_grace = std::chrono::milliseconds(static_cast<int64_t>(text.grace_s * 1000));
  o->agent.rpc_timeout = std::chrono::milliseconds(static_cast<int64_t>(text.rpc_timeout_s * 1000));
}

int Run(AgentDaemonOptions options) {
  // Signals are taken by a sigwait thread; block them before any thread
  // starts so every thread inherits the mask (trainers get a clean one).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  tern::StatusOr<std::unique_ptr<AgentDaemon>> started = AgentDaemon::Start(std::move(options));
  if (!started.ok()) {
    std::cerr << "tern-agent: " << started.status() << "\n";
    return 2;
  }
  AgentDaemon& daemon = **started;
  if (const std::string address = daemon.metrics_address(); !address.empty()) {
    std::cout << "tern-agent metrics on " << address << std::endl;
  }
  std::atomic<bool> ran{false};
  std::thread signals([&] {
    // The first signal drains; a second stops the trainers at once.
    for (int received = 0; !ran.load();) {
      int sig = 0;
      sigwait(&stop_signals, &sig);
      if (ran.load()) break;
      const char* name = sig == SIGINT ? "SIGINT" : "SIGTERM";
      if (++received == 1) {
        TERN_LOG(INFO) << "received " << name << "; draining (again to stop trainers at once)";
        daemon.Shutdown();
      } else {
        TERN_LOG(WARNING) << "received " << name << " again; stopping trainers at once";
        daemon.StopTrainersNow();
      }
    }
  });
  const tern::Status status = daemon.Run();
  if (!status.ok()) std::cerr << "tern-agent: " << status << "\n";
  // Wake the signal thread: Run returned (on a signal or on its own).
  ran.store(true);
  pthread_kill(signals.native_handle(), SIGTERM);
  signals.join();
  return status.ok() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  AgentDaemonOptions options;
  FlagText text;
  CLI::App app("tern-agent: runs tern-trainer processes for ternd on this machine");
  AddFlags(app, &options, &text);
  CLI11_PARSE(app, argc, argv);
  ApplyFlags(text, &options);
  return Run(std::move(options));
}
