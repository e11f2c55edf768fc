#include "worker/trainer/trainer.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <sstream>

#include "common/file_util.h"
#include "common/logging.h"
#include "worker/trainer/autocast.h"
#include "worker/trainer/data.h"
#include "worker/trainer/distributed.h"
#include "worker/trainer/models.h"

namespace tern::trainer {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

// Turns LibTorch exceptions into a Status at the boundary.
template <typename F>
Status Guard(const std::string& what, F&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    return InternalError(what + ": " + e.what());
  }
}

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

json LayerStatsJson(const std::vector<quant::LayerStats>& stats, int64_t steps_in_window) {
  json out = json::array();
  for (const auto& s : stats) {
    out.push_back({{"name", s.name},
                   {"quantized", s.quantized},
                   {"numel", s.numel},
                   {"sparsity", s.sparsity},
                   {"alpha", s.alpha},
                   {"delta", s.delta},
                   {"cos_wt", s.cos_wt},
                   {"flips", s.flips},
                   {"flips_per_step", steps_in_window > 0
                                          ? static_cast<double>(s.flips) / steps_in_window
                                          : 0.0}});
  }
  return out;
}

json MetricsJson(const EvalMetrics& m) {
  return {{"loss", m.loss}, {"top1", m.top1}, {"top5", m.top5}, {"examples", m.examples}};
}

// Learning rate at `step` of `total` (linear warm-up, then cosine or step).
double LearningRate(const OptimConfig& o, int64_t step, int64_t total, int64_t steps_per_epoch) {
  const double warmup = o.warmup_epochs * static_cast<double>(steps_per_epoch);
  if (step < warmup) return o.lr * (step + 1) / warmup;
  if (o.lr_schedule == "step") {
    const int64_t epoch = step / steps_per_epoch;
    double lr = o.lr;
    for (int m : o.step_milestones) {
      if (epoch >= m) lr *= o.step_gamma;
    }
    return lr;
  }
  const double span = std::max(1.0, static_cast<double>(total) - warmup);
  const double t = std::min(1.0, (static_cast<double>(step) - warmup) / span);
  return o.lr * 0.5 * (1.0 + std::cos(M_PI * t));
}

// Everything one rank trains with.
struct Session {
  TrainerSpec spec;
  RunOptions run;
  torch::Device device = torch::kCPU;
  bool bf16 = false;           // autocast (CUDA only)
  bool channels_last = false;  // NHWC activations and weights (CUDA only)
  std::unique_ptr<Communicator> comm;
  DatasetSplits data;
  Normalization norm;
  ModelArchitecture arch;
  std::shared_ptr<Classifier> model;
  std::unique_ptr<quant::TernaryModel> quant;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::unique_ptr<ShardedSampler> sampler;
  std::string checkpoint_dir;
  int64_t steps_per_epoch = 0;
  int64_t total_steps = 0;
  int64_t global_step = 0;   // optimizer steps completed
};

std::vector<at::Tensor> AllParameters(Session& s) {
  std::vector<at::Tensor> params = s.model->parameters();
  for (const auto& p : s.quant->TrainableParameters()) params.push_back(p);
  return params;
}

// Model parameters and buffers plus the quantizer's state, in a fixed order.
std::vector<at::Tensor> ReplicatedState(Session& s) {
  std::vector<at::Tensor> out = s.model->parameters();
  for (const auto& b : s.model->buffers()) out.push_back(b);
  for (const auto& p : s.quant->state()->parameters()) out.push_back(p);
  for (const auto& b : s.quant->state()->buffers()) out.push_back(b);
  return out;
}

// BatchNorm running statistics (the floating-point buffers): per rank, so
// they are averaged before evaluation and checkpoints.
std::vector<at::Tensor> RunningStatistics(Session& s) {
  std::vector<at::Tensor> out;
  for (const auto& b : s.model->buffers()) {
    if (b.is_floating_point()) out.push_back(b);
  }
  return out;
}

