// ServerMetrics: every Prometheus family ternd exports (docs/METRICS.md),
// registered once at construction, and the updates the server makes to them.
//
// Usage: ServerMetrics metrics(&registry, /*job_series_grace=*/5min);
//   metrics.ObserveRpc("GetJob", StatusCode::kOk, 0.002);  // every RPC
//   metrics.OnJobEvent(job, event);      // every stored scheduler event
//   metrics.OnProgress(42, line);        // relayed trainer events
//   metrics.UpdateScheduler(scheduler.Stats());  // each tick
//   metrics.DropEndedJobs(now);          // each tick: forget ended jobs
// Per-job series (tern_job_*) carry a `job` label; they are removed with
// Registry::RemoveSeriesWithLabel("job", id) once the job has been terminal
// for the grace period, so a scrape still sees a job's final values. A
// series appears once the trainer reports its value: no GPU memory series
// for CPU runs, no all-reduce or data-wait histogram for older trainers.
// Thread-safe; OnJobEvent only takes this object's lock (it runs under the
// scheduler's).
#ifndef TERN_SERVER_SERVER_METRICS_H_
#define TERN_SERVER_SERVER_METRICS_H_

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "common/metrics.h"
#include "common/status.h"
#include "scheduler/job.h"
#include "scheduler/scheduler.h"
#include "tern/v1/job.pb.h"
#include "trainer_protocol/trainer_events.h"

namespace tern::server {

class ServerMetrics {
 public:
  // `registry` is not owned and must outlive this object.
  ServerMetrics(metrics::Registry* registry,
                std::chrono::milliseconds job_series_grace);
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // One finished RPC (for a stream: its whole life).
  void ObserveRpc(const std::string& method, StatusCode code, double seconds);
  // Job counts by state, queue depth, agents and slots.
  void UpdateScheduler(const scheduler::SchedulerStats& stats);
  void SetQuotaFileStale(bool stale);
  // tern_leader and tern_leader_epoch (the epoch shows 0 unless leading).
  void SetLeader(bool leading, int64_t epoch);
  // A stored scheduler event: restarts by reason, admission waits, job ends.
  void OnJobEvent(const scheduler::Job& job, const scheduler::JobEvent& event);
  void OnLeaseExpired();
  // Relayed trainer events of a job's current attempt (rank 0's).
  // `line.kind` is kProgress: its progress, kappa and time are used. The
  // step time is progress.step_seconds, or, when the trainer does not report
  // it, the time since the previous progress line per step since then.
  void OnProgress(scheduler::JobId id, const trainer::TrainerLine& line);
  // Rank 0's trainer (re)started: the next progress line opens a new
  // step-time interval.
  void OnTrainerStarted(scheduler::JobId id);
  void OnEpochEnd(scheduler::JobId id, const v1::EpochEnd& epoch_end);
  void OnResult(scheduler::JobId id, const v1::JobResult& result);
  // Removes the tern_job_* series of jobs that ended at or before
  // now - job_series_grace. Returns how many jobs were dropped.
  int DropEndedJobs(scheduler::TimePoint now);

 private:
  void SetAccuracy(const std::string& job, const std::string& split,
                   const char* weights, double value);
  // tern_job_ap for each of ap, ap50 and ap75 that `d` has, tern_job_ar for
  // each of ar1, ar10 and ar100.
  void SetAp(const std::string& job, const std::string& split,
             const char* weights, const v1::DetectionMetrics& d);
  void SetLayers(const std::string& job,
                 const google::protobuf::RepeatedPtrField<v1::LayerStats>& l,
                 bool with_flips);

  metrics::Registry* const registry_;
  const std::chrono::milliseconds grace_;

  // Leadership.
  metrics::Family<metrics::Gauge>& leader_;
  metrics::Family<metrics::Gauge>& leader_epoch_;

  // Scheduler.
  metrics::Family<metrics::Gauge>& jobs_;
  metrics::Family<metrics::Gauge>& queue_depth_;
  metrics::Family<metrics::Histogram>& admission_wait_;
  metrics::Family<metrics::Counter>& restarts_;
  metrics::Family<metrics::Gauge>& agents_;
  metrics::Family<metrics::Gauge>& draining_agents_;
  metrics::Family<metrics::Gauge>& quota_waiting_;
  metrics::Family<metrics::Gauge>& quota_file_stale_;
  metrics::Family<metrics::Gauge>& owner_slots_;
  metrics::Family<metrics::Gauge>& owner_jobs_;
  metrics::Family<metrics::Gauge>& slots_;
  metrics::Family<metrics::Counter>& lease_expiries_;
  // gRPC.
  metrics::Family<metrics::Counter>& requests_;
  metrics::Family<metrics::Histogram>& request_duration_;
  // Jobs.
  metrics::Family<metrics::Gauge>& job_epoch_;
  metrics::Family<metrics::Gauge>& job_step_;
  metrics::Family<metrics::Gauge>& job_loss_;
  metrics::Family<metrics::Gauge>& job_lr_;
  metrics::Family<metrics::Gauge>& job_images_per_second_;
  metrics::Family<metrics::Gauge>& job_accuracy_;
  metrics::Family<metrics::Gauge>& job_ap_;
  metrics::Family<metrics::Gauge>& job_ar_;
  metrics::Family<metrics::Gauge>& job_layer_sparsity_;
  metrics::Family<metrics::Gauge>& job_layer_alpha_;
  metrics::Family<metrics::Gauge>& job_layer_cos_wt_;
  metrics::Family<metrics::Gauge>& job_layer_flips_;
  metrics::Family<metrics::Gauge>& job_reg_lambda_;
  metrics::Family<metrics::Gauge>& job_kappa_;
  metrics::Family<metrics::Histogram>& job_step_time_;
  metrics::Family<metrics::Histogram>& job_allreduce_;
  metrics::Family<metrics::Histogram>& job_data_wait_;
  metrics::Family<metrics::Gauge>& job_gpu_memory_;
  metrics::Family<metrics::Gauge>& job_gpu_peak_memory_;

  // The previous progress line of a job (for trainers without step_seconds).
  struct StepWindow {
    int step = -1;    // -1: none since the trainer started
    double time = 0;  // its "time", Unix seconds
  };

  std::mutex mu_;
  std::map<scheduler::JobId, scheduler::TimePoint> ended_;  // job -> end time
  std::set<std::string> owners_shown_;  // owners with tern_scheduler_owner_* series
  std::map<scheduler::JobId, StepWindow> windows_;
};

}  // namespace tern::server

#endif  // TERN_SERVER_SERVER_METRICS_H_
