// TrainingTask: what differs between classification and detection inside
// RunTraining (trainer.cc): the data, the network, the loss of a batch and
// evaluation. RunTraining owns the rest: the process group, the quantizer,
// the optimizer and schedules, checkpoints, events and the export.
//
// Call order (one task per rank, driven by the training thread):
//   Load()                       data, then the untrained network
//   StartTraining(sampler)       once, after the weights are final
//   per epoch: StartEpoch(e, s); per step: NextBatch(); BeginStep();
//              MicroBatchLoss(m, M) for m in [0, M), backward after each
//   Evaluate(...)                any time between steps
// Not thread-safe.
#ifndef TERN_WORKER_TRAINER_TASK_H_
#define TERN_WORKER_TRAINER_TASK_H_

#include <torch/nn/module.h>
#include <torch/types.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/trainer/data.h"
#include "worker/trainer/spec.h"

namespace tern::trainer {

class Communicator;
class ShardedSampler;

// Where the task runs; filled by RunTraining.
struct TaskContext {
  const TrainerSpec* spec = nullptr;
  Communicator* comm = nullptr;
  int rank = 0;
  int world_size = 1;
  torch::Device device = torch::kCPU;
  bool bf16 = false;           // CUDA autocast
  bool channels_last = false;  // CUDA NHWC
  // CUDA graphs (step_graph.h): NextBatch() copies every batch into the same
  // input tensors, which a captured step reads.
  bool static_batches = false;
};

enum class EvalSplit {
  kEval,  // the validation split when there is one, else the test split
  kTest,  // the final split: test (classification) or the val annotations (COCO)
};

struct EvalRequest {
  EvalSplit split = EvalSplit::kEval;
  // true: every rank evaluates its share and the results are combined (a
  // collective: all ranks call); false: this rank evaluates all of it.
  bool sharded = true;
  // Non-empty: also write the predictions there (detection: COCO results
  // JSON; classification: {"labels": [...], "logits": [[...], ...]} in split
  // order), and name the file in the metrics as "results_path".
  std::string results_path;
};

class TrainingTask {
 public:
  virtual ~TrainingTask() = default;

  // Reads the data and builds the untrained network on ctx.device (the
  // caller seeds the generator first).
  virtual Status Load() = 0;
  virtual int64_t train_size() const = 0;
  virtual std::shared_ptr<torch::nn::Module> model() const = 0;
  // Prediction layers that quantization.keep_last_fp keeps FP (module
  // paths); empty: the last Conv2d / Linear.
  virtual std::vector<std::string> output_layers() const = 0;

  // The network's self-description stored in the `.tern`, and a fresh
  // network (on ctx.device) built from it.
  virtual std::string architecture_json() const = 0;
  virtual StatusOr<std::shared_ptr<torch::nn::Module>> BuildFromArchitecture(
      const std::string& json) const = 0;
  // Extra artifact metadata (normalization, class names, ...).
  virtual nlohmann::json artifact_metadata() const = 0;
  // The per-channel input normalization (from the training data after
  // Load()). Evaluating an exported model sets the one it was trained with.
  virtual const Normalization& normalization() const = 0;
  virtual void set_normalization(const Normalization& norm) = 0;

  // Training batches follow `sampler` (which the caller built over
  // train_size() examples).
  virtual void StartTraining(const ShardedSampler& sampler) = 0;
  virtual void StartEpoch(int64_t epoch, int64_t first_step) = 0;
  // Waits for the step's batch and moves it to the device.
  virtual Status NextBatch() = 0;
  // Per-step collectives every rank runs after NextBatch().
  virtual Status BeginStep() = 0;
  // The task loss of micro-batch m of `micro` of the current batch: a
  // scalar whose mean over micro-batches and ranks is the objective of the
  // global batch, so averaged gradients equal one big batch's.
  virtual at::Tensor MicroBatchLoss(int m, int micro) = 0;

  // BatchNorm re-estimation (running_statistics.h, ReestimateBatchNorm):
  // runs the network's forward, as it is (mode, weights), without gradient,
  // on this rank's share of `batches` global batches of unaugmented training
  // images (rendered as evaluation renders them), the same ones for every
  // method given the seed. Returns the number of batches run.
  virtual StatusOr<int64_t> ForwardRecalibrationBatches(int64_t batches) = 0;

  // "val" or "test": what EvalSplit::kEval evaluates.
  virtual std::string eval_split_name() const = 0;
  // Metrics of `model` (the training network or one BuildFromArchitecture
  // made) as the JSON the events carry.
  virtual StatusOr<nlohmann::json> Evaluate(torch::nn::Module& model,
                                            const EvalRequest& request) = 0;
};

std::unique_ptr<TrainingTask> MakeClassificationTask(const TaskContext& ctx);
std::unique_ptr<TrainingTask> MakeDetectionTask(const TaskContext& ctx);

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_TASK_H_
