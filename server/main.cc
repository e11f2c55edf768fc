// ternd: the tern scheduler daemon (tern.v1.JobService, tern.v1.WorkerService,
// gRPC health and reflection, Prometheus /metrics).
//
//   ternd [--listen 127.0.0.1:7070] [--db ./ternd.db | --db postgresql://...]
//         [--metrics-listen 127.0.0.1:9464] [--artifact-root ./artifacts]
//         [--checkpoint-root ./checkpoints] [--lease-ttl 15s]
//         [--tls-cert F --tls-key F [--tls-client-ca F [--tls-agent-names GLOB]]]
//         [--token-file F] [--metrics-token-file F]
//         [--metrics-tls-cert F --metrics-tls-key F]
//         [--web-listen 127.0.0.1:8080 [--web-tls-cert F --web-tls-key F]]
//         [--read-roots DIRS] [--write-roots DIRS] [--quota-file F]
//         [--rendezvous-key-file F]   (default <db>.rendezvous-key, mode 0600;
//                                      required with a PostgreSQL --db)
//         [--advertise-address HOST:PORT] [--leader-lease-ttl 5s]
//         ...
//
// The first stdout line is "ternd listening on HOST:PORT" (the bound port,
// also for --listen ...:0), then "ternd metrics on HOST:PORT" and "ternd web
// console on HOST:PORT" when enabled;
// logs go to stderr. SIGINT or SIGTERM shuts down gracefully. Exit codes:
// 0 after a clean shutdown, 1 when ternd cannot start, 2 for bad flags, 3
// when it led several ternd sharing one store and lost the lease (or could
// not start leading): it stopped acting at once; restart it, it comes back
// as a standby (docs/DEPLOY.md, "Several ternd").
#include <absl/synchronization/mutex.h>
#include <pthread.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <string>

#include "common/logging.h"
#include "scheduler/postgres_job_store.h"
#include "scheduler/postgres_leader_election.h"
#include "server/ternd.h"

