// TrainerMetrics: the per-rank tern_job_* families tern-agent exports
// (docs/METRICS.md, "Agent"), updated from its trainers' parsed stdout lines.
//
// Usage (families registered once, when the agent starts):
//   TrainerMetrics metrics(&registry);
//   TrainerMetrics::Window window;                   // one per trainer process
//   metrics.Update("42", "0", parsed_line, &window);  // every stdout line
//   metrics.Remove("42", "0");                        // once the trainer exited
//
// A series exists only once the trainer has reported its value: progress
// lines without `gpu_memory_bytes` (CPU runs, older trainers) create no GPU
// memory series, and none without `allreduce_seconds` or `data_wait_seconds`
// create those histograms. The step time is the trainer's `step_seconds`,
// or, from trainers that do not report it, the time between two progress
// lines divided by the steps between them.
//
// Thread-safe (series updates are); a Window belongs to one thread.
#ifndef TERN_WORKER_AGENT_TRAINER_METRICS_H_
#define TERN_WORKER_AGENT_TRAINER_METRICS_H_

#include <string>

#include "common/metrics.h"
#include "trainer_protocol/trainer_events.h"

namespace tern::agent {

class TrainerMetrics {
 public:
  // What Update remembers of one trainer's previous progress line.
  struct Window {
    double last_time = 0;  // its "time" (Unix seconds); 0 before the first
    int last_step = -1;    // its step; -1 before the first and after `started`
  };

  // `registry` is not owned and must outlive this object.
  explicit TrainerMetrics(metrics::Registry* registry);
  TrainerMetrics(const TrainerMetrics&) = delete;
  TrainerMetrics& operator=(const TrainerMetrics&) = delete;

  // Updates the series labelled {job, rank} from one parsed line (progress,
  // started and checkpoint lines count; others change nothing).
  void Update(const std::string& job, const std::string& rank, const trainer::ParsedLine& line,
              Window* window);
  // Drops every series labelled {job, rank}.
  void Remove(const std::string& job, const std::string& rank);

 private:
  metrics::Family<metrics::Gauge>& step_;
  metrics::Family<metrics::Gauge>& loss_;
  metrics::Family<metrics::Gauge>& images_per_second_;
  metrics::Family<metrics::Histogram>& step_time_;
  metrics::Family<metrics::Histogram>& allreduce_;
  metrics::Family<metrics::Histogram>& data_wait_;
  metrics::Family<metrics::Gauge>& gpu_memory_;
  metrics::Family<metrics::Gauge>& gpu_peak_memory_;
  metrics::Family<metrics::Gauge>& checkpoint_seconds_;
};

}  // namespace tern::agent

#endif  // TERN_WORKER_AGENT_TRAINER_METRICS_H_
