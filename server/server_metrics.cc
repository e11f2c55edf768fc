#include "server/server_metrics.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iterator>
#include <optional>
#include <vector>

namespace tern::server {
namespace {

using scheduler::JobState;

constexpr JobState kStates[] = {
    JobState::kQueued,    JobState::kAdmitted, JobState::kRunning,   JobState::kRestarting,
    JobState::kSucceeded, JobState::kFailed,   JobState::kCancelled, JobState::kCancelling,
};
constexpr const char* kDeviceKinds[] = {scheduler::kDeviceCpu,
                                        scheduler::kDeviceCuda};
// Reasons a job is restarted for (scheduler/job.h); others appear on first
// use.
constexpr const char* kRestartReasons[] = {
    scheduler::reason::kTrainerFailed,      scheduler::reason::kRankLost,
    scheduler::reason::kCollectiveFailed,   scheduler::reason::kAgentLeaseExpired,
    scheduler::reason::kAgentDeregistered,  scheduler::reason::kRankPreempted,
    scheduler::reason::kRendezvousPortInUse};

std::string Lower(const char* s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(c));
  return out;
}

std::string JobLabel(scheduler::JobId id) { return std::to_string(id); }

// Per-step durations: 1 ms x 2^n up to 32.8 s, as the agent's.
std::vector<double> StepBuckets() {
  return metrics::ExponentialBuckets(0.001, 2, 16);
}

}  // namespace

