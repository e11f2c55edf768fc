// RunTraining: one data-parallel rank of a ternary training job, from the
// job spec to the exported, re-loaded and evaluated `.tern` artifact.
//
// Every rank calls it with the same spec; rank 0 hosts the rendezvous,
// writes the commit markers, the artifact and most events. A restart with
// the same spec and checkpoint directory resumes from the newest committed
// checkpoint (never a partial one). Blocking; returns the final metrics or
// the reason it failed (it also emits a "failed" event then).
#ifndef TERN_WORKER_TRAINER_TRAINER_H_
#define TERN_WORKER_TRAINER_TRAINER_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"
#include "quant/ternary_model.h"
#include "trainer_protocol/event_writer.h"
#include "worker/trainer/spec.h"

namespace tern::trainer {

struct RunOptions {
  int rank = 0;
  int world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string workdir = ".";      // checkpoints (unless the spec names a
                                  // directory) and the artifact go here
  std::string artifact_path;      // default <workdir>/model.tern
  std::string lease_file;         // the agent's lease (lease_file.h); "": none
  std::string rendezvous_key;     // DistributedOptions::rendezvous_key
  bool always_connect = false;    // build the process group (NCCL on CUDA,
                                  // Gloo on CPU) even at world size 1, so a
                                  // one-GPU run exercises NCCL
};

// Metrics are the events' JSON: classification {loss, top1, top5,
// examples}; detection {ap, ap50, ap75, ap_small, ap_medium, ap_large, ar1,
// ar10, ar100, ar_small, ar_medium, ar_large, images, detections} (a bucket
// without ground truth is null).
struct TrainResult {
  nlohmann::json fp;              // latent FP weights ("FP twin")
  nlohmann::json ternary;         // the ternary model during training
  nlohmann::json artifact;        // the exported `.tern`, re-loaded (rank 0)
  // With a validation split (dataset.val_fraction > 0): the FP twin and the
  // ternary model on it at the final epoch; null otherwise.
  nlohmann::json val_fp;
  nlohmann::json val_ternary;
  std::string artifact_path;
  int64_t artifact_bytes = 0;
  double bits_per_weight = 0;
  int64_t steps = 0;
  double wall_seconds = 0;
  double images_per_second = 0;
  std::vector<quant::LayerStats> layers;
};

StatusOr<TrainResult> RunTraining(const TrainerSpec& spec, const RunOptions& options,
                                  EventWriter& events);

// tern-trainer --evaluate: evaluates the `.tern` at `artifact_path` on the
// spec's dataset (its final split: test for classification, val for
// detection; max_eval_examples applies) on the spec's device, one process,
// with the input normalization the artifact was trained with. Emits an
// `evaluated` event with the metrics (or `failed`) and returns them. Fails
// with FAILED_PRECONDITION when the artifact's task, class count or input
// channels do not fit the spec's dataset, DATA_LOSS for a damaged file.
// A non-empty `logits_path` also receives the predictions (classification:
// the logits, see EvalRequest::results_path). A `.safetensors` state dict
// instead of a `.tern` is loaded into the spec's model (model.init_from's
// rules, model.init_from_names; FAILED_PRECONDITION unless it fills every tensor)
// and evaluated with the dataset's normalization.
StatusOr<nlohmann::json> EvaluateArtifact(const TrainerSpec& spec, const std::string& artifact_path,
                                          EventWriter& events, const std::string& logits_path = "");

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_TRAINER_H_
