// EventWriter: the trainer's machine-readable output, one JSON object per
// line on stdout (human logs go to stderr through TERN_LOG).
//
// Every line has "event" (started, progress, epoch_end, checkpoint, stopped,
// finished, failed, evaluated), "job", "rank", "world_size" and "time" (Unix
// seconds); docs/EVENTS.md lists the fields of each kind, and
// trainer_events.h is their one reader (tern-agent and ternd).
// Thread-safe: a line is written and flushed under a mutex, so lines never
// interleave. A write to a closed pipe (EPIPE) ends the process by SIGPIPE,
// even where SIGPIPE is ignored: nobody can learn of the rank's progress any
// more.
#ifndef TERN_TRAINER_PROTOCOL_EVENT_WRITER_H_
#define TERN_TRAINER_PROTOCOL_EVENT_WRITER_H_

#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

namespace tern::trainer {

class EventWriter {
 public:
  EventWriter(std::string job, int rank, int world_size, std::FILE* out = stdout)
      : job_(std::move(job)), rank_(rank), world_size_(world_size), out_(out) {}

  // Adds the common fields to `fields` and writes it as one line.
  void Emit(const std::string& event, nlohmann::json fields);

 private:
  std::mutex mu_;
  std::string job_;
  int rank_;
  int world_size_;
  std::FILE* out_;
};

}  // namespace tern::trainer

#endif  // TERN_TRAINER_PROTOCOL_EVENT_WRITER_H_