namespace {

// Exit code after losing the lease (see the header comment).
constexpr int kExitLeadershipLost = 3;

using tern::server::FormatDuration;
using tern::server::ParseDuration;
using tern::server::Ternd;
using tern::server::TerndOptions;

// Adds a duration flag "--name" (e.g. "15s") bound to `target`; the help
// shows the default, `target`'s value now.
void AddDuration(CLI::App& app, const std::string& name, std::chrono::milliseconds* target,
                 const std::string& help) {
  const std::string shown_default = FormatDuration(*target);
  app.add_option_function<std::string>(
         name,
         [target, name](const std::string& text) {
           auto parsed = ParseDuration(text);
           if (!parsed.ok()) {
             throw CLI::ValidationError(name, parsed.status().message());
           }
           *target = *parsed;
         },
         help + " (default " + shown_default + ")")
      ->type_name("DURATION");
}

int Run(TerndOptions options) {
  // Debian's absl is built with Mutex deadlock detection on: every lock of a
  // gRPC-internal mutex would also update one global lock graph.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Block the signals in every thread; this one waits for them below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A peer or log reader that goes away mid-write must not end the daemon:
  // the write fails with EPIPE instead (gRPC and Asio already send with
  // MSG_NOSIGNAL; this covers every other descriptor, stdout and stderr too).
  std::signal(SIGPIPE, SIG_IGN);

  // Another ternd leads now: stop at once (the store refuses this one's
  // writes anyway); a supervisor restarts it as a standby.
  options.on_leadership_lost = [] {
    std::cerr << "ternd: lost the leader's lease; exiting " << kExitLeadershipLost << std::endl;
    std::_Exit(kExitLeadershipLost);
  };
  // Several ternd share a PostgreSQL store: they elect a leader through it.
  std::unique_ptr<tern::scheduler::PostgresLeaderElection> election;
  if (tern::scheduler::IsPostgresUrl(options.db_path)) {
    auto opened = tern::scheduler::PostgresLeaderElection::Open(options.db_path);
    if (!opened.ok()) {
      std::cerr << "ternd: cannot start: leader election: " << opened.status() << std::endl;
      return 1;
    }
    election = std::move(opened).value();
    options.election = election.get();
  }
  auto ternd = Ternd::Start(options);
  if (!ternd.ok()) {
    std::cerr << "ternd: cannot start: " << ternd.status() << std::endl;
    return 1;
  }
  std::cout << "ternd listening on " << (*ternd)->address() << std::endl;
  if (!(*ternd)->metrics_address().empty()) {
    std::cout << "ternd metrics on " << (*ternd)->metrics_address()
              << std::endl;
  }
  if (!(*ternd)->web_address().empty()) {
    std::cout << "ternd web console on " << (*ternd)->web_address() << std::endl;
  }
  int signal = 0;
  sigwait(&signals, &signal);
  TERN_LOG(INFO) << "ternd: " << (signal == SIGINT ? "SIGINT" : "SIGTERM")
                 << " received, shutting down";
  (*ternd)->Shutdown();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ternd: the tern scheduler daemon"};
  TerndOptions options;
  app.add_option("--listen", options.listen,
                 "gRPC address host:port (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--db", options.db_path,
                 "job store: an SQLite file, or a PostgreSQL URL (postgresql://USER@HOST/DB?..., "
                 "the password best in PGPASSWORD or ~/.pgpass) that several ternd share: one "
                 "leads, the others are standbys (needs --rendezvous-key-file, and "
                 "--advertise-address unless --listen names one host)")
      ->capture_default_str();
  app.add_option("--metrics-listen", options.metrics_listen,
                 "Prometheus /metrics address host:port (\":0\": any port; "
                 "empty: off)")
      ->capture_default_str();
  app.add_option("--artifact-root", options.artifact_root,
                 "directory for artifacts of jobs (<root>/job-<id>-*.tern)")
      ->capture_default_str();
  app.add_option("--checkpoint-root", options.checkpoint_root,
                 "directory for checkpoints of jobs whose spec names none")
      ->capture_default_str();
  app.add_option("--tls-cert", options.tls.cert_file,
                 "PEM certificate (chain) of the gRPC port: serve TLS (with --tls-key)");
  app.add_option("--tls-key", options.tls.key_file, "PEM private key of --tls-cert");
  app.add_option("--tls-client-ca", options.tls.client_ca_file,
                 "PEM CA bundle: require client certificates signed by it (mutual TLS)");
  app.add_option("--tls-reload-interval", options.tls.reload_interval_s,
                 "seconds between re-reads of the --tls-* files (renewed certificates are "
                 "served without a restart; 0: read once)")
      ->capture_default_str();
  app.add_option("--tls-admin-names", options.tls_admin_names,
                 "with --tls-client-ca: glob of the certificate names that may read, list and "
                 "cancel every owner's jobs (default: none; each sees its own)");
  app.add_option("--tls-agent-names", options.tls_agent_names,
                 "with --tls-client-ca: glob of the certificate names that may act as agents")
      ->capture_default_str();
  app.add_option("--token-file", options.token_file,
                 "bearer tokens callers may present instead of client certificates "
                 "(\"sha256:<hash> <name> [admin] [agent]\" lines, from ternctl token new); "
                 "needs --tls-cert; re-read when it changes");
  app.add_option("--metrics-token-file", options.metrics_token_file,
                 "file holding the bearer token /metrics requires (Prometheus: authorization "
                 "credentials_file); re-read when it changes; /healthz stays open");
  app.add_option("--metrics-tls-cert", options.metrics_tls_cert,
                 "PEM certificate (chain): serve /metrics over HTTPS (with --metrics-tls-key); "
                 "re-read when it changes");
  app.add_option("--metrics-tls-key", options.metrics_tls_key,
                 "PEM private key of --metrics-tls-cert");
  app.add_option("--web-listen", options.web_listen,
                 "web console and its JSON API host:port (\":0\": any port; empty: off); the "
                 "API takes the same bearer tokens as gRPC (--token-file)");
  app.add_option("--web-tls-cert", options.web_tls_cert,
                 "PEM certificate (chain): serve the web console over HTTPS (with "
                 "--web-tls-key); re-read when it changes");
  app.add_option("--web-tls-key", options.web_tls_key, "PEM private key of --web-tls-cert");
  app.add_option("--read-roots", options.read_roots,
                 "comma-separated directories (\"{owner}\": the job's owner) a job may read "
                 "data and init_from files under (default: anywhere)");
  app.add_option("--write-roots", options.write_roots,
                 "comma-separated directories (\"{owner}\": the job's owner) a job may put "
                 "its checkpoint.directory under (default: anywhere)");
  app.add_option("--rendezvous-key-file", options.rendezvous_key_file,
                 "ternd's secret for the jobs' rendezvous keys (mode 0600; created when missing; "
                 "default: <db>.rendezvous-key; required with a PostgreSQL --db, the same file "
                 "content on every ternd)");
  app.add_option("--quota-file", options.quota_file,
                 "per-owner limits, one \"OWNER|* [cpu=N] [cuda=N] [jobs=N]\" line each: slots "
                 "an owner's running jobs may hold, unfinished jobs it may have (default: none); "
                 "re-read when it changes");
  AddDuration(app, "--lease-ttl", &options.scheduler.agent_lease_ttl,
              "agent lease lifetime without a heartbeat");
  AddDuration(app, "--tick-interval", &options.tick_interval,
              "scheduler tick (lease expiry, re-queueing, admission)");
  AddDuration(app, "--restart-backoff", &options.scheduler.restart_backoff,
              "delay before a lost job is queued again (doubles per restart)");
  AddDuration(app, "--max-restart-backoff", &options.scheduler.max_restart_backoff,
              "upper bound of the restart delay");
  AddDuration(app, "--collective-failure-grace", &options.scheduler.collective_failure_grace,
              "how long a job whose rank reported a failed collective (exit 6) waits for "
              "another rank's own failure before it restarts as COLLECTIVE_FAILED");
  AddDuration(app, "--backfill-window", &options.scheduler.backfill_window,
              "how long a blocked job lets smaller ones pass");
  app.add_option("--aging-per-minute", options.scheduler.aging_per_minute,
                 "priority a queued job gains per minute")
      ->capture_default_str();
  app.add_option("--rendezvous-port-min", options.scheduler.rendezvous_port_min,
                 "lowest port for rank 0's rendezvous")
      ->capture_default_str();
  app.add_option("--rendezvous-port-max", options.scheduler.rendezvous_port_max,
                 "highest port for rank 0's rendezvous")
      ->capture_default_str();
  app.add_option("--max-watch-streams-per-caller", options.max_watch_streams_per_caller,
                 "open WatchJob streams one caller may hold (0: no limit)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  AddDuration(app, "--port-quarantine", &options.scheduler.port_quarantine,
              "how long a rendezvous port found taken by another process is not "
              "handed out again on that agent");
  AddDuration(app, "--job-metrics-grace", &options.job_metrics_grace,
              "how long an ended job's tern_job_* series stay");
  AddDuration(app, "--kill-grace", &options.kill_grace, "SIGTERM to SIGKILL delay in kill orders");
  AddDuration(app, "--shutdown-grace", &options.shutdown_grace,
              "how long shutdown waits for in-flight requests");
  app.add_option("--rpc-idle-threads", options.rpc_idle_threads,
                 "idle threads gRPC keeps for the next calls (more threads start when needed); "
                 "gRPC's own default, 2, starts a thread for most calls under a burst")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  std::string commit_mode = tern::scheduler::CommitModeName(options.scheduler.commit_mode);
  app.add_option("--commit-mode", commit_mode,
                 "how acknowledged changes reach the job store: group (concurrent calls share "
                 "one transaction and fsync) or per-call (one each, as before group commit)")
      ->capture_default_str()
      ->check(CLI::IsMember({"group", "per-call"}));
  app.add_option("--advertise-address", options.advertise_address,
                 "with several ternd on one PostgreSQL --db: the gRPC host:port standbys tell "
                 "clients and agents to use while this one leads (required unless --listen "
                 "names one host, not 0.0.0.0 or [::])");
  AddDuration(app, "--leader-lease-ttl", &options.leader_lease_ttl,
              "with several ternd on one PostgreSQL --db: the leader's lease, renewed every "
              "third of it; a standby takes over within about this long after the leader "
              "dies (at once after its clean shutdown)");
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "debug, info, warning or error")
      ->capture_default_str()
      ->check(CLI::IsMember({"debug", "info", "warning", "error"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help prints and exits 0
  }
  if (app.count("--log-level") != 0) {
    tern::SetMinLogSeverity(log_level == "debug" ? tern::LogSeverity::kDebug
                            : log_level == "warning"
                                ? tern::LogSeverity::kWarning
                            : log_level == "error" ? tern::LogSeverity::kError
                                                   : tern::LogSeverity::kInfo);
  }
  options.scheduler.commit_mode = *tern::scheduler::ParseCommitMode(commit_mode);  // checked above
  if (tern::scheduler::IsPostgresUrl(options.db_path)) {
    // Checked here, before connecting, and worded as flags.
    const std::string host = options.listen.substr(0, options.listen.rfind(':'));
    if (options.advertise_address.empty() &&
        (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::")) {
      std::cerr << "ternd: --advertise-address HOST:PORT is required with a PostgreSQL --db when "
                   "--listen ("
                << options.listen
                << ") names no single host: standbys tell clients and agents this address as "
                   "the leader's"
                << std::endl;
      return 2;
    }
    if (options.rendezvous_key_file.empty()) {
      std::cerr << "ternd: --rendezvous-key-file is required with a PostgreSQL --db: every ternd "
                   "sharing the store must read the same key file (the jobs' rendezvous keys are "
                   "derived from it)"
                << std::endl;
      return 2;
    }
  }
  return Run(options);
}
