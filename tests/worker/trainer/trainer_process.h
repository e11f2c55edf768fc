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
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "quant/artifact.h"
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

// Every tensor of the model and of the quantizer state in rank `rank`'s file
// of the newest committed checkpoint under <dir>/checkpoints, by dotted name
// ("model.bn1.running_var", "quant...."): parameters and buffers alike. The
// optimizer's state is left out: libtorch keys it by the writing process's
// tensor addresses (its momentum follows from equal gradients).
inline std::map<std::string, at::Tensor> CheckpointState(const std::string& dir, int rank = 0) {
  std::map<std::string, at::Tensor> out;
  const int64_t step = NewestCommittedStep(dir + "/checkpoints");
  EXPECT_GE(step, 0) << "no committed checkpoint in " << dir;
  if (step < 0) return out;
  torch::serialize::InputArchive archive;
  archive.load_from(dir + "/checkpoints/" + StepDirName(step) + "/" + RankFileName(rank));
  std::function<void(torch::serialize::InputArchive&, const std::string&)> collect =
      [&](torch::serialize::InputArchive& a, const std::string& prefix) {
        for (const std::string& key : a.keys()) {
          at::Tensor t;
          torch::serialize::InputArchive sub;
          if (a.try_read(key, t)) {
            out[prefix + key] = t;
          } else if (a.try_read(key, sub)) {
            collect(sub, prefix + key + ".");
          }
        }
      };
  for (const char* part : {"model", "quant"}) {
    torch::serialize::InputArchive sub;
    EXPECT_TRUE(archive.try_read(part, sub)) << part;
    collect(sub, std::string(part) + ".");
  }
  return out;
}

// Expects the same names and bit-identical tensors (dtype, shape, values);
// each difference is named with its largest absolute size.
inline void ExpectIdenticalState(const std::map<std::string, at::Tensor>& a,
                                 const std::map<std::string, at::Tensor>& b,
                                 const std::string& what) {
  std::vector<std::string> names_a, names_b;
  for (const auto& [name, t] : a) names_a.push_back(name);
  for (const auto& [name, t] : b) names_b.push_back(name);
  ASSERT_EQ(names_a, names_b) << what;
  ASSERT_FALSE(a.empty()) << what;
  int differing = 0;
  for (const auto& [name, x] : a) {
    const at::Tensor& y = b.at(name);
    if (x.scalar_type() == y.scalar_type() && x.sizes() == y.sizes() && torch::equal(x, y)) continue;
    ++differing;
    const double diff = x.sizes() == y.sizes()
                            ? (x.to(at::kDouble) - y.to(at::kDouble)).abs().max().item<double>()
                            : -1;
    ADD_FAILURE() << what << ": " << name << " differs (max |a - b| " << diff << ")";
  }
  EXPECT_EQ(differing, 0) << what << ": " << differing << " of " << a.size() << " tensors differ";
}

// Expects two .tern files to hold the same tensors bit for bit (codes,
// scales, float32 values) and the same architecture.
inline void ExpectIdenticalArtifacts(const std::string& path_a, const std::string& path_b) {
  const auto a = quant::ReadArtifactFile(path_a);
  const auto b = quant::ReadArtifactFile(path_b);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->architecture, b->architecture);
  EXPECT_EQ(a->packing, b->packing);
  ASSERT_EQ(a->tensors.size(), b->tensors.size());
  ASSERT_FALSE(a->tensors.empty());
  for (size_t i = 0; i < a->tensors.size(); ++i) {
    const quant::ArtifactTensor& x = a->tensors[i];
    const quant::ArtifactTensor& y = b->tensors[i];
    EXPECT_EQ(x.name, y.name);
    EXPECT_EQ(x.shape, y.shape) << x.name;
    EXPECT_EQ(x.kind, y.kind) << x.name;
    EXPECT_EQ(x.values, y.values) << x.name;
    EXPECT_EQ(x.codes, y.codes) << x.name;
    EXPECT_EQ(x.pos_scale, y.pos_scale) << x.name;
    EXPECT_EQ(x.neg_scale, y.neg_scale) << x.name;
  }
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
