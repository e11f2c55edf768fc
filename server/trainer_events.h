// The trainer's JSON-line events (worker/trainer/events.h), as relayed by the
// agent, parsed into tern.v1 messages.
//
// Every line is an object with "event" (started, progress, epoch_end,
// checkpoint, finished, failed), "job", "rank", "world_size" and "time".
// Mapping (missing or null numbers stay 0/unset; a null loss becomes NaN):
//   progress   -> Progress (epoch, epochs, step, total_steps, loss, lr,
//                 images_per_second, eta_seconds, reg_lambda, phase; and,
//                 only when present and >= 0, step_seconds,
//                 allreduce_seconds, data_wait_seconds, gpu_memory_bytes,
//                 gpu_peak_memory_bytes) + kappa
//   epoch_end  -> EpochEnd: metrics {epoch, eval_split, train_loss,
//                 eval_loss = ternary.loss (fp.loss if no ternary),
//                 fp_top1/5 = fp.top1/5, ternary_top1/5 = ternary.top1/5,
//                 epoch_seconds, images_per_second}; layers with
//                 quantized = true, LayerStats.flips = flips_per_step / numel
//                 detection jobs: fp_detection/ternary_detection = the
//                 COCO numbers of fp/ternary (ap ... ap_large, ar1, ar10,
//                 ar100, ar_small ... ar_large; a null one stays unset)
//   checkpoint -> CheckpointCommitted {step, epoch, path}
//   finished   -> JobResult {artifact_path, artifact_bytes, bits_per_weight,
//                 fp_top1/5 = fp.*, ternary_top1/5 = artifact.* (the
//                 re-loaded .tern; ternary.* when absent), layers, steps,
//                 wall_seconds, images_per_second}
//   failed     -> StateReason {code, message = reason}
//   log        -> LogLine {rank, text} (server-made, see LogPayload)
// The server stores these lines verbatim as scheduler event payloads and
// parses them again when it streams or summarizes a job. Pure functions,
// thread-safe.
#ifndef TERN_SERVER_TRAINER_EVENTS_H_
#define TERN_SERVER_TRAINER_EVENTS_H_

#include <string>
#include <string_view>

#include "common/status.h"
#include "tern/v1/job.pb.h"

namespace tern::server {

enum class TrainerEventKind {
  kUnknown,  // an object whose "event" is none of the below
  kStarted,
  kProgress,
  kEpochEnd,
  kCheckpoint,
  kStopped,  // stopped on request at a committed checkpoint (every rank)
  kFinished,
  kFailed,
  kLog,
};

struct TrainerLine {
  TrainerEventKind kind = TrainerEventKind::kUnknown;
  int rank = 0;     // the line's "rank" (0 when absent)
  double time = 0;  // the line's "time", Unix seconds (0 when absent)
  // Set according to `kind`:
  v1::Progress progress;
  double kappa = 0;  // progress: HLA's kappa (not part of tern.v1.Progress)
  v1::EpochEnd epoch_end;
  v1::CheckpointCommitted checkpoint;
  v1::JobResult result;  // artifact_sha256 and epochs are left to the server
  v1::StateReason failure;
  v1::LogLine log;
  v1::AttemptStarted started;
};

// INVALID_ARGUMENT when `line` is not a JSON object.
StatusOr<TrainerLine> ParseTrainerLine(std::string_view line);

// A stderr line as a JSON event line: {"event":"log","rank":R,"text":T}, with
// `text` cut to 4096 bytes and invalid UTF-8 replaced.
std::string LogPayload(int rank, std::string_view text);

}  // namespace tern::server

#endif  // TERN_SERVER_TRAINER_EVENTS_H_