ServerMetrics::ServerMetrics(metrics::Registry* registry,
                             std::chrono::milliseconds job_series_grace)
    : registry_(registry),
      grace_(job_series_grace),
      leader_(registry->AddGauge(
          "tern_leader",
          "1 while this ternd leads (serves calls and runs the scheduler), 0 while it is a "
          "standby or lost the lease. Always 1 with a SQLite store (no election).")),
      leader_epoch_(registry->AddGauge(
          "tern_leader_epoch",
          "The election epoch (fencing token) this ternd leads with; 0 while it does not lead "
          "or without an election.")),
      jobs_(registry->AddGauge("tern_scheduler_jobs", "Jobs known to the scheduler, by state.",
                               {"state"})),
      queue_depth_(registry->AddGauge("tern_scheduler_queue_depth",
                                      "Jobs waiting for admission (state QUEUED).")),
      admission_wait_(
          registry->AddHistogram("tern_scheduler_admission_wait_seconds",
                                 "Time from entering the queue (submission or re-queue) to "
                                 "admission.",
                                 metrics::ExponentialBuckets(0.01, 4, 10))),
      restarts_(
          registry->AddCounter("tern_scheduler_restarts_total",
                               "Job attempts lost and restarted (or failed for lack of restarts), "
                               "by reason.",
                               {"reason"})),
      agents_(registry->AddGauge("tern_scheduler_agents", "Agents with a live lease.")),
      draining_agents_(
          registry->AddGauge("tern_scheduler_agents_draining",
                             "Agents with a live lease that are shutting down (no new work).")),
      quota_waiting_(
          registry->AddGauge("tern_scheduler_jobs_waiting_on_quota",
                             "Queued jobs held back by their owner's slot quota (--quota-file).")),
      quota_file_stale_(
          registry->AddGauge("tern_scheduler_quota_file_stale",
                             "1 when the quota file changed but could not be used (the last good "
                             "quotas apply; see ternd's log), else 0.")),
      owner_slots_(
          registry->AddGauge("tern_scheduler_owner_slots",
                             "Slots held by an owner's ADMITTED and RUNNING jobs, by device kind "
                             "(owners with unfinished jobs only).",
                             {"owner", "device_kind"})),
      owner_jobs_(
          registry->AddGauge("tern_scheduler_owner_unfinished_jobs",
                             "An owner's QUEUED, ADMITTED, RUNNING and RESTARTING jobs (owners "
                             "with unfinished jobs only).",
                             {"owner"})),
      slots_(
          registry->AddGauge("tern_scheduler_slots",
                             "Slots of live agents that take work (not draining) by device kind, "
                             "free or held by jobs.",
                             {"device_kind", "state"})),
      lease_expiries_(registry->AddCounter("tern_scheduler_lease_expiries_total",
                                           "Agent leases that expired without a heartbeat.")),
      requests_(registry->AddCounter("tern_grpc_requests_total",
                                     "gRPC requests handled, by method and status code.",
                                     {"method", "code"})),
      request_duration_(
          registry->AddHistogram("tern_grpc_request_duration_seconds",
                                 "Time to handle a gRPC request (a stream's whole life).",
                                 metrics::ExponentialBuckets(0.0005, 4, 10), {"method"})),
      job_epoch_(registry->AddGauge("tern_job_epoch", "Current epoch of a running job.", {"job"})),
      job_step_(
          registry->AddGauge("tern_job_step", "Optimizer steps completed by a job.", {"job"})),
      job_loss_(registry->AddGauge("tern_job_loss", "Mean training loss since the previous sample.",
                                   {"job"})),
      job_lr_(
          registry->AddGauge("tern_job_learning_rate", "Current learning rate of a job.", {"job"})),
      job_images_per_second_(registry->AddGauge(
          "tern_job_images_per_second", "Training throughput of a job, all ranks.", {"job"})),
      job_accuracy_(
          registry->AddGauge("tern_job_accuracy",
                             "Top-1 accuracy (fraction) of a job's full-precision or ternary "
                             "weights on an evaluation split.",
                             {"job", "split", "weights"})),
      job_ap_(registry->AddGauge("tern_job_ap",
                                 "COCO average precision (fraction) of a detection job's "
                                 "full-precision or ternary weights on an evaluation split, at an "
                                 "IoU threshold (0.50, 0.75) or averaged over 0.50:0.95.",
                                 {"job", "split", "weights", "iou"})),
      job_ar_(registry->AddGauge("tern_job_ar",
                                 "COCO average recall (fraction, IoU 0.50:0.95) of a detection "
                                 "job's full-precision or ternary weights on an evaluation split, "
                                 "with at most max_dets detections per image and category (1, 10, "
                                 "or 100: the job's model.max_detections).",
                                 {"job", "split", "weights", "max_dets"})),
      job_layer_sparsity_(registry->AddGauge(
          "tern_job_layer_sparsity", "Share of a quantized layer's ternary codes that are 0.",
          {"job", "layer"})),
      job_layer_alpha_(registry->AddGauge(
          "tern_job_layer_alpha", "Ternary scale alpha of a quantized layer.", {"job", "layer"})),
      job_layer_cos_wt_(registry->AddGauge(
          "tern_job_layer_cos_wt", "cos(W, T) between a layer's latent weights and ternary codes.",
          {"job", "layer"})),
      job_layer_flips_(
          registry->AddGauge("tern_job_layer_flips_per_step",
                             "Share of a layer's ternary codes that changed per optimizer step "
                             "(over the last epoch).",
                             {"job", "layer"})),
      job_reg_lambda_(registry->AddGauge("tern_job_reg_lambda",
                                         "Weight lambda of the hyperspherical regularizer (HLA).",
                                         {"job"})),
      job_kappa_(registry->AddGauge(
          "tern_job_kappa", "Sharpness kappa of the re-scaled gradient (HLA phase 2).", {"job"})),
      job_step_time_(
          registry->AddHistogram("tern_job_step_time_seconds",
                                 "Mean optimizer step time between two progress samples of a job.",
                                 StepBuckets(), {"job"})),
      job_allreduce_(
          registry->AddHistogram("tern_job_allreduce_seconds",
                                 "Mean time per optimizer step rank 0 spent in the gradient "
                                 "all-reduce between two progress samples of a job.",
                                 StepBuckets(), {"job"})),
      job_data_wait_(
          registry->AddHistogram("tern_job_data_wait_seconds",
                                 "Mean time per optimizer step rank 0 waited for the data loader "
                                 "between two progress samples of a job.",
                                 StepBuckets(), {"job"})),
      job_gpu_memory_(registry->AddGauge(
          "tern_job_gpu_memory_bytes",
          "Bytes the CUDA caching allocator has allocated on rank 0's GPU.", {"job"})),
      job_gpu_peak_memory_(
          registry->AddGauge("tern_job_gpu_peak_memory_bytes",
                             "Peak bytes the CUDA caching allocator has allocated on rank 0's "
                             "GPU.",
                             {"job"})) {
  for (JobState state : kStates) {
    jobs_.WithLabels({Lower(scheduler::JobStateName(state))});
  }
  queue_depth_.WithLabels({});
  admission_wait_.WithLabels({});
  for (const char* reason : kRestartReasons) restarts_.WithLabels({reason});
  agents_.WithLabels({});
  draining_agents_.WithLabels({});
  quota_waiting_.WithLabels({});
  quota_file_stale_.WithLabels({});
  leader_.WithLabels({});
  leader_epoch_.WithLabels({});
  for (const char* kind : kDeviceKinds) {
    slots_.WithLabels({kind, "free"});
    slots_.WithLabels({kind, "busy"});
  }
  lease_expiries_.WithLabels({});
}