std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(Session& s) {
  // No weight decay on BatchNorm, biases and TTQ scales (all 1-D).
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& p : AllParameters(s)) (p.dim() > 1 ? decay : no_decay).push_back(p);
  const OptimConfig& o = s.spec.optim;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (o.optimizer == "adamw") {
    auto options = [&](double wd) {
      return std::make_unique<torch::optim::AdamWOptions>(
          torch::optim::AdamWOptions(o.lr)
              .betas({o.adam_beta1, o.adam_beta2})
              .eps(o.adam_epsilon)
              .weight_decay(wd));
    };
    groups.emplace_back(decay, options(o.weight_decay));
    groups.emplace_back(no_decay, options(0.0));
    return std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(o.lr));
  }
  auto options = [&](double wd) {
    return std::make_unique<torch::optim::SGDOptions>(
        torch::optim::SGDOptions(o.lr).momentum(o.momentum).nesterov(o.nesterov).weight_decay(wd));
  };
  groups.emplace_back(decay, options(o.weight_decay));
  groups.emplace_back(no_decay, options(0.0));
  return std::make_unique<torch::optim::SGD>(
      groups, torch::optim::SGDOptions(o.lr).momentum(o.momentum).nesterov(o.nesterov));
}

void SetLearningRate(torch::optim::Optimizer& opt, double lr) {
  for (auto& group : opt.param_groups()) group.options().set_lr(lr);
}

// ---------------------------------------------------------------- set-up

Status Setup(Session& s) {
  const TrainerSpec& spec = s.spec;
  if (spec.threads_per_rank > 0) at::set_num_threads(spec.threads_per_rank);
  if (spec.optim.deterministic) at::globalContext().setDeterministicAlgorithms(true, false);
  if (spec.device == "cuda") {
    if (!torch::cuda::is_available()) {
      return FailedPreconditionError("resources.device_kind: CUDA requested but no GPU is visible");
    }
    s.device = torch::Device(torch::kCUDA, 0);
  }
  DistributedOptions dist;
  dist.rank = s.run.rank;
  dist.world_size = s.run.world_size;
  dist.master_addr = s.run.master_addr;
  dist.master_port = s.run.master_port;
  dist.backend = spec.device == "cuda" ? "nccl" : "gloo";
  dist.timeout = std::chrono::milliseconds(int64_t{1000} * spec.collective_timeout_seconds);
  TERN_ASSIGN_OR_RETURN(s.comm, Communicator::Connect(dist));

  DatasetOptions data;
  TERN_ASSIGN_OR_RETURN(data.kind, ParseDatasetKind(spec.data.kind));
  data.path = spec.data.path;
  data.val_fraction = spec.data.val_fraction;
  data.seed = spec.optim.seed;
  data.train_limit = spec.data.max_train_examples;
  data.test_limit = spec.data.max_eval_examples;
  data.image_size = spec.data.input_size;
  TERN_ASSIGN_OR_RETURN(s.data, LoadDatasets(data));
  s.norm = ComputeMeanStd(s.data.train);

  s.arch.arch = spec.model.arch;
  s.arch.in_channels = s.data.train.images.size(1);
  s.arch.num_classes = s.data.train.num_classes;
  s.arch.width_multiplier = spec.model.width_multiplier;
  torch::manual_seed(spec.optim.seed);
  TERN_ASSIGN_OR_RETURN(s.model, BuildClassifier(s.arch));
  s.model->to(s.device);
  s.bf16 = s.device.is_cuda() && spec.optim.bf16;
  s.channels_last = s.device.is_cuda() && spec.optim.channels_last;
  if (s.channels_last) {
    torch::NoGradGuard no_grad;
    for (auto& p : s.model->parameters()) {
      if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
    }
  }
  TERN_ASSIGN_OR_RETURN(s.quant, quant::TernaryModel::Attach(s.model, spec.quant));
  s.quant->state()->to(s.device);
  s.optimizer = MakeOptimizer(s);

  const int64_t global_batch = spec.optim.batch_size;
  s.sampler = std::make_unique<ShardedSampler>(s.data.train.images.size(0), global_batch,
                                               s.run.rank, s.run.world_size,
                                               spec.optim.seed, /*shuffle=*/true);
  s.steps_per_epoch = s.sampler->steps_per_epoch();
  if (s.steps_per_epoch < 1) {
    return InvalidArgumentError("optimization.batch_size: " + std::to_string(global_batch) +
                                " is larger than the training set (" +
                                std::to_string(s.data.train.images.size(0)) + " images)");
  }
  s.total_steps = s.steps_per_epoch * spec.optim.epochs;
  s.checkpoint_dir = spec.checkpoint_dir.empty() ? s.run.workdir + "/checkpoints"
                                                 : spec.checkpoint_dir;
  return MakeDirectories(s.checkpoint_dir);
}

