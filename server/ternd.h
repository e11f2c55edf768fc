// Ternd: the scheduler daemon as an object, so that main.cc stays thin and
// tests run the real thing in-process on 127.0.0.1:0.
//
// Usage:
//   TerndOptions options;                 // defaults: see the fields
//   options.listen = "127.0.0.1:0";
//   TERN_ASSIGN_OR_RETURN(std::unique_ptr<Ternd> ternd, Ternd::Start(options));
//   std::cout << "ternd listening on " << ternd->address() << "\n";
//   ...                                   // wait for a signal
//   ternd->Shutdown();                    // or let the destructor do it
//
// Start() opens the SQLite store (loading every job), creates the scheduler,
// serves tern.v1.JobService and tern.v1.WorkerService with gRPC health
// checking and reflection, serves /metrics and /healthz over HTTP, the web console on web_listen
// (server/web_api.h), and runs a
// tick thread (scheduler Tick, lease expiry, gauges, dropping ended jobs'
// series). Shutdown() marks health NOT_SERVING, answers new calls
// UNAVAILABLE, ends the streams (they notice within one long-poll round),
// waits up to shutdown_grace for the handlers already running, closes the
// connections, stops the threads and closes the store; everything
// acknowledged is already committed, so nothing is lost.
//
// Several ternd on one shared store (TerndOptions::election set; main.cc does
// that for a PostgreSQL --db): Start() serves the gRPC port as a standby
// (server/standby_service.h: every JobService and WorkerService call is
// UNAVAILABLE, reason NOT_LEADER, naming the leader's advertised address;
// gRPC health "" SERVING but tern.v1.JobService NOT_SERVING, /readyz 503) and
// tries to take the lease every standby_poll. Once it holds the lease it opens
// the store fenced with its epoch, loads the jobs, builds the scheduler and
// replaces the standby gRPC server by the real one on the same port (agents
// rejoin it as after a restart); it renews the lease every ttl/3. When it
// loses the lease (Renew ABORTED, no renewal for a whole ttl, or the store
// fenced a write) it refuses every call from then on (LEADERSHIP_LOST), does
// nothing more, and calls on_leadership_lost (ternd's main exits 3 so that a
// supervisor restarts it as a standby). Shutdown() of a leader Release()s the
// lease after closing the store, so a standby takes over at once.
// Thread-safe: Shutdown() may be called from any thread, more than once.
#ifndef TERN_SERVER_TERND_H_
#define TERN_SERVER_TERND_H_

#include <grpcpp/completion_queue.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "auth/tls_credentials.h"
#include "common/http_server.h"
#include "common/metrics.h"
#include "common/status.h"
#include "scheduler/clock.h"
#include "scheduler/leader_election.h"
#include "scheduler/scheduler.h"

namespace grpc {
class Server;
}

