// TrainerEventParser: turns the JSON lines a tern-trainer prints on stdout
// into tern.v1.TrainerEvent messages for WorkerService.ReportProgress.
//
// Usage (one parser per trainer process):
//   TrainerEventParser parser(assignment.spec(), child->pid());
//   ParsedLine p = parser.ParseStdoutLine(line, now);
//   batch.push_back(p.event);         // json_line always set; parsed if known
//
// The trainer's format (worker/trainer/events.h): every line has "event",
// "job", "rank", "world_size" and "time" (Unix seconds). Its epochs are
// 0-based loop indices; the API's are 1-based, so "epoch" of progress and
// epoch_end events gets +1 here. A line that is not JSON, or an unknown
// event, keeps json_line only (the server logs it). Not thread-safe: one
// parser belongs to the thread that reads the trainer's stdout.
#ifndef TERN_WORKER_AGENT_TRAINER_EVENTS_H_
#define TERN_WORKER_AGENT_TRAINER_EVENTS_H_

#include <google/protobuf/timestamp.pb.h>

#include <string>
#include <string_view>

#include "tern/v1/job.pb.h"
#include "tern/v1/worker_service.pb.h"

namespace tern::agent {

// Longest LogLine.text the API accepts; longer stderr lines are cut.
constexpr size_t kMaxLogLineBytes = 4096;

struct ParsedLine {
  v1::TrainerEvent event;
  std::string kind;          // "progress", ...; "" when unrecognised
  double trainer_time = 0;   // the line's "time" (Unix seconds), 0 if absent
  double checkpoint_seconds = -1;  // "checkpoint": time the save took
};

class TrainerEventParser {
 public:
  // `spec` tells which metrics exist (no ternary ones for METHOD_FP) and the
  // epoch count; `pid` is reported in the `started` event.
  TrainerEventParser(const v1::JobSpec& spec, int pid);

  // The event's json_line is `line` made valid UTF-8 (ToValidUtf8): a proto3
  // string with a stray byte would fail the whole ReportProgress call.
  ParsedLine ParseStdoutLine(std::string_view line,
                             const google::protobuf::Timestamp& now);
  // A `log` event for one stderr line of rank `rank`, made valid UTF-8 and
  // cut to kMaxLogLineBytes at a character boundary.
  static v1::TrainerEvent LogEvent(int rank, std::string_view line,
                                   const google::protobuf::Timestamp& now);

 private:
  bool fp_method_;
  int epochs_;
  int pid_;
  int steps_per_epoch_ = 0;  // from the `started` event
};

}  // namespace tern::agent

#endif  // TERN_WORKER_AGENT_TRAINER_EVENTS_H_
