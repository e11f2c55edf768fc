// tern-trainer: one data-parallel rank of a ternary training job.
//
//   tern-trainer --spec job.json [--rank R --world-size W --master HOST:PORT]
//                [--workdir DIR] [--artifact PATH]
//   tern-trainer compare [--methods fp,twn,hla] [--epochs N] [--max-train N]
//
// Rank settings fall back to TERN_RANK, TERN_WORLD_SIZE, TERN_MASTER_ADDR and
// TERN_MASTER_PORT; --bind-addr (this host's address for the peers; Gloo
// listens there) to TERN_BIND_ADDR, which tern-agent sets for every rank to
// its advertised --host (distributed.h); TERN_RENDEZVOUS_KEY (from tern-agent) is the job's
// rendezvous secret (distributed.h), read once and removed from the
// environment. Events: JSON lines on stdout; logs on stderr.
// Exit codes (exit_codes.h): 0 finished, 1 training failed, 2 bad arguments
// or job spec, 3 stopped on request (SIGUSR1 or SIGINT) after every rank
// committed a checkpoint of the step it stopped at, 4 fenced: the agent's
// lease (TERN_LEASE_FILE, lease_file.h) ran out (stop_request.h).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>

#include "common/file_util.h"
#include "common/logging.h"
#include "trainer_protocol/exit_codes.h"
#include "trainer_protocol/lease_file.h"
#include "worker/trainer/distributed.h"
#include "worker/trainer/host_memory.h"
#include "worker/trainer/stop_request.h"
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
              "max_train_examples": 8000, "max_eval_examples": 2000},
  "optimization": {"epochs": 2, "batch_size": 64, "lr": 0.05, "seed": 0},
  "events": {"progress_every_steps": 20}
})";

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

// Reads and parses the spec at `spec_path` ("-": stdin); on failure reports
// it (a `failed` event when the file was read) and returns nullopt.
std::optional<tern::trainer::TrainerSpec> ReadSpec(const std::string& spec_path,
                                                   const RunOptions& run) {
  auto text = spec_path == "-" ? tern::StatusOr<std::string>(std::string(
                                     std::istreambuf_iterator<char>(std::cin), {}))
                               : tern::ReadFileToString(spec_path);
  if (!text.ok()) {
    std::cerr << "tern-trainer: " << text.status() << "\n";
    return std::nullopt;
  }
  auto spec = tern::trainer::ParseTrainerSpec(*text);
  if (!spec.ok()) {
    EventWriter events("", run.rank, run.world_size);
    events.Emit("failed", {{"code", "INVALID_ARGUMENT"}, {"reason", spec.status().message()}});
    std::cerr << "tern-trainer: " << spec_path << ": " << spec.status() << "\n";
    return std::nullopt;
  }
  return std::move(spec).value();
}

// The exit code of a run that failed with `status` (logged here).
int FailureExitCode(const tern::Status& status) {
  TERN_LOG(ERROR) << status;
  return status.code() == tern::StatusCode::kInvalidArgument ? tern::trainer::kExitBadSpec
                                                             : tern::trainer::kExitFailed;
}

// tern-trainer --evaluate FILE --spec SPEC: exit 0 with an `evaluated`
// event, 2 for a bad spec, 1 for anything else (a `failed` event says what).
// --logits-out FILE also writes the predictions (trainer.h).
int RunEvaluate(const std::string& spec_path, const std::string& artifact_path,
                const std::string& logits_path) {
  const std::optional<tern::trainer::TrainerSpec> spec = ReadSpec(spec_path, RunOptions());
  if (!spec) return tern::trainer::kExitBadSpec;
  EventWriter events(spec->name, 0, 1);
  auto result = tern::trainer::EvaluateArtifact(*spec, artifact_path, events, logits_path);
  return result.ok() ? tern::trainer::kExitFinished : FailureExitCode(result.status());
}