// ------------------------------------------------------------ checkpoints

std::string StepDir(const Session& s, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%010lld", static_cast<long long>(step));
  return s.checkpoint_dir + "/" + name;
}

// Newest step directory holding a COMMITTED marker; -1 when none.
int64_t NewestCommittedStep(const std::string& dir) {
  int64_t best = -1;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("step-", 0) != 0 || !fs::exists(entry.path() / "COMMITTED")) continue;
    try {
      best = std::max<int64_t>(best, std::stoll(name.substr(5)));
    } catch (const std::exception&) {
    }
  }
  return best;
}

// Every rank writes its own file; after a barrier rank 0 commits the step and
// drops all but the two newest committed checkpoints.
Status SaveCheckpoint(Session& s, EventWriter& events) {
  const auto start = Clock::now();
  TERN_RETURN_IF_ERROR(s.comm->AllReduceMean(RunningStatistics(s)));
  const std::string dir = StepDir(s, s.global_step);
  TERN_RETURN_IF_ERROR(MakeDirectories(dir));
  std::ostringstream bytes;
  TERN_RETURN_IF_ERROR(Guard("saving checkpoint", [&] {
    torch::serialize::OutputArchive archive;
    torch::serialize::OutputArchive model_archive, quant_archive, opt_archive;
    s.model->save(model_archive);
    s.quant->state()->save(quant_archive);
    s.optimizer->save(opt_archive);
    archive.write("model", model_archive);
    archive.write("quant", quant_archive);
    archive.write("optimizer", opt_archive);
    archive.write("global_step", torch::tensor(s.global_step));
    archive.write("world_size", torch::tensor(int64_t{s.run.world_size}));
    archive.write("cpu_rng", at::detail::getDefaultCPUGenerator().get_state());
    archive.save_to(bytes);
    return OkStatus();
  }));
  TERN_RETURN_IF_ERROR(WriteFileAtomically(dir + "/rank-" + std::to_string(s.run.rank) + ".pt",
                                           bytes.str()));
  TERN_RETURN_IF_ERROR(s.comm->Barrier());
  if (s.run.rank == 0) {
    TERN_RETURN_IF_ERROR(WriteFileAtomically(dir + "/COMMITTED",
                                             std::to_string(s.global_step) + "\n"));
    std::vector<int64_t> committed;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(s.checkpoint_dir, ec)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("step-", 0) == 0 && fs::exists(entry.path() / "COMMITTED")) {
        committed.push_back(std::stoll(name.substr(5)));
      }
    }
    std::sort(committed.rbegin(), committed.rend());
    for (size_t i = 2; i < committed.size(); ++i) fs::remove_all(StepDir(s, committed[i]), ec);
    events.Emit("checkpoint", {{"step", s.global_step},
                               {"epoch", s.global_step / s.steps_per_epoch},
                               {"path", dir},
                               {"seconds", Seconds(start)}});
  }
  return OkStatus();
}