void ServerMetrics::ObserveRpc(const std::string& method, StatusCode code,
                               double seconds) {
  requests_.WithLabels({method, StatusCodeName(code)})->Increment();
  request_duration_.WithLabels({method})->Observe(seconds);
}

void ServerMetrics::UpdateScheduler(const scheduler::SchedulerStats& stats) {
  for (JobState state : kStates) {
    auto it = stats.jobs.find(state);
    jobs_.WithLabels({Lower(scheduler::JobStateName(state))})
        ->Set(it == stats.jobs.end() ? 0 : it->second);
  }
  auto queued = stats.jobs.find(JobState::kQueued);
  queue_depth_.WithLabels({})->Set(queued == stats.jobs.end() ? 0
                                                              : queued->second);
  agents_.WithLabels({})->Set(stats.live_agents);
  draining_agents_.WithLabels({})->Set(stats.draining_agents);
  quota_waiting_.WithLabels({})->Set(stats.jobs_waiting_on_quota);
  // Owners come and go: their series leave with their last unfinished job.
  std::set<std::string> owners;
  for (const auto& [owner, usage] : stats.owners) {
    owners.insert(owner);
    owner_jobs_.WithLabels({owner})->Set(usage.unfinished_jobs);
    for (const char* kind : kDeviceKinds) {
      auto held = usage.slots.find(kind);
      owner_slots_.WithLabels({owner, kind})->Set(held == usage.slots.end() ? 0 : held->second);
    }
  }
  std::set<std::string> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::set_difference(owners_shown_.begin(), owners_shown_.end(), owners.begin(), owners.end(),
                        std::inserter(gone, gone.end()));
    owners_shown_ = std::move(owners);
  }
  for (const std::string& owner : gone) {
    owner_jobs_.Remove({owner});
    for (const char* kind : kDeviceKinds) owner_slots_.Remove({owner, kind});
  }
  for (const char* kind : kDeviceKinds) {
    auto total = stats.total_slots.find(kind);
    auto free = stats.free_slots.find(kind);
    const int t = total == stats.total_slots.end() ? 0 : total->second;
    const int f = free == stats.free_slots.end() ? 0 : free->second;
    slots_.WithLabels({kind, "free"})->Set(f);
    slots_.WithLabels({kind, "busy"})->Set(t - f);
  }
}

void ServerMetrics::SetLeader(bool leading, int64_t epoch) {
  leader_.WithLabels({})->Set(leading ? 1 : 0);
  leader_epoch_.WithLabels({})->Set(leading ? static_cast<double>(epoch) : 0);
}