namespace tern::server {

class JobService;
class WorkerService;
class ProgressCache;
class RendezvousKeys;
class ServerMetrics;
class StandbyService;
struct ServerState;
class TokenTable;
class WebApi;

struct TerndOptions {
  std::string listen = "127.0.0.1:7070";  // gRPC "host:port"; port 0 = any
  std::string db_path = "./ternd.db";     // SQLite file, or a PostgreSQL URL (postgresql://...)
  // /metrics and /healthz "host:port" (":0" = any port on all IPv4
  // interfaces); empty = no HTTP endpoint.
  std::string metrics_listen = "127.0.0.1:9464";
  // Where jobs whose spec leaves them empty get their artifact
  // (<root>/job-<id>-<micros>/job-<id>-<micros>.tern) and checkpoint directory
  // (<root>/job-<id>-<micros>/). Created if missing; made absolute. Keep them
  // the same across restarts (running jobs resume from their directory).
  std::string artifact_root = "./artifacts";
  std::string checkpoint_root = "./checkpoints";
  // Aging, backfill, the agents' lease TTL (also told to them), restart
  // back-off, rendezvous ports, page sizes and commit mode: the scheduler's
  // own options, defaults and checks (scheduler.h).
  scheduler::SchedulerOptions scheduler;
  std::chrono::milliseconds tick_interval{std::chrono::seconds(1)};
  // How long an ended job's tern_job_* series stay visible.
  std::chrono::milliseconds job_metrics_grace{std::chrono::minutes(5)};
  std::chrono::milliseconds kill_grace{
      std::chrono::seconds(10)};  // SIGTERM→KILL
  std::chrono::milliseconds shutdown_grace{std::chrono::seconds(5)};
  std::chrono::milliseconds long_poll{500};  // streams' poll round
  // Open WatchJob streams one caller may hold; more are RESOURCE_EXHAUSTED.
  // 0: no limit. (Streams cost no thread: server/watch_hub.h.)
  int max_watch_streams_per_caller = 1000;
  // gRPC's synchronous server keeps this many idle threads for the next
  // calls (ServerBuilder's MAX_POLLERS; gRPC's own default is 2).
  int rpc_idle_threads = 256;
  // TLS for the gRPC port (none: plaintext); see auth/tls_credentials.h.
  tls::ServerTlsOptions tls;
  // Over mutual TLS, the client certificate names (a glob) that may act as
  // agents (WorkerService); "*": any certificate from the client CA.
  std::string tls_agent_names = "*";
  // Over mutual TLS, the certificate names (a glob) that may read, list and
  // cancel every owner's jobs; "": none (each caller sees its own jobs).
  std::string tls_admin_names;
  // Bearer tokens (auth/token_table.h); needs tls.cert_file. Empty: none.
  std::string token_file;
  // A file holding the token /metrics requires (auth/bearer_token.h,
  // TokenFile); empty: /metrics is open.
  std::string metrics_token_file;
  // HTTPS for /metrics and /healthz (both or neither; re-read on change).
  std::string metrics_tls_cert, metrics_tls_key;
  // The web console and its JSON API (server/web_api.h) "host:port"; empty
  // = off. Its /api/v1 calls authenticate like gRPC calls (token_file).
  std::string web_listen;
  // HTTPS for the web console (both or neither; re-read on change).
  std::string web_tls_cert, web_tls_key;
  // Comma-separated directories ("{owner}" = the job's owner) under which a
  // spec may name data to read (dataset.path, model.init_from) and
  // checkpoint directories to write; both empty: any path (see
  // server/path_access.h for the rules that hold either way).
  std::string read_roots;
  std::string write_roots;
  // Per-owner slot and job limits (scheduler/quota.h); re-read within a tick
  // of a change (a bad new version is logged and the last good one kept).
  // Empty: no quotas.
  std::string quota_file;
  // ternd's secret for the jobs' rendezvous keys (server/rendezvous_key.h);
  // created when missing. Empty: "<db_path>.rendezvous-key" (not allowed with
  // an election: every ternd must hold the same key, see docs/DEPLOY.md).
  std::string rendezvous_key_file;

  // --- Several ternd sharing one store (see the header comment) ---
  // The election (not owned; outlives the Ternd). Null: this ternd leads from
  // the start and alone (the SQLite store: one process, no election).
  scheduler::LeaderElection* election = nullptr;
  // The gRPC "host:port" standbys name to clients and agents as the leader's.
  // Empty: the bound address, which needs a --listen host that is not a
  // wildcard ("", 0.0.0.0, [::]).
  std::string advertise_address;
  // This process' id in the election; empty: "<hostname>-<pid>-<random>".
  std::string holder_id;
  std::chrono::milliseconds leader_lease_ttl{std::chrono::seconds(5)};  // renewed every ttl/3
  // How often a standby tries to take the lease; 0: ttl/5, at most 1 s.
  std::chrono::milliseconds standby_poll{0};
  // Called once, on the election thread, after this ternd led and lost the
  // lease (or could not start leading), when it already refuses every call.
  // Null: nothing more (the Ternd stays up, refusing). ternd's main exits
  // kExitLeadershipLost.
  std::function<void()> on_leadership_lost;
  Status Validate() const;
};

// Parses "250ms", "15s", "5m", "1h" (an integer and a unit; "0" alone is 0).
StatusOr<std::chrono::milliseconds> ParseDuration(std::string_view text);
// The form ParseDuration reads, in the largest unit that is exact: "15s",
// "5m", "250ms", "0".
std::string FormatDuration(std::chrono::milliseconds duration);

class Ternd {
 public:
  // Starts everything or nothing: INVALID_ARGUMENT for bad options, the
  // store's error (DATA_LOSS, FAILED_PRECONDITION, ...) for a bad database,
  // UNAVAILABLE when an address cannot be bound. `clock` null = SystemClock.
  static StatusOr<std::unique_ptr<Ternd>> Start(
      TerndOptions options, std::shared_ptr<scheduler::Clock> clock = nullptr);
  ~Ternd();  // Shutdown()s.
  Ternd(const Ternd&) = delete;
  Ternd& operator=(const Ternd&) = delete;

