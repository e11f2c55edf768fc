// AgentDaemon: tern-agent as an object (as server/ternd.h is ternd), so that
// main.cc only parses flags and waits for signals.
//
// Usage:
//   AgentDaemonOptions options;  options.agent.cpu_slots = 2;  ...
//   TERN_ASSIGN_OR_RETURN(std::unique_ptr<AgentDaemon> daemon, AgentDaemon::Start(options));
//   std::cout << "tern-agent metrics on " << daemon->metrics_address() << "\n";
//   std::thread t([&] { status = daemon->Run(); });   // blocks
//   ...  daemon->Shutdown();  t.join();
//
// Start() fills in what the options leave empty (agent.agent_id: the
// --tls-cert certificate's common name, else hostname-pid; agent.workdir:
// $TMPDIR/tern-agent-<agent_id>; agent.trainer_path: see `trainer`),
// validates them, creates the channel to ternd and serves /metrics (over
// HTTPS, behind a bearer token, as configured). Run() runs the Agent
// (agent.h) until Shutdown(), which drains it.
// Thread-safe: Shutdown() and StopTrainersNow() from any thread (not from a
// signal handler); Run() once.
#ifndef TERN_WORKER_AGENT_AGENT_DAEMON_H_
#define TERN_WORKER_AGENT_AGENT_DAEMON_H_

#include <memory>
#include <string>

#include "auth/tls_credentials.h"
#include "common/http_server.h"
#include "common/metrics.h"
#include "common/status.h"
#include "worker/agent/agent.h"

namespace tern::agent {

struct AgentDaemonOptions {
  AgentOptions agent;  // trainer_path, agent_id, workdir: filled in
  // ternd, "host:port"; several ternd sharing one store: all of them,
  // comma-separated (the agent follows the leader).
  std::string server = "127.0.0.1:7070";
  tls::ClientTlsOptions tls;  // credentials of the channel to ternd
  // tern-trainer: a path, or a name looked up on $PATH; "": next to this
  // binary, then ../trainer/tern-trainer (the build tree), then $PATH.
  std::string trainer;
  std::string metrics_listen = "127.0.0.1:9465";  // "host:port" of /metrics; "": none
  std::string metrics_token_file;                 // the bearer token /metrics requires; "": open
  std::string metrics_tls_cert, metrics_tls_key;  // HTTPS for /metrics (both or neither)
};

class AgentDaemon {
 public:
  // INVALID_ARGUMENT (or what reading a file or binding /metrics returned)
  // when the daemon cannot start; nothing keeps running then.
  static StatusOr<std::unique_ptr<AgentDaemon>> Start(AgentDaemonOptions options);
  ~AgentDaemon();  // Requires Run() to have returned (or never been called).
  AgentDaemon(const AgentDaemon&) = delete;
  AgentDaemon& operator=(const AgentDaemon&) = delete;

  // Agent::Run: blocks until Shutdown(); then stops /metrics.
  Status Run();
  void Shutdown() { agent_->Shutdown(); }                // drain; non-blocking
  void StopTrainersNow() { agent_->StopTrainersNow(); }  // after Shutdown()

  const AgentOptions& options() const { return options_.agent; }  // filled in
  // "host:port" /metrics is bound to (the chosen port for ":0"); "" without.
  std::string metrics_address() const;

 private:
  explicit AgentDaemon(AgentDaemonOptions options) : options_(std::move(options)) {}

  AgentDaemonOptions options_;
  metrics::Registry registry_;
  std::unique_ptr<Agent> agent_;
  std::unique_ptr<metrics::MetricsHttpServer> http_;
};

}  // namespace tern::agent

#endif  // TERN_WORKER_AGENT_AGENT_DAEMON_H_
