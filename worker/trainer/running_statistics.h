// RunningStatistics: the BatchNorm running statistics of a data-parallel
// training step (docs/METHOD.md, "BatchNorm statistics").
//
// One optimizer step moves every running_mean / running_var once, toward the
// mean over all the step's micro-batches on all ranks of what each of them
// alone would have moved it to:
//   r <- mean_k [(1 - momentum) r + momentum s_k] = (1 - momentum) r + momentum mean_k s_k
// (s_k the statistics of micro-batch k), and num_batches_tracked counts
// optimizer steps. So a run depends only on how the global batch is cut into
// equal shards, not on how the shards are laid out over ranks and
// micro-batches: 1 rank with 2 micro-batches equals 2 ranks with 1.
//
// The trainer does it in two parts:
//   - on one rank with M > 1 micro-batches, every micro-batch's forward
//     starts from the step's statistics, and after the last one they are the
//     mean of the M results (BeginMicroBatches / EndMicroBatch);
//   - the ranks then average `averaged()` in the gradient all-reduce (no
//     collective of their own), so every rank, every checkpoint and the
//     export hold the same statistics after every step.
// With M = 1 (and the CUDA-graph step, which is M = 1) the first part does
// nothing and the BatchNorm forward updates the buffers in place as usual.
//
// The buffers are found by name (`*.running_mean`, `*.running_var`,
// `*.num_batches_tracked`); the handles stay valid across Module::load and
// in-place collectives (both keep the tensors, not only their values).
// Not thread-safe.
#ifndef TERN_WORKER_TRAINER_RUNNING_STATISTICS_H_
#define TERN_WORKER_TRAINER_RUNNING_STATISTICS_H_

#include <torch/nn/module.h>
#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

#include "common/status.h"

namespace tern::trainer {

class Communicator;

class RunningStatistics {
 public:
  explicit RunningStatistics(const torch::nn::Module& model);

  // running_mean and running_var of every BatchNorm (floating point), in
  // the module's order: the tensors the ranks average after each step.
  const std::vector<at::Tensor>& averaged() const { return stats_; }
  // num_batches_tracked of every BatchNorm (int64; equal on every rank).
  const std::vector<at::Tensor>& counters() const { return counters_; }
  // The buffers' names, averaged() first, then counters().
  const std::vector<std::string>& names() const { return names_; }

  // Around the micro-batches of one step on this rank: before the first
  // forward, and after each forward m (0 .. micro-1; the backward may run
  // in between). No-ops when micro <= 1.
  void BeginMicroBatches(int micro);
  void EndMicroBatch(int m);

 private:
  std::vector<at::Tensor> stats_;
  std::vector<at::Tensor> counters_;
  std::vector<std::string> names_;
  int micro_ = 1;
  // micro > 1: the step's starting values (stats_ then counters_) and the
  // sum of the micro-batches' results; allocated once, then reused.
  std::vector<at::Tensor> start_;
  std::vector<at::Tensor> sum_;
};

// Re-estimates every BatchNorm2d's running statistics from scratch with the
// weights the model holds now (docs/METHOD.md, "BatchNorm re-estimation"):
// `forward` runs the model's training-mode forward (no gradient) over this
// rank's batches; each running_mean / running_var becomes the plain mean over
// those batches of the batch mean / unbiased batch variance (BatchNorm's
// cumulative average), then the mean over the ranks of `comm` (a collective:
// every rank calls it; nullptr or an unconnected one: this rank alone).
// num_batches_tracked and the momentum are left as they were. Returns what
// `forward` returned (the number of batches); on its failure the statistics
// are restored. Blocking.
StatusOr<int64_t> ReestimateBatchNorm(torch::nn::Module& model, RunningStatistics& stats,
                                      Communicator* comm,
                                      const std::function<StatusOr<int64_t>()>& forward);

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_RUNNING_STATISTICS_H_