// Loads the newest committed checkpoint, if any. Returns whether it did.
StatusOr<bool> LoadNewestCheckpoint(Session& s) {
  const int64_t step = NewestCommittedStep(s.checkpoint_dir);
  if (step < 0) return false;
  const std::string dir = StepDir(s, step);
  std::string path = dir + "/rank-" + std::to_string(s.run.rank) + ".pt";
  if (!fs::exists(path)) path = dir + "/rank-0.pt";  // resumed at another world size
  TERN_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  Status loaded = Guard("loading checkpoint " + path, [&] {
    std::istringstream in(bytes);
    torch::serialize::InputArchive archive, model_archive, quant_archive, opt_archive;
    archive.load_from(in, s.device);
    archive.read("model", model_archive);
    archive.read("quant", quant_archive);
    archive.read("optimizer", opt_archive);
    s.model->load(model_archive);
    s.quant->state()->load(quant_archive);
    s.quant->StateLoaded();
    s.optimizer->load(opt_archive);
    at::Tensor global_step, rng;
    archive.read("global_step", global_step);
    archive.read("cpu_rng", rng);
    s.global_step = global_step.item<int64_t>();
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(rng);
    return OkStatus();
  });
  if (!loaded.ok()) return DataLossError(loaded.message());
  if (s.global_step != step) {
    return DataLossError("checkpoint " + path + " holds step " + std::to_string(s.global_step) +
                         ", its directory says " + std::to_string(step));
  }
  return true;
}

// ------------------------------------------------------------- evaluation

// Top-1/top-5 over `data`: `sharded` splits it over the ranks and sums the
// counts (a collective: every rank must call); otherwise this rank alone
// evaluates all of it.
StatusOr<EvalMetrics> Evaluate(Session& s, torch::nn::Module& model,
                               const std::function<at::Tensor(const at::Tensor&)>& forward,
                               const ImageDataset& data, bool sharded) {
  const int rank = sharded ? s.run.rank : 0;
  const int world = sharded ? s.run.world_size : 1;
  torch::NoGradGuard no_grad;
  model.eval();
  const int64_t batch = 512;
  // [loss sum, top-1 correct, top-5 correct, count]
  at::Tensor totals = at::zeros({4}, at::kDouble);
  for (const auto& [begin, end] :
       EvalRanges(data.images.size(0), batch, rank, world)) {
    const at::Tensor x = MakeEvalBatch(data, begin, end, s.norm).to(s.device);
    const at::Tensor y = data.labels.slice(0, begin, end).to(s.device);
    const at::Tensor logits = forward(x).to(at::kFloat);
    const int64_t k = std::min<int64_t>(5, logits.size(1));
    const at::Tensor top = std::get<1>(logits.topk(k, 1));
    const at::Tensor hit = top.eq(y.unsqueeze(1));
    totals[0] += at::cross_entropy_loss(logits, y, {}, at::Reduction::Sum).item<double>();
    totals[1] += hit.select(1, 0).sum().item<double>();
    totals[2] += hit.any(1).sum().item<double>();
    totals[3] += static_cast<double>(end - begin);
  }
  if (sharded) {
    if (s.device.is_cuda()) totals = totals.to(s.device);
    TERN_RETURN_IF_ERROR(s.comm->AllReduceSum(totals));
    totals = totals.cpu();
  }
  EvalMetrics m;
  const double n = std::max(1.0, totals[3].item<double>());
  m.loss = totals[0].item<double>() / n;
  m.top1 = totals[1].item<double>() / n;
  m.top5 = totals[2].item<double>() / n;
  m.examples = static_cast<int64_t>(totals[3].item<double>());
  model.train();
  return m;
}

