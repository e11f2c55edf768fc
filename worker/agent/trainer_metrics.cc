#include "worker/agent/trainer_metrics.h"

#include <vector>

namespace tern::agent {
namespace {

// Per-step durations: 1 ms × 2ⁿ up to 32.8 s (ternd uses the same buckets).
std::vector<double> StepBuckets() { return metrics::ExponentialBuckets(0.001, 2, 16); }

}  // namespace

TrainerMetrics::TrainerMetrics(metrics::Registry* registry)
    : step_(registry->AddGauge("tern_job_step", "Latest optimizer step a trainer reported.",
                               {"job", "rank"})),
      loss_(registry->AddGauge("tern_job_loss", "Latest training loss a trainer reported.",
                               {"job", "rank"})),
      images_per_second_(registry->AddGauge(
          "tern_job_images_per_second",
          "Latest training throughput a trainer reported (all ranks).", {"job", "rank"})),
      step_time_(registry->AddHistogram(
          "tern_job_step_time_seconds",
          "Mean optimizer step time between two progress events of a trainer.", StepBuckets(),
          {"job", "rank"})),
      allreduce_(registry->AddHistogram(
          "tern_job_allreduce_seconds",
          "Mean time per optimizer step in the gradient all-reduce between two progress events "
          "of a trainer.",
          StepBuckets(), {"job", "rank"})),
      data_wait_(registry->AddHistogram(
          "tern_job_data_wait_seconds",
          "Mean time per optimizer step waiting for the data loader between two progress "
          "events of a trainer.",
          StepBuckets(), {"job", "rank"})),
      gpu_memory_(registry->AddGauge(
          "tern_job_gpu_memory_bytes",
          "Bytes the CUDA caching allocator has allocated on a trainer's GPU.", {"job", "rank"})),
      gpu_peak_memory_(registry->AddGauge(
          "tern_job_gpu_peak_memory_bytes",
          "Peak bytes the CUDA caching allocator has allocated on a trainer's GPU.",
          {"job", "rank"})),
      checkpoint_seconds_(registry->AddGauge("tern_job_checkpoint_seconds",
                                             "Seconds the latest checkpoint save took.",
                                             {"job", "rank"})) {}

void TrainerMetrics::Update(const std::string& job, const std::string& rank,
                            const trainer::ParsedLine& line, Window* window) {
  const std::vector<std::string> labels = {job, rank};
  if (line.event.has_progress()) {
    const v1::Progress& p = line.event.progress();
    step_.WithLabels(labels)->Set(p.step());
    loss_.WithLabels(labels)->Set(p.loss());
    images_per_second_.WithLabels(labels)->Set(p.images_per_second());
    if (p.has_step_seconds()) {
      step_time_.WithLabels(labels)->Observe(p.step_seconds());
    } else if (window->last_step >= 0 && p.step() > window->last_step && window->last_time > 0 &&
               line.trainer_time > window->last_time) {
      step_time_.WithLabels(labels)->Observe((line.trainer_time - window->last_time) /
                                             (p.step() - window->last_step));
    }
    if (p.has_allreduce_seconds()) allreduce_.WithLabels(labels)->Observe(p.allreduce_seconds());
    if (p.has_data_wait_seconds()) data_wait_.WithLabels(labels)->Observe(p.data_wait_seconds());
    if (p.has_gpu_memory_bytes()) {
      gpu_memory_.WithLabels(labels)->Set(static_cast<double>(p.gpu_memory_bytes()));
    }
    if (p.has_gpu_peak_memory_bytes()) {
      gpu_peak_memory_.WithLabels(labels)->Set(static_cast<double>(p.gpu_peak_memory_bytes()));
    }
    window->last_step = p.step();
    window->last_time = line.trainer_time;
  } else if (line.event.has_started()) {
    window->last_step = -1;  // a resumed run starts a new interval
  } else if (line.checkpoint_seconds >= 0) {
    checkpoint_seconds_.WithLabels(labels)->Set(line.checkpoint_seconds);
  }
}

void TrainerMetrics::Remove(const std::string& job, const std::string& rank) {
  const std::vector<std::string> labels = {job, rank};
  step_.Remove(labels);
  loss_.Remove(labels);
  images_per_second_.Remove(labels);
  step_time_.Remove(labels);
  allreduce_.Remove(labels);
  data_wait_.Remove(labels);
  gpu_memory_.Remove(labels);
  gpu_peak_memory_.Remove(labels);
  checkpoint_seconds_.Remove(labels);
}

}  // namespace tern::agent
