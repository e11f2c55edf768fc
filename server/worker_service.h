// WorkerService: tern.v1.WorkerService (the agents' API) over the scheduler.
//
// Leases (scheduler/agent_leases.h): Register grants a lease id; every later
// call must name the current one, else FAILED_PRECONDITION (the agent kills
// its trainers and registers again). Leases are not persisted, so after a
// ternd restart every agent registers anew and the scheduler restarts the
// jobs it was running (from their last checkpoint), as the protocol in
// worker_service.proto prescribes. Heartbeat's `unexpected` lists the ranks
// AgentLeases::Heartbeat does not expect and those naming no job of ours.
//
// StreamAssignments first sends an Assignment for every rank placed on the
// agent (ADMITTED/RUNNING jobs), then long-polls TakeAgentWork: kill orders
// (one per job and attempt) before assignments; a stream sends each
// (job, attempt, rank) once. Work taken by a stream whose
// client is gone is recovered by the next stream's initial assignments and by
// Heartbeat's `unexpected` list.
//
// ReportProgress: any report marks the rank started; the trainer's lines are
// parsed (trainer_protocol/): rank 0's progress, epoch_end and finished lines
// and every rank's failed and log lines are stored as scheduler progress
// events (payload = the JSON line), checkpoint lines go to ReportCheckpoint;
// progress and epoch_end also update ProgressCache and the tern_job_*
// metrics. ReportExit passes the exit to the scheduler; for rank 0 exiting 0
// it attaches the result: the finished line's metrics, epochs from the spec,
// and the artifact's size and SHA-256 (computed here), as JobResult JSON.
// Drain marks the agent draining in the scheduler (no new work); Deregister
// ends its lease at once (Scheduler::DeregisterAgent). A scheduler that no
// longer knows the agent answers FAILED_PRECONDITION, as Heartbeat does.
// Thread-safe.
#ifndef TERN_SERVER_WORKER_SERVICE_H_
#define TERN_SERVER_WORKER_SERVICE_H_

#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "scheduler/agent_leases.h"
#include "server/server_state.h"
#include "tern/v1/worker_service.grpc.pb.h"

namespace tern::server {

class WorkerService final : public v1::WorkerService::Service {
 public:
  // `state` is not owned and must outlive the service.
  explicit WorkerService(ServerState* state);

  grpc::Status Register(grpc::ServerContext* context,
                        const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context,
                         const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status StreamAssignments(
      grpc::ServerContext* context, const v1::StreamAssignmentsRequest* request,
      grpc::ServerWriter<v1::AssignmentEvent>* writer) override;
  grpc::Status ReportProgress(grpc::ServerContext* context,
                              const v1::ReportProgressRequest* request,
                              v1::ReportProgressResponse* response) override;
  grpc::Status ReportExit(grpc::ServerContext* context,
                          const v1::ReportExitRequest* request,
                          v1::ReportExitResponse* response) override;
  grpc::Status Drain(grpc::ServerContext* context, const v1::DrainRequest* request,
                     v1::DrainResponse* response) override;
  grpc::Status Deregister(grpc::ServerContext* context, const v1::DeregisterRequest* request,
                          v1::DeregisterResponse* response) override;

  // AgentLeases::Expire, counting each in tern_scheduler_lease_expiries_total
  // (as does a Register that replaces an expired lease first); returns how
  // many. Called by ternd's tick thread after Scheduler::Tick.
  int ExpireLeases(scheduler::TimePoint now);

 private:
  using RankKey = std::tuple<scheduler::JobId, int, int>;  // job, attempt, rank

  Status DoRegister(const v1::RegisterRequest& request,
                    v1::RegisterResponse* response);
  Status DoHeartbeat(const v1::HeartbeatRequest& request,
                     v1::HeartbeatResponse* response);
  Status DoStreamAssignments(grpc::ServerContext* context,
                             const v1::StreamAssignmentsRequest& request,
                             grpc::ServerWriter<v1::AssignmentEvent>* writer);
  Status DoReportProgress(const v1::ReportProgressRequest& request);
  Status DoReportExit(const v1::ReportExitRequest& request);
  Status DoDrain(const v1::DrainRequest& request);
  Status DoDeregister(const v1::DeregisterRequest& request);

  StatusOr<scheduler::RankRef> ToRankRef(const std::string& agent_id,
                                         const v1::RankRef& ref) const;
  // Stores one relayed trainer event of a current rank.
  Status HandleTrainerEvent(const scheduler::RankRef& rank,
                            const v1::TrainerEvent& event);
  // The result of rank 0's successful exit: its `finished` line, epochs
  // from the spec, the artifact's size and SHA-256.
  v1::JobResult BuildResult(const scheduler::Job& job, int attempt);

  ServerState* const state_;
  scheduler::AgentLeases leases_;
  mutable std::mutex mu_;  // guards finished_ and failures_
  // Rank 0's `finished` line per (job, attempt), until its exit is reported.
  std::map<std::pair<scheduler::JobId, int>, v1::JobResult> finished_;
  // A rank's `failed` line, until its exit is reported.
  struct TrainerFailure {
    std::string code;  // a status code name, e.g. "DATA_LOSS"
    std::string text;  // "CODE: reason"
  };
  std::map<RankKey, TrainerFailure> failures_;
};

}  // namespace tern::server

#endif  // TERN_SERVER_WORKER_SERVICE_H_