StatusOr<std::pair<EvalMetrics, EvalMetrics>> EvaluateFpAndTernary(Session& s,
                                                                   const ImageDataset& data) {
  auto forward = [&](const at::Tensor& x) { return s.model->forward(x); };
  TERN_RETURN_IF_ERROR(s.comm->AllReduceMean(RunningStatistics(s)));
  s.quant->UseLatentWeights();
  TERN_ASSIGN_OR_RETURN(EvalMetrics fp, Evaluate(s, *s.model, forward, data, /*sharded=*/true));
  EvalMetrics ternary = fp;
  if (s.spec.quant.quantized()) {
    s.quant->SetProgress(1.0);  // the final, ternary forward
    {
      torch::NoGradGuard no_grad;
      s.quant->BeforeForward();
    }
    TERN_ASSIGN_OR_RETURN(ternary, Evaluate(s, *s.model, forward, data, /*sharded=*/true));
    s.quant->SetProgress(static_cast<double>(s.global_step) / s.total_steps);
  }
  return std::make_pair(fp, ternary);
}

// ---------------------------------------------------------------- training

// One optimizer step over this rank's share of the global batch, split into
// micro-batches. Returns the mean task loss of the rank's share.
StatusOr<double> TrainStep(Session& s, BatchLoader& loader) {
  const int micro = s.spec.optim.micro_batches;
  std::optional<Batch> batch = loader.Next();
  if (!batch) return InternalError("data loader ended inside an epoch");
  at::Tensor images = batch->images.to(s.device, /*non_blocking=*/true);  // [b, C, H, W]
  if (s.channels_last) images = images.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor labels = batch->labels.to(s.device, /*non_blocking=*/true);  // [b]
  const std::vector<at::Tensor> xs = images.chunk(micro);
  const std::vector<at::Tensor> ys = labels.chunk(micro);
  s.optimizer->zero_grad();
  double loss_sum = 0;
  for (int m = 0; m < micro; ++m) {
    s.quant->BeforeForward();  // per micro-batch: each graph owns its STE node
    at::Tensor logits;
    {
      CudaAutocast autocast(s.bf16);
      logits = s.model->forward(xs[m]);  // [b/M, classes]
    }
    const at::Tensor task = at::cross_entropy_loss(logits.to(at::kFloat), ys[m]);
    const at::Tensor loss = (task + s.quant->RegularizationLoss()) / micro;
    loss.backward();
    loss_sum += task.item<double>();
  }
  TERN_RETURN_IF_ERROR(s.comm->AllReduceMean(
      [&] {
        std::vector<at::Tensor> grads;
        for (auto& p : AllParameters(s)) grads.push_back(p.grad());
        return grads;
      }()));
  s.quant->AfterBackward();
  s.optimizer->step();
  return loss_sum / micro;
}