int RunRank(const std::string& spec_path, RunOptions run) {
  std::optional<tern::trainer::TrainerSpec> spec = ReadSpec(spec_path, run);
  if (!spec) return tern::trainer::kExitBadSpec;
  EventWriter events(spec->name, run.rank, run.world_size);
  if (tern::Status s = tern::MakeDirectories(run.workdir); !s.ok()) {
    std::cerr << "tern-trainer: " << s << "\n";
    return tern::trainer::kExitBadSpec;
  }
  auto result = tern::trainer::RunTraining(*spec, run, events);
  if (tern::trainer::IsStoppedOnRequest(result.status())) {
    TERN_LOG(INFO) << result.status().message();
    return tern::trainer::kExitStopped;
  }
  if (tern::trainer::IsFenced(result.status())) {
    TERN_LOG(WARNING) << result.status().message();
    return tern::trainer::kExitFenced;
  }
  if (tern::trainer::IsRendezvousPortInUse(result.status())) {
    TERN_LOG(ERROR) << result.status().message();
    return tern::trainer::kExitRendezvousPortInUse;
  }
  if (tern::trainer::IsCollectiveFailure(result.status())) {
    TERN_LOG(ERROR) << result.status();
    return tern::trainer::kExitCollectiveFailed;
  }
  return result.ok() ? tern::trainer::kExitFinished : FailureExitCode(result.status());
}

struct CompareOptions {
  std::string methods = "fp,twn,hla";
  std::string seeds = "0";
  int epochs = 0;            // 0: the demo spec's
  int64_t max_train = 0;     // 0: the demo spec's
  double width = 0;          // 0: the demo spec's
  bool all_ternary = false;  // also ternarize the first conv and classifier
  std::string workdir = "tern-demo";
};

