// ServerState: what ternd's two gRPC services share. Ternd (ternd.h) owns
// every pointee and outlives the services; the services only read the fields.
// `shutting_down` turns true once a shutdown begins: new calls are answered
// UNAVAILABLE and long-running streams, which check it between long-poll
// rounds, end with UNAVAILABLE; so does `leadership_lost`.
#ifndef TERN_SERVER_SERVER_STATE_H_
#define TERN_SERVER_SERVER_STATE_H_

#include <atomic>
#include <chrono>

#include "auth/token_table.h"
#include "scheduler/scheduler.h"
#include "server/job_convert.h"
#include "server/path_access.h"
#include "server/progress_cache.h"
#include "server/rendezvous_key.h"
#include "server/server_metrics.h"

namespace tern::server {

struct ServerState {
  scheduler::Scheduler* scheduler = nullptr;
  std::shared_ptr<scheduler::Clock> clock;
  ServerMetrics* metrics = nullptr;
  ProgressCache* progress = nullptr;
  JobLayout layout;
  PathPolicy path_policy;  // ternd --read-roots / --write-roots
  // Longest single wait of a stream's long-poll (ReadEvents, TakeAgentWork);
  // bounds how late a stream notices a cancelled client or a shutdown.
  std::chrono::milliseconds long_poll{500};
  std::chrono::milliseconds lease_ttl{15000};   // told to agents
  std::chrono::milliseconds kill_grace{10000};  // KillOrder.grace_period
  std::string agent_names = "*";  // AuthorizeAgent's glob (caller.h)
  std::string admin_names;        // Authorize's admin glob ("" none)
  TokenTable* tokens = nullptr;   // ternd --token-file; null: no tokens
  const RendezvousKeys* rendezvous_keys = nullptr;  // never null once ternd serves
  // Open WatchJob streams one caller may hold (0: no limit).
  int max_watch_streams_per_caller = 1000;
  std::atomic<bool> shutting_down{false};
  // This ternd led and lost the lease (scheduler/leader_election.h): every
  // call is refused with LEADERSHIP_LOST, streams end, nothing more is done.
  std::atomic<bool> leadership_lost{false};
  std::atomic<int> in_flight{0};  // handlers inside RunRpc (rpc.h)
};

}  // namespace tern::server

#endif  // TERN_SERVER_SERVER_STATE_H_
