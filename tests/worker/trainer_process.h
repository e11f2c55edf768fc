// Helpers for the tests that run tern-trainer as separate processes
// (TERN_TRAINER_BINARY): spawn ranks, read their JSON-line events, load the
// newest committed checkpoint. Test-only; header-only.
#ifndef TERN_TESTS_WORKER_TRAINER_PROCESS_H_
#define TERN_TESTS_WORKER_TRAINER_PROCESS_H_

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "worker/trainer/checkpoint_layout.h"
#include "worker/trainer/distributed.h"

namespace tern::trainer::testing_util {

namespace fs = std::filesystem;
using json = nlohmann::json;

// A trainer process with stdout to a file.
struct Process {
  pid_t pid = -1;
  std::string stdout_path;
};

inline Process Spawn(const std::vector<std::string>& args, const std::string& stdout_path) {
  Process p;
  p.stdout_path = stdout_path;
  p.pid = fork();
  if (p.pid == 0) {
    const int fd = ::open(stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    std::vector<char*> argv;
    std::string binary = TERN_TRAINER_BINARY;
    argv.push_back(binary.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(binary.c_str(), argv.data());
    _exit(127);
  }
  return p;
}

inline int Wait(const Process& p) {
  int status = 0;
  ::waitpid(p.pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

inline std::vector<json> Events(const std::string& path) {
  std::vector<json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line, nullptr, false);
    if (!j.is_discarded()) out.push_back(j);
  }
  return out;
}

// Polls the events at `path` (every 5 ms, up to 60 s) until one satisfies
// `pred`; false if none did.
inline bool WaitForEvent(const std::string& path, const std::function<bool(const json&)>& pred) {
  for (int i = 0; i < 12000; ++i) {
    for (const auto& e : Events(path)) {
      if (pred(e)) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

inline std::string TempDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/tern_trainer_" + name + "_" + std::to_string(::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

inline std::string WriteSpec(const std::string& dir, const json& spec) {
  const std::string path = dir + "/spec.json";
  EXPECT_TRUE(WriteFileAtomically(path, spec.dump()).ok());
  return path;
}

// Starts all ranks (spec.resources.ranks) of `spec` in `dir`, each rank's
// stdout in <dir>/rank<r><tag>.jsonl.
inline std::vector<Process> SpawnJob(const std::string& dir, const json& spec,
                                     const std::string& tag = "") {
  const std::string spec_path = WriteSpec(dir, spec);
  const int ranks = spec["resources"]["ranks"];
  const int port = PickFreePort().value();
  std::vector<Process> procs;
  for (int r = 0; r < ranks; ++r) {
    procs.push_back(Spawn({"--spec", spec_path, "--rank", std::to_string(r), "--world-size",
                           std::to_string(ranks), "--master", "127.0.0.1:" + std::to_string(port),
                           "--workdir", dir},
                          dir + "/rank" + std::to_string(r) + tag + ".jsonl"));
  }
  return procs;
}

// SpawnJob, then the ranks' exit codes.
inline std::vector<int> RunJob(const std::string& dir, const json& spec) {
  std::vector<int> codes;
  for (auto& p : SpawnJob(dir, spec)) codes.push_back(Wait(p));
  return codes;
}

// Loads rank 0's model state of the newest committed checkpoint under
// <dir>/checkpoints into `model`.
inline void LoadNewestCheckpoint(const std::string& dir, torch::nn::Module& model) {
  const int64_t step = NewestCommittedStep(dir + "/checkpoints");
  ASSERT_GE(step, 0) << "no committed checkpoint in " << dir;
  torch::serialize::InputArchive archive, model_archive;
  archive.load_from(dir + "/checkpoints/" + StepDirName(step) + "/" + RankFileName(0));
  archive.read("model", model_archive);
  model.load(model_archive);
}

inline double MaxDifference(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    worst = std::max(worst, (a[i] - b[i]).abs().max().item<double>());
  }
  return worst;
}

}  // namespace tern::trainer::testing_util

#endif  // TERN_TESTS_WORKER_TRAINER_PROCESS_H_