void ServerMetrics::SetQuotaFileStale(bool stale) {
  quota_file_stale_.WithLabels({})->Set(stale ? 1 : 0);
}

void ServerMetrics::OnJobEvent(const scheduler::Job& job,
                               const scheduler::JobEvent& event) {
  if (event.type != scheduler::JobEventType::kStateChanged) return;
  if (event.to == JobState::kRestarting) {
    restarts_.WithLabels({event.reason})->Increment();
  }
  if (event.to == JobState::kAdmitted) {
    // The wait started at the latest entry into QUEUED before this event.
    scheduler::TimePoint queued_at = job.submit_time;
    for (const scheduler::JobEvent& e : job.history) {
      if (e.seq >= event.seq) break;
      if (e.to == JobState::kQueued) queued_at = e.time;
    }
    const double wait =
        std::chrono::duration<double>(event.time - queued_at).count();
    admission_wait_.WithLabels({})->Observe(std::max(0.0, wait));
  }
  if (scheduler::IsTerminal(event.to)) {
    std::lock_guard<std::mutex> lock(mu_);
    ended_[job.id] = event.time;
  }
}

void ServerMetrics::OnLeaseExpired() {
  lease_expiries_.WithLabels({})->Increment();
}

void ServerMetrics::OnProgress(scheduler::JobId id, const trainer::TrainerLine& line) {
  const v1::Progress& progress = line.progress;
  const std::string job = JobLabel(id);
  job_epoch_.WithLabels({job})->Set(progress.epoch());
  job_step_.WithLabels({job})->Set(progress.step());
  job_loss_.WithLabels({job})->Set(progress.loss());
  job_lr_.WithLabels({job})->Set(progress.lr());
  job_images_per_second_.WithLabels({job})->Set(progress.images_per_second());
  job_reg_lambda_.WithLabels({job})->Set(progress.reg_lambda());
  job_kappa_.WithLabels({job})->Set(line.kappa);

  std::optional<double> step_seconds;
  if (progress.has_step_seconds()) step_seconds = progress.step_seconds();
  {
    std::lock_guard<std::mutex> lock(mu_);
    StepWindow& window = windows_[id];
    if (!step_seconds && window.step >= 0 && progress.step() > window.step &&
        window.time > 0 && line.time > window.time) {
      step_seconds =
          (line.time - window.time) / (progress.step() - window.step);
    }
    window.step = progress.step();
    window.time = line.time;
  }
  if (step_seconds) job_step_time_.WithLabels({job})->Observe(*step_seconds);
  if (progress.has_allreduce_seconds()) {
    job_allreduce_.WithLabels({job})->Observe(progress.allreduce_seconds());
  }
  if (progress.has_data_wait_seconds()) {
    job_data_wait_.WithLabels({job})->Observe(progress.data_wait_seconds());
  }
  if (progress.has_gpu_memory_bytes()) {
    job_gpu_memory_.WithLabels({job})->Set(
        static_cast<double>(progress.gpu_memory_bytes()));
  }
  if (progress.has_gpu_peak_memory_bytes()) {
    job_gpu_peak_memory_.WithLabels({job})->Set(
        static_cast<double>(progress.gpu_peak_memory_bytes()));
  }
}

void ServerMetrics::OnTrainerStarted(scheduler::JobId id) {
  std::lock_guard<std::mutex> lock(mu_);
  windows_.erase(id);
}

void ServerMetrics::OnEpochEnd(scheduler::JobId id,
                               const v1::EpochEnd& epoch_end) {
  const std::string job = JobLabel(id);
  const v1::EpochMetrics& m = epoch_end.metrics();
  const std::string split = m.eval_split().empty() ? "eval" : m.eval_split();
  if (m.has_fp_top1()) SetAccuracy(job, split, "fp", m.fp_top1());
  if (m.has_ternary_top1())
    SetAccuracy(job, split, "ternary", m.ternary_top1());
  SetAp(job, split, "fp", m.fp_detection());
  SetAp(job, split, "ternary", m.ternary_detection());
  SetLayers(job, epoch_end.layers(), /*with_flips=*/true);
}

