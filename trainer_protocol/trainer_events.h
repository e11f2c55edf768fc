// The one reader of the trainer's JSON-line events (event_writer.h), for
// tern-agent (stdout lines to tern.v1.TrainerEvent) and ternd (the lines it
// stores verbatim as scheduler event payloads, parsed again when it streams
// or summarizes a job).
//
// Every line is an object with "event", "job", "rank", "world_size" and
// "time". Mapping (missing or mistyped numbers stay 0/unset; a null loss
// becomes NaN; epochs are 1-based in the lines as in the API):
//   started    -> AttemptStarted {resumed_from_step (-1 becomes 0),
//                 total_steps, device, process_group} + steps_per_epoch
//   progress   -> Progress (epoch, epochs, step, total_steps, loss, lr,
//                 images_per_second, eta_seconds, reg_lambda, phase; and,
//                 only when present and >= 0, step_seconds,
//                 allreduce_seconds, data_wait_seconds, gpu_memory_bytes,
//                 gpu_peak_memory_bytes; from "regularizer" when present:
//                 reg_grad_share, cos_wt, layers {name, numel, cos_wt,
//                 reg_grad_share}) + kappa
//   epoch_end  -> EpochEnd: metrics {epoch, eval_split, train_loss,
//                 eval_loss = ternary.loss (fp.loss if no ternary),
//                 fp_top1/5 = fp.top1/5, ternary_top1/5 = ternary.top1/5,
//                 epoch_seconds, images_per_second}; layers with
//                 quantized = true, LayerStats.flips = flips_per_step / numel
//                 detection jobs: fp_detection/ternary_detection = the
//                 COCO numbers of fp/ternary (ap ... ap_large, ar1, ar10,
//                 ar100, ar_small ... ar_large; a null one stays unset)
//   checkpoint -> CheckpointCommitted {step, epoch (the line's: epochs
//                 completed), path} + checkpoint_seconds
//   stopped    -> CheckpointCommitted {step, epoch, path = checkpoint}
//   finished   -> JobResult {artifact_path, artifact_bytes, bits_per_weight,
//                 fp_top1/5 = fp.*, ternary_top1/5 = artifact.* (the
//                 re-loaded .tern; ternary.* when absent), layers, epochs,
//                 steps, wall_seconds, images_per_second, detections_path,
//                 val_fp_top1 / val_ternary_top1 = val.fp / val.ternary .top1}
//   phase_switch -> PhaseSwitch {step, epoch, eval_split, fp_top1 = fp.top1,
//                 ternary_top1 = ternary.top1, ternary_bn_top1 =
//                 ternary_bn.top1, bn_batches, bn_kept, seconds}
//   failed     -> StateReason {code (TRAINER_FAILED when empty),
//                 message = reason}
//   log        -> LogLine {rank, text} (agent- or ternd-made, see LogPayload)
// ParseOptions adds what only the job's spec knows (METHOD_FP, the epoch
// count). TrainerEventParser wraps ParseTrainerLine for the agent: one per
// trainer process, it fills tern.v1.TrainerEvent for ReportProgress.
//
// ParseTrainerLine and LogPayload are pure and thread-safe; a
// TrainerEventParser belongs to the thread that reads its trainer's stdout.
#ifndef TERN_TRAINER_PROTOCOL_TRAINER_EVENTS_H_
#define TERN_TRAINER_PROTOCOL_TRAINER_EVENTS_H_

#include <google/protobuf/timestamp.pb.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "common/status.h"
#include "tern/v1/job.pb.h"
#include "tern/v1/worker_service.pb.h"

namespace tern::trainer {

// Longest LogLine.text the API accepts; longer stderr lines are cut.
inline constexpr size_t kMaxLogLineBytes = 4096;

enum class TrainerEventKind {
  kUnknown,  // an object whose "event" is none of the below
  kStarted,
  kProgress,
  kEpochEnd,
  kCheckpoint,
  kStopped,  // stopped on request at a committed checkpoint (every rank)
  kPhaseSwitch,
  kFinished,
  kFailed,
  kLog,
};

struct ParseOptions {
  bool full_precision = false;  // METHOD_FP: no ternary metrics; eval_loss is
                                // fp.loss; bits_per_weight 32 when absent
  int epochs = 0;               // progress.epochs, result.epochs when absent
};

struct TrainerLine {
  TrainerEventKind kind = TrainerEventKind::kUnknown;
  int rank = 0;     // the line's "rank" (0 when absent)
  double time = 0;  // the line's "time", Unix seconds (0 when absent)
  // Set according to `kind`:
  v1::AttemptStarted started;
  int steps_per_epoch = 0;  // started
  v1::Progress progress;
  double kappa = 0;  // progress: HLA's kappa (not part of tern.v1.Progress)
  v1::EpochEnd epoch_end;
  v1::CheckpointCommitted checkpoint;  // checkpoint, stopped
  double checkpoint_seconds = -1;      // checkpoint: "seconds" the save took
  v1::JobResult result;                // finished; artifact_sha256 is left to ternd
  v1::PhaseSwitch phase_switch;
  v1::StateReason failure;
  v1::LogLine log;
};

// INVALID_ARGUMENT when `line` is not a JSON object.
StatusOr<TrainerLine> ParseTrainerLine(std::string_view line, const ParseOptions& options = {});

// A stderr line as a JSON event line: {"event":"log","rank":R,"text":T}, with
// `text` cut to kMaxLogLineBytes and invalid UTF-8 replaced.
std::string LogPayload(int rank, std::string_view text);

// A stdout line as the agent relays it.
struct ParsedLine {
  v1::TrainerEvent event;
  std::string kind;                // "progress", ...; "" when not relayed parsed
  double trainer_time = 0;         // the line's "time" (Unix seconds), 0 if absent
  double checkpoint_seconds = -1;  // "checkpoint": time the save took
};

// Usage (one parser per trainer process):
//   TrainerEventParser parser(assignment.spec(), child->pid());
//   ParsedLine p = parser.ParseStdoutLine(line, now);
//   batch.push_back(p.event);         // json_line always set; parsed if known
class TrainerEventParser {
 public:
  // `spec` gives the ParseOptions; `pid` is reported in the `started` event.
  TrainerEventParser(const v1::JobSpec& spec, int pid);

  // The event's json_line is `line` made valid UTF-8 (ToValidUtf8): a proto3
  // string with a stray byte would fail the whole ReportProgress call.
  // started, progress, epoch_end, checkpoint, finished and failed lines also
  // fill `parsed`; a `started` device defaults to "cpu", an epoch_end
  // eval_split to "test", and a checkpoint's epoch is the 1-based epoch its
  // step belongs to (steps_per_epoch of the `started` line).
  ParsedLine ParseStdoutLine(std::string_view line, const google::protobuf::Timestamp& now);
  // A `log` event for one stderr line of rank `rank`, made valid UTF-8 and
  // cut to kMaxLogLineBytes at a character boundary.
  static v1::TrainerEvent LogEvent(int rank, std::string_view line,
                                   const google::protobuf::Timestamp& now);

 private:
  ParseOptions options_;
  int pid_;
  int steps_per_epoch_ = 0;  // from the `started` event
};

}  // namespace tern::trainer

#endif  // TERN_TRAINER_PROTOCOL_TRAINER_EVENTS_H_
