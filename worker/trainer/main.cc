// tern-trainer: one data-parallel rank of a ternary training job.
//
//   tern-trainer --spec job.json [--rank R --world-size W --master HOST:PORT]
//                [--workdir DIR] [--artifact PATH]
//   tern-trainer compare [--methods fp,twn,hla] [--epochs N] [--max-train N]
//
// Rank settings fall back to TERN_RANK, TERN_WORLD_SIZE, TERN_MASTER_ADDR and
// TERN_MASTER_PORT. Events: JSON lines on stdout; logs on stderr.
// Exit codes: 0 finished, 1 training failed, 2 bad arguments or job spec.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <cstdlib>
#include <iostream>
#include <sstream>

#include "common/file_util.h"
#include "common/logging.h"
#include "worker/trainer/trainer.h"

namespace {

using tern::trainer::EventWriter;
using tern::trainer::RunOptions;
using tern::trainer::TrainerSpec;

// The README demo's job: a half-width ResNet-20 on a Fashion-MNIST subset.
constexpr const char* kDemoSpec = R"({
  "name": "demo",
  "model": {"arch": "resnet20", "width_multiplier": 0.5},
  "dataset": {"kind": "DATASET_IDX", "path": "/usr/share/datasets/fashion-mnist",
              "max_train_examples": 12000, "max_eval_examples": 2000},
  "optimization": {"epochs": 3, "batch_size": 128, "lr": 0.1, "seed": 0},
  "events": {"progress_every_steps": 20}
})";

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