void ServerMetrics::OnResult(scheduler::JobId id, const v1::JobResult& result) {
  const std::string job = JobLabel(id);
  if (result.has_fp_top1()) SetAccuracy(job, "test", "fp", result.fp_top1());
  if (result.has_ternary_top1()) {
    SetAccuracy(job, "test", "ternary", result.ternary_top1());
  }
  // Detection jobs evaluate the final model on the val split; the label
  // keeps tern_job_accuracy's "test" for final results (docs/METRICS.md).
  SetAp(job, "test", "fp", result.fp_detection());
  SetAp(job, "test", "ternary", result.ternary_detection());
  // With a validation split (dataset.val_fraction): the final epoch's figures
  // on it, the latest value of the epochs' split="val" series.
  if (result.has_val_fp_top1()) SetAccuracy(job, "val", "fp", result.val_fp_top1());
  if (result.has_val_ternary_top1()) {
    SetAccuracy(job, "val", "ternary", result.val_ternary_top1());
  }
  SetAp(job, "val", "fp", result.val_fp_detection());
  SetAp(job, "val", "ternary", result.val_ternary_detection());
  // The final statistics carry no flip rate (no steps in their window).
  SetLayers(job, result.layers(), /*with_flips=*/false);
}

void ServerMetrics::SetAccuracy(const std::string& job,
                                const std::string& split, const char* weights,
                                double value) {
  job_accuracy_.WithLabels({job, split, weights})->Set(value);
}

void ServerMetrics::SetAp(const std::string& job, const std::string& split,
                          const char* weights, const v1::DetectionMetrics& d) {
  if (d.has_ap()) {
    job_ap_.WithLabels({job, split, weights, "0.50:0.95"})->Set(d.ap());
  }
  if (d.has_ap50()) {
    job_ap_.WithLabels({job, split, weights, "0.50"})->Set(d.ap50());
  }
  if (d.has_ap75()) {
    job_ap_.WithLabels({job, split, weights, "0.75"})->Set(d.ap75());
  }
  if (d.has_ar1()) job_ar_.WithLabels({job, split, weights, "1"})->Set(d.ar1());
  if (d.has_ar10()) {
    job_ar_.WithLabels({job, split, weights, "10"})->Set(d.ar10());
  }
  if (d.has_ar100()) {
    job_ar_.WithLabels({job, split, weights, "100"})->Set(d.ar100());
  }
}

void ServerMetrics::SetLayers(
    const std::string& job,
    const google::protobuf::RepeatedPtrField<v1::LayerStats>& layers,
    bool with_flips) {
  for (const v1::LayerStats& l : layers) {
    if (l.name().empty()) continue;
    job_layer_sparsity_.WithLabels({job, l.name()})->Set(l.sparsity());
    job_layer_alpha_.WithLabels({job, l.name()})->Set(l.alpha());
    job_layer_cos_wt_.WithLabels({job, l.name()})->Set(l.cos_wt());
    if (with_flips) {
      job_layer_flips_.WithLabels({job, l.name()})->Set(l.flips());
    }
  }
}

int ServerMetrics::DropEndedJobs(scheduler::TimePoint now) {
  std::vector<scheduler::JobId> due;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = ended_.begin(); it != ended_.end();) {
      if (now - it->second >= grace_) {
        due.push_back(it->first);
        windows_.erase(it->first);
        it = ended_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (scheduler::JobId id : due) {
    registry_->RemoveSeriesWithLabel("job", JobLabel(id));
  }
  return static_cast<int>(due.size());
}

}  // namespace tern::server