  // "host:port" with the bound port, e.g. "127.0.0.1:41234".
  const std::string& address() const { return address_; }
  int port() const { return port_; }
  // "host:port" of the HTTP endpoint; empty when disabled.
  const std::string& metrics_address() const { return metrics_address_; }
  int metrics_port() const;
  // "host:port" of the web console; empty when disabled.
  const std::string& web_address() const { return web_address_; }
  int web_port() const;
  metrics::Registry& registry() { return registry_; }
  // Only while leading() (always without an election).
  scheduler::Scheduler& scheduler() { return *scheduler_; }

  // This ternd leads: it runs the scheduler and answers calls (always true
  // without an election, until Shutdown()).
  bool leading() const { return leading_.load(); }
  // The epoch it leads with; 0 without an election or while not leading.
  int64_t leader_epoch() const { return leading_.load() ? epoch_.load() : 0; }
  // The advertised address (TerndOptions::advertise_address or address()).
  const std::string& advertise_address() const { return advertise_address_; }

  // Blocking, idempotent; see the header comment.
  void Shutdown();

 private:
  explicit Ternd(TerndOptions options);
  Status Init(std::shared_ptr<scheduler::Clock> clock);
  // The leader's part of Init: opens the store (fenced with `epoch` when there
  // is an election), builds the scheduler and the services, and serves them
  // on `listen` (with an election: the port the standby server had).
  Status StartLeading(int64_t epoch, const std::string& listen);
  // The gRPC server of a standby (health, reflection, StandbyService).
  Status StartStandby();
  // The election thread: TryAcquire while a standby, Renew while leading.
  void ElectionLoop();
  // A fenced store write or a failed renewal: refuse everything from now on.
  // Non-blocking (the store calls it under its own lock); the election thread
  // does the rest.
  void MarkLeadershipLost(const std::string& why);
  // On the election thread: health, metrics, on_leadership_lost.
  void FinishLeadershipLost();
  std::string KnownLeader() const;
  void TickLoop();
  void TickOnce();
  // Reads --quota-file into the scheduler when its stamp changed. `initial`:
  // errors are returned (start-up); later they are logged and the last good
  // quotas kept.
  Status LoadQuotasIfChanged(bool initial);

  const TerndOptions options_;
  metrics::Registry registry_;
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<scheduler::Scheduler> scheduler_;
  std::unique_ptr<ProgressCache> progress_;
  std::unique_ptr<TokenTable> tokens_;
  std::unique_ptr<RendezvousKeys> rendezvous_keys_;
  std::string quota_stamp_;  // tick thread only (after Init)
  std::unique_ptr<ServerState> state_;
  std::unique_ptr<JobService> job_service_;
  std::unique_ptr<WorkerService> worker_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<StandbyService> standby_service_;
  std::unique_ptr<grpc::Server> standby_server_;
  std::shared_ptr<scheduler::Clock> clock_;
  std::string advertise_address_;
  std::string holder_id_;
  std::atomic<bool> leading_{false};
  std::atomic<bool> lost_{false};
  std::atomic<int64_t> epoch_{0};
  std::thread election_thread_;
  mutable std::mutex leader_mu_;
  std::string known_leader_;  // guarded by leader_mu_: leader_address for NOT_LEADER
  std::string lost_why_;      // guarded by leader_mu_
  std::unique_ptr<metrics::MetricsHttpServer> http_;
  std::unique_ptr<WebApi> web_api_;
  std::unique_ptr<metrics::MetricsHttpServer> web_http_;
  std::string address_;
  std::string metrics_address_;
  std::string web_address_;
  int port_ = 0;

  std::mutex mu_;
  std::condition_variable stop_tick_;
  std::condition_variable election_wake_;
  bool stopping_ = false;  // guarded by mu_
  bool stopped_ = false;   // guarded by mu_
  std::thread tick_thread_;
  // A thread that stays in gRPC's poller (Next() on a queue nothing is ever
  // posted to), so that incoming calls are read while gRPC's callback-queue
  // threads sleep after an idle second (PollKeeper in ternd.cc).
  std::unique_ptr<grpc::CompletionQueue> poll_keeper_cq_;
  std::thread poll_keeper_;
};

}  // namespace tern::server

#endif  // TERN_SERVER_TERND_H_
