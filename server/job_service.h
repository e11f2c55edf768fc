// JobService: tern.v1.JobService (the users' API) over the scheduler.
//
// Each handler validates, calls the scheduler, converts (job_convert.h) and
// returns the status one to one (rpc.h). Specs are stored as deterministic
// proto binary with `owner` set from the caller (caller.h); idempotent
// resubmission compares the stored spec with the new one (equal: the original
// job, created = false; different: ALREADY_EXISTS). ListJobs pages newest
// first with tokens that embed a fingerprint of the filters. WatchJob streams
// are served by a WatchHub (watch_hub.h): the stored history from
// from_sequence, then new events, ending after the terminal state change.
// UpdateJob changes spec.name and spec.labels only (stored in the spec blob
// and the label rows, no event). DeleteJob removes a terminal job's rows in
// one transaction, then its files (RemoveJobFiles).
// GetArtifact streams
// the file named by the job's result in 1 MiB chunks after checking its
// SHA-256 against the one recorded when the job succeeded. ListAgents is open
// to every caller that may list jobs: it names no job.
// Thread-safe: handlers run concurrently on gRPC's threads.
#ifndef TERN_SERVER_JOB_SERVICE_H_
#define TERN_SERVER_JOB_SERVICE_H_

#include "server/caller.h"
#include "server/server_state.h"
#include "server/watch_hub.h"
#include "tern/v1/job_service.grpc.pb.h"

namespace tern::server {

// WatchJob uses gRPC's callback API (server/watch_hub.h): no thread per
// open stream; the other methods are synchronous.
class JobService final : public v1::JobService::WithCallbackMethod_WatchJob<v1::JobService::Service> {
 public:
  // `state` is not owned and must outlive the service.
  explicit JobService(ServerState* state);

  grpc::Status SubmitJob(grpc::ServerContext* context,
                         const v1::SubmitJobRequest* request,
                         v1::SubmitJobResponse* response) override;
  grpc::Status GetJob(grpc::ServerContext* context,
                      const v1::GetJobRequest* request,
                      v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context,
                        const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context,
                         const v1::CancelJobRequest* request,
                         v1::Job* response) override;
  grpc::Status UpdateJob(grpc::ServerContext* context, const v1::UpdateJobRequest* request,
                         v1::Job* response) override;
  grpc::Status DeleteJob(grpc::ServerContext* context, const v1::DeleteJobRequest* request,
                         google::protobuf::Empty* response) override;
  grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* context,
                                                   const v1::WatchJobRequest* request) override;
  // Ends the open WatchJob streams (UNAVAILABLE); call when ternd stops.
  void StopStreams();
  grpc::Status GetArtifact(
      grpc::ServerContext* context, const v1::GetArtifactRequest* request,
      grpc::ServerWriter<v1::GetArtifactResponse>* writer) override;
  grpc::Status WhoAmI(grpc::ServerContext* context, const v1::WhoAmIRequest* request,
                      v1::WhoAmIResponse* response) override;
  grpc::Status ListAgents(grpc::ServerContext* context, const v1::ListAgentsRequest* request,
                          v1::ListAgentsResponse* response) override;

 private:
  Status DoSubmitJob(grpc::ServerContext* context,
                     const v1::SubmitJobRequest& request,
                     v1::SubmitJobResponse* response);
  Status DoListJobs(const Caller& caller, const v1::ListJobsRequest& request,
                    v1::ListJobsResponse* response);
  Status DoCancelJob(grpc::ServerContext* context,
                     const v1::CancelJobRequest& request, v1::Job* response);
  Status DoUpdateJob(grpc::ServerContext* context, const v1::UpdateJobRequest& request,
                     v1::Job* response);
  Status DoDeleteJob(grpc::ServerContext* context, const v1::DeleteJobRequest& request);
  // Removes what ternd wrote to disk for a deleted job: its artifact directory
  // and its server-chosen checkpoint directory (never a spec's own
  // checkpoint.directory). Failures are logged, not returned: the job's rows
  // are gone already.
  void RemoveJobFiles(const scheduler::Job& job) const;
  Status DoGetArtifact(grpc::ServerContext* context,
                       const v1::GetArtifactRequest& request,
                       grpc::ServerWriter<v1::GetArtifactResponse>* writer);
  // The job the caller may read and cancel. An absent job and another
  // owner's job (for a caller that may not see it) are the same NOT_FOUND
  // "job 42 not found", reason JOB_NOT_FOUND, naming no owner (AIP-211).
  StatusOr<scheduler::Job> ReadableJob(grpc::ServerContextBase* context,
                                       const std::string& job_id,
                                       Caller* caller = nullptr);
  // The tern.v1.Job for `job` (ToProtoJob with its wait reason and progress).
  StatusOr<v1::Job> Describe(const scheduler::Job& job);
  // Describe for SubmitJob's answer, from what the call has in hand: the
  // wait reason the scheduler gave with `submitted` and `spec`, what
  // submitted.job.spec holds. A job just created has no progress yet.
  StatusOr<v1::Job> DescribeSubmitted(const scheduler::SubmitResult& submitted,
                                      const v1::JobSpec& spec);
  Status Stopping(grpc::ServerContext* context) const;

  ServerState* const state_;
  WatchHub watch_hub_;
};

}  // namespace tern::server

#endif  // TERN_SERVER_JOB_SERVICE_H_
