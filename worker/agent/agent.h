// Agent: the node daemon (tern-agent). Registers this machine's slots with
// ternd's WorkerService, keeps its lease alive, starts one tern-trainer
// process per assigned rank, relays the trainers' events and exits, and
// kills trainers on kill orders, on a lost lease and on shutdown.
//
// Usage:
//   AgentOptions o;  o.agent_id = "node-1";  o.cpu_slots = 2;  ...
//   metrics::Registry registry;
//   Agent agent(o, grpc::CreateChannel("ternd:7070", creds), &registry);
//   std::thread t([&] { status = agent.Run(); });   // blocks
//   ...  agent.Shutdown();  t.join();
//
// Protocol (proto/tern/v1/worker_service.proto): Register, then one
// StreamAssignments stream (re-opened with exponential backoff when it
// breaks) and a Heartbeat every heartbeat_interval listing the running
// ranks. Losing the lease:
// - FAILED_PRECONDITION or NOT_FOUND from the heartbeat or the stream (ternd
//   answers but no longer knows the lease: it restarted, or let the lease
//   expire): the trainers go on, their reports wait, and the agent registers
//   again listing them (RegisterRequest.running); ternd keeps the ranks it
//   still expects and sends kill orders for the others. Without a new lease
//   within the lease TTL of the last renewal they are stopped after all.
// - No successful heartbeat within the lease TTL (ternd unreachable): ternd
//   has written the ranks off, so every trainer is stopped (SIGTERM, SIGKILL
//   after shutdown_grace) before the agent registers again.
// Every unary call has a deadline (rpc_timeout, or the lease's time left
// where that is shorter); only the stream has none. With one ternd, calls
// wait for a connection rather than fail while the channel reconnects, so a
// restarted ternd is reached as soon as it listens; with several (a leader
// and standbys), they fail at once and go to the next one, or to the leader
// a standby names (NOT_LEADER), and the agent rejoins the new leader.
// An assignment of a later attempt of a job stops the trainers of earlier
// attempts still running here and starts once they have exited.
//
// Shutdown is a drain: Drain (ternd places nothing more here), SIGUSR1 to
// every trainer (tern-trainer commits a checkpoint at its current step on
// every rank of the job and exits 3; SIGKILL after shutdown_grace), the
// exits reported (preempted: restarts not charged to the job), heartbeats
// until then, Deregister last. Kill orders and a lost lease use SIGTERM:
// the trainer stops at once, writing nothing more (ternd has restarted or
// cancelled its job).
//
// Each trainer runs in a process group of its own with PR_SET_PDEATHSIG, so
// none survives the agent, even a SIGKILLed one. Nor does one outlive the
// lease, even of a frozen agent: each renewal rewrites the trainer's
// agent-lease file (trainer_protocol/lease_file.h) with the renewal's send
// time plus the TTL, and past that deadline the trainer commits nothing more
// and exits (kExitFenced). Files per rank:
//   <workdir>/jobs/<job>/rank-<r>/             trainer --workdir
//   <workdir>/jobs/<job>/rank-<r>/spec-attempt-<a>.json
//   <workdir>/jobs/<job>/rank-<r>/agent-lease-attempt-<a>  (TERN_LEASE_FILE)
//   <workdir>/jobs/<job>/checkpoints/          when the assignment names none
//
// Paths: an assignment with a tern.v1.PathGrant (ternd --read-roots /
// --write-roots) starts its trainer only when every path its spec names lies
// under the grant with symlinks resolved (PERMISSION_DENIED otherwise, a
// failure ternd does not retry), and, where the kernel offers Landlock
// (confine_writes), the trainer may then write only beneath the grant's
// write roots, its checkpoint directory, its rank directory (with its own
// TMPDIR, <rank dir>/tmp), its artifact's directory, /dev and
// trainer_writable (fs_confinement.h). With confine_reads on, it may also
// read and execute only beneath those, the grant's read roots, the system's
// directories (SystemReadablePaths: not /etc as a whole), the trainer's own
// directory and trainer_readable; the agent's secret_files must lie outside
// all of them (Validate).
//
// Thread safety: Run() once, from one thread; Shutdown() and the accessors
// from any thread (not from a signal handler).
#ifndef TERN_WORKER_AGENT_AGENT_H_
#define TERN_WORKER_AGENT_AGENT_H_

#include <memory>
#include <string>

#include "common/metrics.h"
#include "common/status.h"
#include "worker/agent/agent_options.h"

namespace grpc {
class ChannelInterface;
}
namespace tern::failover {
class ServerList;
}

namespace tern::agent {

class Agent {
 public:
  // `channel` leads to ternd; `registry` (not owned, outlives the Agent)
  // gets the agent's metric families, registered here once.
  Agent(AgentOptions options, std::shared_ptr<grpc::ChannelInterface> channel,
        metrics::Registry* registry);
  // Several ternd sharing one store (--server A,B): calls go to the leader
  // among `servers` (failover/server_list.h). After moving to a new leader
  // the agent rejoins it with its trainers, as after a ternd restart.
  Agent(AgentOptions options, std::shared_ptr<failover::ServerList> servers,
        metrics::Registry* registry);
  ~Agent();  // Requires Run() to have returned (or never been called).
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Serves until Shutdown(). Blocks. Returns INVALID_ARGUMENT for bad
  // options (at once), else OK once every trainer it started has exited and
  // its exit was reported (or the report given up).
  Status Run();
  // Makes Run() stop its trainers and return. Non-blocking, idempotent.
  void Shutdown();
  // Stops every trainer at once (SIGTERM, SIGKILL a second later) instead of
  // waiting for its checkpoint: an impatient second SIGINT/SIGTERM.
  // Non-blocking; meant after Shutdown().
  void StopTrainersNow();

  std::string lease_id() const;  // current lease; "" before registering
  int registrations() const;     // successful Register calls so far
  int running_trainers() const;  // trainer processes not yet reported exited

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::agent

#endif  // TERN_WORKER_AGENT_AGENT_H_