int RunRank(const std::string& spec_path, RunOptions run) {
  auto text = spec_path == "-" ? tern::StatusOr<std::string>(std::string(
                                     std::istreambuf_iterator<char>(std::cin), {}))
                               : tern::ReadFileToString(spec_path);
  if (!text.ok()) {
    std::cerr << "tern-trainer: " << text.status() << "\n";
    return 2;
  }
  auto spec = tern::trainer::ParseTrainerSpec(*text);
  EventWriter events(spec.ok() ? spec->name : "", run.rank, run.world_size);
  if (!spec.ok()) {
    events.Emit("failed", {{"code", "INVALID_ARGUMENT"}, {"reason", spec.status().message()}});
    std::cerr << "tern-trainer: " << spec_path << ": " << spec.status() << "\n";
    return 2;
  }
  if (tern::Status s = tern::MakeDirectories(run.workdir); !s.ok()) {
    std::cerr << "tern-trainer: " << s << "\n";
    return 2;
  }
  auto result = tern::trainer::RunTraining(*spec, run, events);
  if (!result.ok()) {
    TERN_LOG(ERROR) << result.status();
    return result.status().code() == tern::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}

int Compare(const std::string& methods_csv, int epochs, int64_t max_train,
            const std::string& workdir) {
  auto spec_or = tern::trainer::ParseTrainerSpec(kDemoSpec);
  if (!spec_or.ok()) {
    std::cerr << spec_or.status() << "\n";
    return 2;
  }
  std::vector<std::string> methods;
  std::stringstream ss(methods_csv);
  for (std::string m; std::getline(ss, m, ',');) methods.push_back(m);
  struct Row {
    std::string method;
    tern::trainer::TrainResult result;
  };
  std::vector<Row> rows;
  for (const std::string& name : methods) {
    auto method = tern::quant::ParseMethod(name);
    if (!method.ok()) {
      std::cerr << "tern-trainer compare: " << method.status() << "\n";
      return 2;
    }
    TrainerSpec spec = *spec_or;
    spec.name = "demo-" + name;
    spec.quant = tern::quant::MakePreset(*method);
    if (epochs > 0) spec.optim.epochs = epochs;
    if (max_train > 0) spec.data.max_train_examples = max_train;
    RunOptions run;
    run.workdir = workdir + "/" + name;
    std::filesystem::remove_all(run.workdir);  // a fresh run, not a resume
    if (tern::Status s = tern::MakeDirectories(run.workdir); !s.ok()) {
      std::cerr << s << "\n";
      return 2;
    }
    std::FILE* log = std::fopen((run.workdir + "/events.jsonl").c_str(), "w");
    EventWriter events(spec.name, 0, 1, log ? log : stdout);
    std::cerr << "== " << name << ": " << spec.model.arch << " ×" << spec.model.width_multiplier
              << ", " << spec.optim.epochs << " epochs on " << spec.data.max_train_examples
              << " Fashion-MNIST images (events: " << run.workdir << "/events.jsonl)\n";
    auto result = tern::trainer::RunTraining(spec, run, events);
    if (log) std::fclose(log);
    if (!result.ok()) {
      std::cerr << "tern-trainer compare: " << name << ": " << result.status() << "\n";
      return 1;
    }
    rows.push_back({name, *result});
  }
  std::printf("\nFashion-MNIST test top-1 (%lld test images), ResNet-20 x0.5, same seed and budget\n",
              static_cast<long long>(rows.empty() ? 0 : rows[0].result.artifact.examples));
  std::printf("%-20s %10s %14s %10s %10s %12s %9s\n", "method", "FP twin", "ternary .tern",
              "gap (pt)", "sparsity", "bits/weight", "time (s)");
  for (const Row& r : rows) {
    double zeros = 0, count = 0;
    for (const auto& l : r.result.layers) {
      if (!l.quantized) continue;
      zeros += l.sparsity * l.numel;
      count += l.numel;
    }
    std::printf("%-20s %9.2f%% %13.2f%% %10.2f %9.1f%% %12.2f %9.1f\n", r.method.c_str(),
                100 * r.result.fp.top1, 100 * r.result.artifact.top1,
                100 * (r.result.fp.top1 - r.result.artifact.top1),
                count > 0 ? 100 * zeros / count : 0.0, r.result.bits_per_weight,
                r.result.wall_seconds);
  }
  std::printf("(FP twin: the latent full-precision weights; ternary: the exported .tern "
              "re-loaded and evaluated; first conv and classifier stay FP)\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tern-trainer: one data-parallel rank of a ternary training job"};
  std::string spec_path;
  RunOptions run;
  run.rank = EnvInt("TERN_RANK", 0);
  run.world_size = EnvInt("TERN_WORLD_SIZE", 1);
  run.master_port = EnvInt("TERN_MASTER_PORT", 29500);
  if (const char* addr = std::getenv("TERN_MASTER_ADDR")) run.master_addr = addr;
  std::string master;
  app.add_option("--spec", spec_path, "job spec (proto3 JSON of tern.v1.JobSpec), - for stdin");
  app.add_option("--rank", run.rank, "this rank, in [0, world size)");
  app.add_option("--world-size", run.world_size, "number of ranks");
  app.add_option("--master", master, "rank 0's rendezvous HOST:PORT");
  app.add_option("--workdir", run.workdir, "checkpoints and artifact directory");
  app.add_option("--artifact", run.artifact_path, "where to write the .tern (default WORKDIR/model.tern)");

  auto* compare = app.add_subcommand("compare", "train FP and ternary models, print a table");
  std::string methods = "fp,twn,hla";
  int epochs = 0;
  int64_t max_train = 0;
  std::string compare_dir = "tern-demo";
  compare->add_option("--methods", methods, "comma-separated: fp,twn,ttq,lat,hla_no_regularizer,hla_no_rescale,hla");
  compare->add_option("--epochs", epochs, "epochs per method (default 3)");
  compare->add_option("--max-train", max_train, "training images (default 12000)");
  compare->add_option("--workdir", compare_dir, "output directory");
  CLI11_PARSE(app, argc, argv);

  if (compare->parsed()) return Compare(methods, epochs, max_train, compare_dir);
  if (spec_path.empty()) {
    std::cerr << app.help() << "\n--spec is required (or use the compare subcommand)\n";
    return 2;
  }
  if (!master.empty()) {
    const size_t colon = master.rfind(':');
    if (colon == std::string::npos) {
      std::cerr << "--master: expected HOST:PORT, got '" << master << "'\n";
      return 2;
    }
    run.master_addr = master.substr(0, colon);
    run.master_port = std::atoi(master.c_str() + colon + 1);
  }
  return RunRank(spec_path, run);
}