StatusOr<TrainResult> Train(Session& s, EventWriter& events) {
  const auto start = Clock::now();
  TERN_ASSIGN_OR_RETURN(bool resumed, LoadNewestCheckpoint(s));
  if (!resumed) {
    // Every rank starts from rank 0's weights and quantizer state.
    TERN_RETURN_IF_ERROR(s.comm->Broadcast(ReplicatedState(s), 0));
  }
  const TrainerSpec& spec = s.spec;
  const int64_t local_batch = spec.optim.batch_size / s.run.world_size;
  AugmentOptions augment;
  augment.random_crop = spec.data.augment;
  augment.horizontal_flip = spec.data.augment && (spec.data.kind != "idx" ||
                                                  spec.data.path.find("fashion") != std::string::npos);
  BatchLoader loader(s.data.train, *s.sampler, s.norm, augment, /*train=*/true, spec.optim.seed,
                     spec.data.num_workers, /*prefetch=*/4);
  if (s.run.rank == 0) {
    events.Emit("started", {{"resumed_from_step", resumed ? s.global_step : -1},
                            {"steps_per_epoch", s.steps_per_epoch},
                            {"total_steps", s.total_steps},
                            {"epochs", spec.optim.epochs},
                            {"train_examples", s.data.train.images.size(0)},
                            {"method", quant::MethodName(spec.quant.method)},
                            {"arch", s.arch.ToJson()},
                            {"device", s.device.str()}});
  }
  TERN_LOG(INFO) << "training " << spec.model.arch << " with " << quant::MethodName(spec.quant.method)
                 << " for " << s.total_steps << " steps from step " << s.global_step;
  const ImageDataset& eval_set = s.data.val.images.size(0) > 0 ? s.data.val : s.data.test;
  const std::string eval_split = s.data.val.images.size(0) > 0 ? "val" : "test";
  s.quant->Stats(/*reset_flips=*/true);
  int64_t images_since = 0;
  auto window_start = Clock::now();
  int64_t steps_in_stats_window = 0;
  for (int64_t epoch = s.global_step / s.steps_per_epoch; epoch < spec.optim.epochs; ++epoch) {
    const auto epoch_start = Clock::now();
    const int64_t first_step = s.global_step % s.steps_per_epoch;
    loader.StartEpoch(epoch, first_step);
    double epoch_loss = 0;
    int64_t epoch_steps = 0;
    for (int64_t step = first_step; step < s.steps_per_epoch; ++step) {
      const double lr = LearningRate(spec.optim, s.global_step, s.total_steps, s.steps_per_epoch);
      SetLearningRate(*s.optimizer, lr);
      s.quant->SetProgress(static_cast<double>(s.global_step) / s.total_steps);
      TERN_ASSIGN_OR_RETURN(double loss, TrainStep(s, loader));
      if (!std::isfinite(loss)) {
        return AbortedError("loss is " + std::to_string(loss) + " at step " +
                            std::to_string(s.global_step) + " (diverged; lower optimization.lr)");
      }
      ++s.global_step;
      ++steps_in_stats_window;
      images_since += local_batch;
      epoch_loss += loss;
      ++epoch_steps;
      const bool last = s.global_step == s.total_steps;
      if (s.global_step % spec.progress_every_steps == 0 || last) {
        const double ips = images_since * s.run.world_size / std::max(1e-9, Seconds(window_start));
        if (s.run.rank == 0) {
          events.Emit("progress",
                      {{"epoch", epoch + 1},  // 1-based, as in the API
                       {"epochs", spec.optim.epochs},
                       {"step", s.global_step},
                       {"total_steps", s.total_steps},
                       {"loss", loss},
                       {"lr", lr},
                       {"images_per_second", ips},
                       {"eta_seconds", (s.total_steps - s.global_step) * local_batch *
                                           s.run.world_size / std::max(1e-9, ips)},
                       {"reg_lambda", s.quant->schedule().lambda},
                       {"kappa", s.quant->schedule().kappa},
                       {"phase", s.quant->schedule().ternary_forward ? 2 : 1}});
        }
        images_since = 0;
        window_start = Clock::now();
      }
      if (s.global_step % spec.checkpoint_every_steps == 0 || last) {
        TERN_RETURN_IF_ERROR(SaveCheckpoint(s, events));
      }
    }
    // Epoch end: metrics of the FP twin and the ternary model, layer stats.
    TERN_ASSIGN_OR_RETURN(auto metrics, EvaluateFpAndTernary(s, eval_set));
    const auto stats = s.quant->Stats(/*reset_flips=*/true);
    if (s.run.rank == 0) {
      events.Emit("epoch_end",
                  {{"epoch", epoch + 1},
                   {"eval_split", eval_split},
                   {"train_loss", epoch_steps > 0 ? epoch_loss / epoch_steps : 0.0},
                   {"fp", MetricsJson(metrics.first)},
                   {"ternary", MetricsJson(metrics.second)},
                   {"epoch_seconds", Seconds(epoch_start)},
                   {"layers", LayerStatsJson(stats, steps_in_stats_window)}});
    }
    steps_in_stats_window = 0;
  }

  // Final: test metrics, export, re-load, evaluate the artifact.
  TrainResult result;
  result.steps = s.global_step;
  TERN_ASSIGN_OR_RETURN(auto final_metrics, EvaluateFpAndTernary(s, s.data.test));
  result.fp = final_metrics.first;
  result.ternary = final_metrics.second;
  result.layers = s.quant->Stats(/*reset_flips=*/false);
  result.artifact_path = s.run.artifact_path.empty() ? s.run.workdir + "/model.tern"
                                                     : s.run.artifact_path;
  if (s.run.rank == 0) {
    json metadata = {{"method", quant::MethodName(spec.quant.method)},
                     {"job", spec.name},
                     {"steps", s.global_step},
                     {"normalization", {{"mean", s.norm.mean}, {"std", s.norm.std}}}};
    const quant::Artifact artifact = s.quant->Export(s.arch.ToJson(), metadata.dump());
    TERN_RETURN_IF_ERROR(quant::WriteArtifactFile(artifact, result.artifact_path));
    TERN_ASSIGN_OR_RETURN(const quant::Artifact reread, quant::ReadArtifactFile(result.artifact_path));
    TERN_ASSIGN_OR_RETURN(const ModelArchitecture arch, ModelArchitecture::FromJson(reread.architecture));
    TERN_ASSIGN_OR_RETURN(std::shared_ptr<Classifier> fresh, BuildClassifier(arch));
    fresh->to(s.device);
    TERN_RETURN_IF_ERROR(quant::LoadArtifactInto(reread, *fresh));
    result.bits_per_weight = reread.BitsPerTernaryWeight();
    result.artifact_bytes = static_cast<int64_t>(fs::file_size(result.artifact_path));
    // Rank 0 evaluates the re-loaded artifact on the whole test set alone.
    auto forward = [&](const at::Tensor& x) { return fresh->forward(x); };
    TERN_ASSIGN_OR_RETURN(result.artifact,
                          Evaluate(s, *fresh, forward, s.data.test, /*sharded=*/false));
  }
  result.wall_seconds = Seconds(start);
  result.images_per_second =
      result.wall_seconds > 0 ? static_cast<double>(s.global_step) * spec.optim.batch_size / result.wall_seconds : 0;
  if (s.run.rank == 0) {
    events.Emit("finished", {{"fp", MetricsJson(result.fp)},
                             {"ternary", MetricsJson(result.ternary)},
                             {"artifact", MetricsJson(result.artifact)},
                             {"artifact_path", result.artifact_path},
                             {"artifact_bytes", result.artifact_bytes},
                             {"bits_per_weight", result.bits_per_weight},
                             {"steps", result.steps},
                             {"wall_seconds", result.wall_seconds},
                             {"images_per_second", result.images_per_second},
                             {"layers", LayerStatsJson(result.layers, 0)}});
  }
  return result;
}

}  // namespace

StatusOr<TrainResult> RunTraining(const TrainerSpec& spec, const RunOptions& options,
                                  EventWriter& events) {
  Session s;
  s.spec = spec;
  s.run = options;
  SetLogPrefix("[job " + spec.name + " rank " + std::to_string(options.rank) + "/" +
               std::to_string(options.world_size) + "] ");
  StatusOr<TrainResult> result = [&]() -> StatusOr<TrainResult> {
    TERN_RETURN_IF_ERROR(spec.Validate());
    if (options.world_size != spec.ranks) {
      return InvalidArgumentError("world size " + std::to_string(options.world_size) +
                                  " differs from resources.ranks " + std::to_string(spec.ranks));
    }
    TERN_RETURN_IF_ERROR(Guard("set-up", [&] { return Setup(s); }));
    StatusOr<TrainResult> trained = InternalError("not run");
    TERN_RETURN_IF_ERROR(Guard("training", [&] {
      trained = Train(s, events);
      return OkStatus();
    }));
    return trained;
  }();
  if (!result.ok()) {
    events.Emit("failed", {{"code", StatusCodeName(result.status().code())},
                           {"reason", result.status().message()},
                           {"step", s.global_step}});
  }
  return result;
}

}  // namespace tern::trainer
