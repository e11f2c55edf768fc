// Where the trainer's checkpoints live on disk, shared by the writer
// (trainer.cc) and the readers (resume, model.init_from).
//
//   <checkpoint_dir>/step-0000000100/rank-0.pt   one torch::serialize archive
//                                   /rank-1.pt   per rank ("model", "quant",
//                                   /COMMITTED   "optimizer", ...); rank 0
//                                                writes COMMITTED after a
//                                                barrier, so only a step with
//                                                the marker is complete.
// Plain functions on paths; thread-safe.
#ifndef TERN_WORKER_TRAINER_CHECKPOINT_LAYOUT_H_
#define TERN_WORKER_TRAINER_CHECKPOINT_LAYOUT_H_

#include <cstdint>
#include <string>

namespace tern::trainer {

inline constexpr char kCommittedMarker[] = "COMMITTED";

// "step-0000000100" for step 100.
std::string StepDirName(int64_t step);
// "rank-3.pt".
std::string RankFileName(int rank);
// The step of a directory name "step-<digits>"; -1 for any other name.
int64_t ParseStepDirName(const std::string& name);
// Newest step directory inside `dir` that holds the COMMITTED marker; -1 when
// there is none (or `dir` cannot be read).
int64_t NewestCommittedStep(const std::string& dir);

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_CHECKPOINT_LAYOUT_H_
