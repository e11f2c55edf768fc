// TrainerSpec: what one tern-trainer run does, read from the job spec.
//
// The source of truth is tern.v1.JobSpec (proto/tern/v1/job.proto). The agent
// writes it as proto3 JSON with the proto field names (snake_case), and this
// file reads that JSON with nlohmann::json, so the trainer never links
// protobuf (ARCHITECTURE.md). What a valid spec is (ranges, enum values,
// defaults, cross-field rules) is spec/'s, the rules ternd applies at
// submission: ParseTrainerSpec and Validate() check with them, naming each
// field ("optimization.lr: must be in (0, 10], got 20"). Unset optional
// fields take the defaults documented in job.proto. No LibTorch here.
#ifndef TERN_WORKER_TRAINER_SPEC_H_
#define TERN_WORKER_TRAINER_SPEC_H_

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"
#include "quant/options.h"
#include "spec/rules.h"

namespace tern::trainer {

struct ModelConfig {
  std::string arch = "resnet20";  // resnet20/32/56 (CIFAR), resnet18/34/50;
                                  // the backbone for detection
  double width_multiplier = 1.0;
  std::string init_from;                 // checkpoint, .tern or .safetensors to start from
  std::string init_from_names = "auto";  // auto, as_stored, torchvision (init_from.h)
  std::string head = "centernet"; // detection head
  int max_detections = 100;       // detection: kept per image
};

struct DataConfig {
  std::string kind = "idx";       // idx, cifar10, cifar100, image_folder,
                                  // coco, synthetic (no files)
  std::string path = spec::kDefaultIdxPath;
  double val_fraction = 0;
  bool augment = true;
  int num_workers = 2;            // loader threads; 0 = training thread
  int input_size = 0;             // image folders: resize to this size;
                                  // COCO: letterbox side (0 = 512)
  // COCO only, relative to `path` unless absolute.
  std::string train_annotations = spec::kDefaultTrainAnnotations;
  std::string val_annotations = spec::kDefaultValAnnotations;
  std::string train_images = spec::kDefaultTrainImages;
  std::string val_images = spec::kDefaultValImages;
  int64_t max_train_examples = 0; // 0 = all
  int64_t max_eval_examples = 0;
};

struct OptimConfig {
  std::string optimizer = "sgd";  // sgd, adamw
  double lr = 0.1;
  double momentum = 0.9;
  bool nesterov = true;
  double weight_decay = 5e-4;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  std::string lr_schedule = "cosine";  // cosine, step
  double warmup_epochs = 0;
  std::vector<int> step_milestones;
  double step_gamma = 0.1;
  int batch_size = 128;           // global, over all ranks
  int micro_batches = 1;          // gradient accumulation per rank
  int epochs = 0;
  uint64_t seed = 0;
  bool deterministic = false;
  bool bf16 = true;               // CUDA only
  bool channels_last = true;      // CUDA only
  // CUDA only: replay each step's forward and backward as a CUDA graph
  // (classification, micro_batches 1, not TTQ; worker/trainer/step_graph.h).
  bool cuda_graph = false;
};

struct TrainerSpec {
  std::string name;
  std::string task = "classification";
  ModelConfig model;
  DataConfig data;
  quant::QuantOptions quant = quant::MakePreset(quant::Method::kHla);
  OptimConfig optim;
  int ranks = 1;
  std::string device = "cpu";     // cpu, cuda
  int threads_per_rank = 0;       // 0 = LibTorch's default
  int checkpoint_every_steps = 500;
  std::string checkpoint_dir;     // empty: <workdir>/checkpoints
  int progress_every_steps = 50;
  int collective_timeout_seconds = 300;

  // spec/'s rules applied to ToJobSpecJson(*this), then quant.Validate():
  // OK or INVALID_ARGUMENT naming every violated field.
  Status Validate() const;
};

// Parses a JobSpec in proto3 JSON form (snake_case keys; enums as names such
// as "METHOD_HLA"; 64-bit integers as numbers or strings).
// INVALID_ARGUMENT lists every violation of spec/'s rules ("; "-joined).
// Knobs the quantization method does not use are read but not applied.
StatusOr<TrainerSpec> ParseTrainerSpec(const std::string& json_text);

// The JobSpec JSON that ParseTrainerSpec reads back as `spec`. Optional
// numbers equal to their documented default, and the "unset" markers
// (threads_per_rank 0, input_size 0, empty strings), are left out.
nlohmann::json ToJobSpecJson(const TrainerSpec& spec);

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_SPEC_H_