std::vector<std::string> SplitCsv(const std::string& csv) {
  std::vector<std::string> out;
  std::stringstream ss(csv);
  for (std::string item; std::getline(ss, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// "mean ± std" of percentages (std over seeds; blank for one seed).
std::string MeanStd(const std::vector<double>& values) {
  double mean = 0, var = 0;
  for (double v : values) mean += v / values.size();
  for (double v : values) var += (v - mean) * (v - mean) / std::max<size_t>(1, values.size() - 1);
  char buf[64];
  if (values.size() > 1) {
    std::snprintf(buf, sizeof(buf), "%.2f ± %.2f", 100 * mean, 100 * std::sqrt(var));
  } else {
    std::snprintf(buf, sizeof(buf), "%.2f", 100 * mean);
  }
  return buf;
}

int Compare(const CompareOptions& options) {
  auto spec_or = tern::trainer::ParseTrainerSpec(kDemoSpec);
  if (!spec_or.ok()) {
    std::cerr << spec_or.status() << "\n";
    return 2;
  }
  struct Row {
    std::string method;
    std::vector<double> fp, ternary;
    double sparsity = 0, bits = 0, seconds = 0;
    int64_t examples = 0;
  };
  std::vector<Row> rows;
  TrainerSpec shown = *spec_or;
  for (const std::string& name : SplitCsv(options.methods)) {
    auto method = tern::quant::ParseMethod(name);
    if (!method.ok()) {
      std::cerr << "tern-trainer compare: " << method.status() << "\n";
      return 2;
    }
    Row row;
    row.method = name;
    for (const std::string& seed : SplitCsv(options.seeds)) {
      TrainerSpec spec = *spec_or;
      spec.name = "demo-" + name + "-seed" + seed;
      spec.quant = tern::quant::MakePreset(*method);
      if (options.all_ternary) spec.quant.keep_first_fp = spec.quant.keep_last_fp = false;
      spec.optim.seed = std::strtoull(seed.c_str(), nullptr, 10);
      if (options.epochs > 0) spec.optim.epochs = options.epochs;
      if (options.max_train > 0) spec.data.max_train_examples = options.max_train;
      if (options.width > 0) spec.model.width_multiplier = options.width;
      if (tern::Status s = spec.Validate(); !s.ok()) {
        std::cerr << "tern-trainer compare: " << s << "\n";
        return 2;
      }
      shown = spec;
      RunOptions run;
      run.workdir = options.workdir + "/" + name + "-seed" + seed;
      std::filesystem::remove_all(run.workdir);  // a fresh run, not a resume
      if (tern::Status s = tern::MakeDirectories(run.workdir); !s.ok()) {
        std::cerr << s << "\n";
        return 2;
      }
      std::FILE* log = std::fopen((run.workdir + "/events.jsonl").c_str(), "w");
      EventWriter events(spec.name, 0, 1, log ? log : stdout);
      std::cerr << "== " << name << " seed " << seed << ": " << spec.model.arch << " x"
                << spec.model.width_multiplier << ", " << spec.optim.epochs << " epochs on "
                << spec.data.max_train_examples << " images (events: " << run.workdir
                << "/events.jsonl)\n";
      auto result = tern::trainer::RunTraining(spec, run, events);
      if (log) std::fclose(log);
      if (!result.ok()) {
        std::cerr << "tern-trainer compare: " << name << ": " << result.status() << "\n";
        return 1;
      }
      double zeros = 0, count = 0;
      for (const auto& l : result->layers) {
        if (!l.quantized) continue;
        zeros += l.sparsity * l.numel;
        count += l.numel;
      }
      row.fp.push_back(result->fp.value("top1", 0.0));
      row.ternary.push_back(result->artifact.value("top1", 0.0));
      row.sparsity = count > 0 ? zeros / count : 0;
      row.bits = result->bits_per_weight;
      row.seconds += result->wall_seconds;
      row.examples = result->artifact.value("examples", int64_t{0});
    }
    rows.push_back(row);
  }
  std::printf("\nFashion-MNIST test top-1 in %% (%lld test images); %s x%.2g, %d epochs on %lld "
              "training images, seeds %s%s\n",
              static_cast<long long>(rows.empty() ? 0 : rows[0].examples), shown.model.arch.c_str(),
              shown.model.width_multiplier, shown.optim.epochs,
              static_cast<long long>(shown.data.max_train_examples), options.seeds.c_str(),
              options.all_ternary ? ", every layer ternary" : ", first conv and classifier FP");
  // Gap to the full-precision row, seed by seed, when `fp` was run.
  const Row* fp_row = nullptr;
  for (const Row& r : rows) {
    if (r.method == "fp") fp_row = &r;
  }
  std::printf("| %-18s | %-14s | %-14s | %-14s | %8s | %11s | %8s |\n", "method", "FP twin",
              "ternary .tern", "gap to fp (pt)", "sparsity", "bits/weight", "time (s)");
  std::printf("|%s|%s|%s|%s|%s|%s|%s|\n", std::string(20, '-').c_str(), std::string(16, '-').c_str(),
              std::string(16, '-').c_str(), std::string(16, '-').c_str(), std::string(10, '-').c_str(),
              std::string(13, '-').c_str(), std::string(10, '-').c_str());
  for (const Row& r : rows) {
    std::string gap = "-";
    if (fp_row != nullptr && fp_row->ternary.size() == r.ternary.size()) {
      std::vector<double> diff;
      for (size_t i = 0; i < r.ternary.size(); ++i) diff.push_back(fp_row->ternary[i] - r.ternary[i]);
      gap = MeanStd(diff);
    }
    std::printf("| %-18s | %-14s | %-14s | %-14s | %7.1f%% | %11.2f | %8.1f |\n", r.method.c_str(),
                MeanStd(r.fp).c_str(), MeanStd(r.ternary).c_str(), gap.c_str(),
                100 * r.sparsity, r.bits, r.seconds);
  }
  std::printf("FP twin: the latent full-precision weights. ternary: the exported .tern, re-loaded "
              "and evaluated.\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // A peer rank that dies mid-collective must fail this rank with a clear
  // reason ("failed" event, exit 1), not kill it: with SIGPIPE's default action
  // a send to the dead peer's socket (Gloo, the TCPStore) ends the process
  // before anything is reported. Writes then fail with EPIPE instead, and the
  // collective throws. A closed stdout still ends the process (EventWriter).
  std::signal(SIGPIPE, SIG_IGN);
  tern::trainer::RetainFreedHostMemory();  // before any thread starts: host_memory.h
  CLI::App app{"tern-trainer: one data-parallel rank of a ternary training job"};
  std::string spec_path;
  RunOptions run;
  run.rank = EnvInt("TERN_RANK", 0);
  run.world_size = EnvInt("TERN_WORLD_SIZE", 1);
  run.master_port = EnvInt("TERN_MASTER_PORT", 29500);
  if (const char* addr = std::getenv("TERN_MASTER_ADDR")) run.master_addr = addr;
  if (const char* lease = std::getenv(tern::trainer::kLeaseFileEnv)) run.lease_file = lease;
  if (char* key = std::getenv("TERN_RENDEZVOUS_KEY")) {
    // A secret: nothing this process starts needs it, and /proc/<pid>/environ
    // (readable by this user's other processes) shows the initial block,
    // which unsetenv leaves as it was: overwrite it there first.
    run.rendezvous_key = key;
    std::fill(key, key + std::strlen(key), 'x');
    ::unsetenv("TERN_RENDEZVOUS_KEY");
  }
  run.always_connect = EnvInt("TERN_ALWAYS_CONNECT", 0) != 0;
  std::string master;
  app.add_option("--spec", spec_path, "job spec (proto3 JSON of tern.v1.JobSpec), - for stdin");
  app.add_option("--rank", run.rank, "this rank, in [0, world size)");
  app.add_option("--world-size", run.world_size, "number of ranks");
  app.add_option("--master", master, "rank 0's rendezvous HOST:PORT");
  std::string bind_addr;
  app.add_option("--bind-addr", bind_addr,
                 "this host's address the other ranks reach it at (Gloo listens there; default "
                 "TERN_BIND_ADDR, else 127.0.0.1 with a loopback --master, else the hostname's)");
  app.add_option("--workdir", run.workdir, "checkpoints and artifact directory");
  app.add_option("--artifact", run.artifact_path, "where to write the .tern (default WORKDIR/model.tern)");
  std::string evaluate_path;
  std::string logits_path;
  app.add_option("--logits-out", logits_path,
                 "with --evaluate: also write the predictions there (classification: JSON "
                 "{labels, logits} in test-split order; detection: COCO results)");
  app.add_option("--evaluate", evaluate_path,
                 "instead of training, evaluate this .tern on the spec's dataset (test split; val "
                 "for detection) and device: prints an \"evaluated\" event");
  app.add_flag("--always-connect", run.always_connect,
               "build the process group even at world size 1 (NCCL on CUDA); also "
               "TERN_ALWAYS_CONNECT=1");

  auto* compare = app.add_subcommand("compare", "train FP and ternary models, print a table");
  CompareOptions co;
  compare->add_option("--methods", co.methods,
                      "comma-separated: fp,twn,ttq,lat,hla_no_regularizer,hla_no_rescale,hla");
  compare->add_option("--seeds", co.seeds, "comma-separated seeds; mean ± std over them");
  compare->add_option("--epochs", co.epochs, "epochs per run (default 2)");
  compare->add_option("--max-train", co.max_train, "training images (default 8000)");
  compare->add_option("--width", co.width, "ResNet-20 width multiplier (default 0.5)");
  compare->add_flag("--all-ternary", co.all_ternary, "ternarize the first conv and classifier too");
  compare->add_option("--workdir", co.workdir, "output directory");
  CLI11_PARSE(app, argc, argv);

  if (compare->parsed()) return Compare(co);
  if (spec_path.empty()) {
    std::cerr << app.help() << "\n--spec is required (or use the compare subcommand)\n";
    return 2;
  }
  if (!evaluate_path.empty()) return RunEvaluate(spec_path, evaluate_path, logits_path);
  tern::trainer::InstallStopHandlers();
  tern::trainer::StartLeaseWatchdog(run.lease_file);
  // Read where the process group is built (DistributedOptions::bind_addr).
  if (!bind_addr.empty()) ::setenv("TERN_BIND_ADDR", bind_addr.c_str(), 1);
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
