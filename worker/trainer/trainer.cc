#include "worker/trainer/trainer.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <sstream>

#include "common/file_util.h"
#include "common/logging.h"
#include "model_io/safetensors.h"
#include "worker/trainer/checkpoint_layout.h"
#include "worker/trainer/data.h"
#include "worker/trainer/distributed.h"
#include "worker/trainer/init_from.h"
#include "worker/trainer/multi_tensor_sgd.h"
#include "worker/trainer/running_statistics.h"
#include "worker/trainer/step_graph.h"
#include "worker/trainer/stop_request.h"
#include "worker/trainer/task.h"

#ifdef TERN_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace tern::trainer {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

// Progress lines that carry the regularizer's sample, at most, per run.
constexpr int64_t kRegularizerSamplesPerRun = 64;

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

// A progress line's "regularizer" object (docs/EVENTS.md).
json RegularizerJson(const quant::RegularizerSample& sample, double seconds) {
  json layers = json::array();
  for (const auto& l : sample.layers) {
    layers.push_back({{"name", l.name},
                      {"numel", l.numel},
                      {"cos_wt", l.cos_wt},
                      {"reg_grad_norm", l.reg_grad_norm},
                      {"grad_norm", l.grad_norm},
                      {"reg_grad_share", l.grad_norm > 0 ? l.reg_grad_norm / l.grad_norm : 0.0}});
  }
  return {{"lambda", sample.lambda},
          {"cos_wt", sample.MeanCosine()},
          {"reg_grad_share", sample.RegGradShare()},
          {"seconds", seconds},
          {"layers", layers}};
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
  std::unique_ptr<Communicator> comm;
  std::unique_ptr<TrainingTask> task;
  std::shared_ptr<torch::nn::Module> model;  // task->model()
  std::unique_ptr<quant::TernaryModel> quant;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  // The BatchNorm running statistics: updated once per step, averaged over
  // the micro-batches and, in the gradient all-reduce, over the ranks.
  std::unique_ptr<RunningStatistics> running_stats;
  // optimization.cuda_graph: the captured forward + backward, and the
  // quantizer outputs its capture made (handed back before each replay's
  // AfterBackward).
  std::unique_ptr<StepGraph> step_graph;
  quant::TernaryModel::StepOutputs graph_outputs;
  std::unique_ptr<ShardedSampler> sampler;
  // This rank's stop vote, averaged over the ranks with the gradients: > 0
  // once any rank was asked to stop (stop_request.h).
  at::Tensor stop_vote;
  AgentLeaseWatch lease;
  std::string checkpoint_dir;
  int64_t steps_per_epoch = 0;
  int64_t total_steps = 0;
  int64_t global_step = 0;   // optimizer steps completed
  // Seconds spent since the last progress event (rank-local).
  double data_wait_seconds = 0;
  double allreduce_seconds = 0;
  double sample_seconds = 0;  // the last regularizer sample's AfterBackward
  json init_from;  // what model.init_from loaded (rank 0), for "started"
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
  return std::make_unique<MultiTensorSgd>(
      groups, torch::optim::SGDOptions(o.lr).momentum(o.momentum).nesterov(o.nesterov));
}

void SetLearningRate(torch::optim::Optimizer& opt, double lr) {
  for (auto& group : opt.param_groups()) group.options().set_lr(lr);
}

// ---------------------------------------------------------------- set-up

// Threads, determinism and the device of `spec` (training and --evaluate).
StatusOr<torch::Device> PrepareDevice(const TrainerSpec& spec) {
  if (spec.threads_per_rank > 0) at::set_num_threads(spec.threads_per_rank);
  if (spec.optim.deterministic) {
    const bool cuda = spec.device == "cuda";
    // On CUDA a few kernels have no deterministic version (the max-pool
    // backward of the ImageNet stem, the detector's upsampling backward):
    // LibTorch warns for those instead of failing the job.
    at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/cuda);
    // Deterministic cuBLAS needs a fixed workspace, which it reads from the
    // environment when its handle is created (before the first matmul);
    // without it LibTorch refuses every CUDA matmul in this mode.
    if (cuda) setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
  }
  if (spec.device == "cuda") {
    if (!torch::cuda::is_available()) {
      return FailedPreconditionError("resources.device_kind: CUDA requested but no GPU is visible");
    }
    // Shapes are fixed for a whole run: let cuDNN time its algorithms once
    // (not when bit-exact reruns were asked for).
    at::globalContext().setBenchmarkCuDNN(!spec.optim.deterministic);
    return torch::Device(torch::kCUDA, 0);
  }
  return torch::Device(torch::kCPU);
}

// Where one rank's task runs.
TaskContext TaskContextFor(const TrainerSpec& spec, Communicator* comm, int rank, int world_size,
                           torch::Device device) {
  TaskContext ctx;
  ctx.spec = &spec;
  ctx.comm = comm;
  ctx.rank = rank;
  ctx.world_size = world_size;
  ctx.device = device;
  ctx.bf16 = device.is_cuda() && spec.optim.bf16;
  ctx.channels_last = device.is_cuda() && spec.optim.channels_last;
  ctx.static_batches = spec.optim.cuda_graph;
  return ctx;
}

// The spec's task: classification or detection.
std::unique_ptr<TrainingTask> MakeTask(const TaskContext& ctx) {
  return ctx.spec->task == "detection" ? MakeDetectionTask(ctx) : MakeClassificationTask(ctx);
}

Status Setup(Session& s) {
  const TrainerSpec& spec = s.spec;
  TERN_ASSIGN_OR_RETURN(s.device, PrepareDevice(spec));
  DistributedOptions dist;
  dist.rank = s.run.rank;
  dist.world_size = s.run.world_size;
  dist.master_addr = s.run.master_addr;
  dist.master_port = s.run.master_port;
  dist.backend = spec.device == "cuda" ? "nccl" : "gloo";
  dist.connect_alone = s.run.always_connect;
  dist.rendezvous_key = s.run.rendezvous_key;
  dist.timeout = std::chrono::milliseconds(int64_t{1000} * spec.collective_timeout_seconds);
  TERN_ASSIGN_OR_RETURN(s.comm, Communicator::Connect(dist));
  TERN_LOG(INFO) << "rank " << dist.rank << "/" << dist.world_size << " on " << s.device.str()
                 << ", process group " << (s.comm->connected() ? dist.backend : "none")
                 << (s.comm->connected() && !dist.rendezvous_key.empty()
                         ? " (rendezvous keys prefixed with the job's secret)"
                         : "");

  const TaskContext ctx =
      TaskContextFor(s.spec, s.comm.get(), s.run.rank, s.run.world_size, s.device);
  s.task = MakeTask(ctx);
  torch::manual_seed(spec.optim.seed);
  TERN_RETURN_IF_ERROR(s.task->Load());
  s.model = s.task->model();
  s.checkpoint_dir = spec.checkpoint_dir.empty() ? s.run.workdir + "/checkpoints"
                                                 : spec.checkpoint_dir;
  // Rank 0 reads model.init_from on a fresh start (a resumed run takes its
  // checkpoint instead); the start-up broadcast gives every rank its weights.
  const bool resuming = NewestCommittedStep(s.checkpoint_dir) >= 0;
  if (!spec.model.init_from.empty() && s.run.rank == 0 && !resuming) {
    TERN_ASSIGN_OR_RETURN(const InitReport report,
                          InitializeFrom(spec.model.init_from, *s.model,
                                         ParseSourceNames(spec.model.init_from_names)));
    TERN_LOG(INFO) << "model.init_from: " << report.Summary();
    s.init_from = report.ToJson();
  }
  if (ctx.channels_last) {  // NHWC weights; the task makes its inputs NHWC
    torch::NoGradGuard no_grad;
    for (auto& p : s.model->parameters()) {
      if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
    }
  }
  TERN_ASSIGN_OR_RETURN(s.quant,
                        quant::TernaryModel::Attach(s.model, spec.quant, s.task->output_layers()));
  s.quant->state()->to(s.device);
  // The tasks run every training forward under bf16 autocast when ctx.bf16.
  if (ctx.bf16) s.quant->set_forward_dtype(at::kBFloat16);
  s.optimizer = MakeOptimizer(s);
  s.running_stats = std::make_unique<RunningStatistics>(*s.model);
  if (spec.optim.cuda_graph) {  // Validate() allowed it: CUDA classification
    s.quant->set_device_scalars(true);
    TERN_ASSIGN_OR_RETURN(s.step_graph, StepGraph::Create(s.device, AllParameters(s)));
  }

  const int64_t global_batch = spec.optim.batch_size;
  s.sampler = std::make_unique<ShardedSampler>(s.task->train_size(), global_batch,
                                               s.run.rank, s.run.world_size,
                                               spec.optim.seed, /*shuffle=*/true);
  s.steps_per_epoch = s.sampler->steps_per_epoch();
  if (s.steps_per_epoch < 1) {
    return InvalidArgumentError("optimization.batch_size: " + std::to_string(global_batch) +
                                " is larger than the training set (" +
                                std::to_string(s.task->train_size()) + " examples)");
  }
  s.total_steps = s.steps_per_epoch * spec.optim.epochs;
  return MakeDirectories(s.checkpoint_dir);
}

// ------------------------------------------------------------ checkpoints

std::string StepDir(const Session& s, int64_t step) {
  return s.checkpoint_dir + "/" + StepDirName(step);
}

// Every rank writes its own file; after a barrier rank 0 commits the step and
// drops all but the two newest committed checkpoints.
Status SaveCheckpoint(Session& s, EventWriter& events) {
  const auto start = Clock::now();
  if (s.lease.Expired()) return Fenced(s.lease.path());
  // Every rank holds the same BatchNorm statistics (averaged in each step's
  // all-reduce), so every rank's file holds the model of the whole job.
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
  TERN_RETURN_IF_ERROR(WriteFileAtomically(dir + "/" + RankFileName(s.run.rank), bytes.str()));
  TERN_RETURN_IF_ERROR(s.comm->Barrier());
  if (s.run.rank == 0) {
    // The commit is what a resume trusts: never after the lease ran out.
    if (s.lease.Expired()) return Fenced(s.lease.path());
    TERN_RETURN_IF_ERROR(WriteFileAtomically(dir + "/" + kCommittedMarker,
                                             std::to_string(s.global_step) + "\n"));
    std::vector<int64_t> committed;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(s.checkpoint_dir, ec)) {
      const int64_t step = ParseStepDirName(entry.path().filename().string());
      if (step >= 0 && fs::exists(entry.path() / kCommittedMarker)) committed.push_back(step);
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
  std::string path = dir + "/" + RankFileName(s.run.rank);
  if (!fs::exists(path)) path = dir + "/" + RankFileName(0);  // resumed at another world size
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

// After every rank voted to stop and the current step's checkpoint is
// committed: waits until rank 0 has written the commit marker (an exit report
// may make the scheduler kill the other ranks at once), then StoppedOnRequest.
// Every rank writes `stopped`: the first exit ternd hears of may be any rank's,
// and an agent relays a rank's lines before its exit, so ternd learns of the
// committed step before it requeues the job, even if rank 0's `checkpoint`
// line is still on its way.
Status StopAtCommittedCheckpoint(Session& s, EventWriter& events) {
  TERN_RETURN_IF_ERROR(s.comm->Barrier());
  events.Emit("stopped", {{"step", s.global_step},
                          {"epoch", s.global_step / s.steps_per_epoch},
                          {"total_steps", s.total_steps},
                          {"checkpoint", StepDir(s, s.global_step)}});
  return StoppedOnRequest(s.global_step);
}

// ------------------------------------------------------------- evaluation

// Metrics of the ternary model (what the schedule's end installs: the FP
// model for METHOD_FP) on `split`, sharded over the ranks (a collective).
StatusOr<json> EvaluateTernary(Session& s, EvalSplit split) {
  EvalRequest request;
  request.split = split;
  s.quant->SetProgress(1.0);  // the final, ternary forward
  {
    torch::NoGradGuard no_grad;
    s.quant->BeforeForward();
  }
  StatusOr<json> metrics = s.task->Evaluate(*s.model, request);
  s.quant->SetProgress(static_cast<double>(s.global_step) / s.total_steps);
  return metrics;
}

// Metrics of the FP twin (latent weights) and of the ternary model on the
// evaluation split, sharded over the ranks (a collective).
StatusOr<std::pair<json, json>> EvaluateFpAndTernary(Session& s, EvalSplit split) {
  // The BatchNorm statistics are already the same on every rank (TrainStep).
  EvalRequest request;
  request.split = split;
  s.quant->UseLatentWeights();
  TERN_ASSIGN_OR_RETURN(json fp, s.task->Evaluate(*s.model, request));
  json ternary = fp;
  if (s.spec.quant.quantized()) {
    TERN_ASSIGN_OR_RETURN(ternary, EvaluateTernary(s, split));
  }
  return std::make_pair(fp, ternary);
}

// quantization.bn_recalibration_batches, 0 resolved: about 2048 images.
int64_t RecalibrationBatches(const Session& s) {
  const int64_t k = s.spec.quant.bn_recalibration_batches;
  if (k > 0) return k;
  const int64_t batch = s.spec.optim.batch_size;
  return (2048 + batch - 1) / batch;
}

// Re-estimates the BatchNorm running statistics with the ternary weights
// (the final schedule's forward) on RecalibrationBatches() training batches,
// averaged over the ranks (a collective). Returns the number of batches.
StatusOr<int64_t> ReestimateWithTernaryWeights(Session& s) {
  s.quant->SetProgress(1.0);
  {
    torch::NoGradGuard no_grad;
    s.quant->BeforeForward();
  }
  const int64_t batches = RecalibrationBatches(s);
  StatusOr<int64_t> ran = ReestimateBatchNorm(*s.model, *s.running_stats, s.comm.get(), [&] {
    return s.task->ForwardRecalibrationBatches(batches);
  });
  s.quant->SetProgress(static_cast<double>(s.global_step) / s.total_steps);
  return ran;
}

// The switch from phase 1 (FP forward) to phase 2 (ternary forward), before
// the first ternary step: top-1 (detection: AP) on the evaluation split of the FP forward
// and of the ternary forward with phase 1's BatchNorm statistics, and of the
// ternary forward with statistics re-estimated on the ternary weights (kept
// only with quantization.recalibrate_bn_at_switch). A collective; rank 0
// writes `phase_switch` (docs/EVENTS.md).
Status PhaseSwitch(Session& s, EventWriter& events) {
  const auto start = Clock::now();
  TERN_ASSIGN_OR_RETURN(const auto raw, EvaluateFpAndTernary(s, EvalSplit::kEval));
  json recalibrated = nullptr;
  int64_t batches = 0;
  const bool keep = s.spec.quant.recalibrate_bn_at_switch;
  std::vector<at::Tensor> saved;
  for (const at::Tensor& t : s.running_stats->averaged()) saved.push_back(t.clone());
  TERN_ASSIGN_OR_RETURN(batches, ReestimateWithTernaryWeights(s));
  TERN_ASSIGN_OR_RETURN(recalibrated, EvaluateTernary(s, EvalSplit::kEval));
  if (!keep) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < saved.size(); ++i) s.running_stats->averaged()[i].copy_(saved[i]);
  }
  if (s.run.rank == 0) {
    events.Emit("phase_switch", {{"step", s.global_step},
                                 {"epoch", s.global_step / s.steps_per_epoch + 1},
                                 {"eval_split", s.task->eval_split_name()},
                                 {"fp", raw.first},
                                 {"ternary", raw.second},
                                 {"ternary_bn", recalibrated},
                                 {"bn_batches", batches},
                                 {"bn_images", batches * s.spec.optim.batch_size},
                                 {"bn_kept", keep && batches > 0},
                                 {"seconds", Seconds(start)}});
  }
  return OkStatus();
}

// FNV-1a over the bytes of `tensors` (CPU, contiguous copies): equal digests
// mean equal values bit for bit.
std::string Digest(const std::vector<at::Tensor>& tensors) {
  uint64_t h = 1469598103934665603ULL;
  for (const at::Tensor& t : tensors) {
    const at::Tensor c = t.detach().to(at::kCPU).contiguous();
    const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
    for (size_t i = 0; i < c.nbytes(); ++i) h = (h ^ bytes[i]) * 1099511628211ULL;
  }
  char out[17];
  std::snprintf(out, sizeof(out), "%016llx", static_cast<unsigned long long>(h));
  return out;
}

// CUDA caching allocator: bytes allocated now and at the peak on this rank's
// GPU; nullopt on CPU.
std::optional<std::pair<int64_t, int64_t>> GpuMemoryBytes(const Session& s) {
#ifdef TERN_WITH_CUDA
  if (s.device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(s.device.index());
    // Index 0 is StatType::AGGREGATE (all pools); the enum moved between
    // namespaces across LibTorch versions, its value did not.
    const auto& allocated = stats.allocated_bytes[0];
    return std::make_pair(allocated.current, allocated.peak);
  }
#else
  (void)s;
#endif
  return std::nullopt;
}

// ---------------------------------------------------------------- training

// One optimizer step over this rank's share of the global batch, split into
// micro-batches. Returns the mean task loss of the rank's share as a detached
// scalar on the device: reading it (a GPU sync) is left to the caller.
// A non-null `sample` receives the regularizer diagnostics of this step
// (TernaryModel::AfterBackward).
StatusOr<at::Tensor> TrainStep(Session& s, quant::RegularizerSample* sample) {
  const int micro = s.spec.optim.micro_batches;
  auto waited = Clock::now();
  TERN_RETURN_IF_ERROR(s.task->NextBatch());
  s.data_wait_seconds += Seconds(waited);
  TERN_RETURN_IF_ERROR(s.task->BeginStep());
  at::Tensor loss_sum;
  if (s.step_graph != nullptr) {
    // One micro-batch, replayed from a CUDA graph (the regularizer's
    // gradient comes from AfterBackward(): last_forward_capturable() below).
    TERN_ASSIGN_OR_RETURN(const StepGraph::Result run,
                          s.step_graph->Run(s.quant->StepStructure(), [&] {
                            return CapturableStepBody(*s.quant, *s.task);
                          }));
    if (run.kind == StepGraph::RunKind::kReplayed) {
      s.quant->set_step_outputs(s.graph_outputs);
    } else {
      if (!s.quant->last_forward_capturable()) {
        return FailedPreconditionError(
            "optimization.cuda_graph: this quantizer's step cannot be captured (it needs the "
            "packed projection: quantized layers on one device and dtype, not TTQ)");
      }
      s.graph_outputs = s.quant->step_outputs();
    }
    loss_sum = run.value;  // the division below copies it before the next replay
  } else {
    s.optimizer->zero_grad();
    // Each micro-batch's forward moves the BatchNorm statistics from the
    // step's values; after the last they are the mean of the M results.
    s.running_stats->BeginMicroBatches(micro);
    for (int m = 0; m < micro; ++m) {
      s.quant->BeforeForward();  // per micro-batch: each graph owns its STE node
      const at::Tensor task = s.task->MicroBatchLoss(m, micro);
      const at::Tensor loss = (task + s.quant->RegularizationLoss()) / micro;
      loss.backward();
      s.running_stats->EndMicroBatch(m);
      loss_sum = loss_sum.defined() ? loss_sum + task.detach() : task.detach();
    }
  }
  const auto reduce_start = Clock::now();
  s.stop_vote.fill_(StopRequested() ? 1.0 : 0.0);
  TERN_RETURN_IF_ERROR(s.comm->AllReduceMean(
      [&] {
        std::vector<at::Tensor> grads;
        for (auto& p : AllParameters(s)) grads.push_back(p.grad());
        // The BatchNorm running statistics ride along (in place; a CUDA
        // graph's replays read the same buffers): every rank then holds the
        // mean over all ranks and micro-batches (running_statistics.h).
        for (const auto& b : s.running_stats->averaged()) grads.push_back(b);
        grads.push_back(s.stop_vote);  // rides in the last bucket: no extra collective
        return grads;
      }()));
  s.allreduce_seconds += Seconds(reduce_start);
  const auto after_start = Clock::now();
  s.quant->AfterBackward(sample);
  if (sample != nullptr) s.sample_seconds = Seconds(after_start);
  s.optimizer->step();
  return loss_sum / micro;
}

StatusOr<TrainResult> Train(Session& s, EventWriter& events) {
  const auto start = Clock::now();
  TERN_ASSIGN_OR_RETURN(bool resumed, LoadNewestCheckpoint(s));
  json init_digest = nullptr;  // fresh starts only
  if (!resumed) {
    // Every rank starts from rank 0's weights and quantizer state.
    TERN_RETURN_IF_ERROR(s.comm->Broadcast(ReplicatedState(s), 0));
    std::vector<at::Tensor> initial = s.model->parameters();
    for (const auto& b : s.model->buffers()) initial.push_back(b);
    init_digest = Digest(initial);
  }
  const TrainerSpec& spec = s.spec;
  const int64_t local_batch = spec.optim.batch_size / s.run.world_size;
  s.task->StartTraining(*s.sampler);
  if (s.run.rank == 0) {
    events.Emit("started", {{"resumed_from_step", resumed ? s.global_step : -1},
                            {"steps_per_epoch", s.steps_per_epoch},
                            {"total_steps", s.total_steps},
                            {"epochs", spec.optim.epochs},
                            {"train_examples", s.task->train_size()},
                            {"task", spec.task},
                            {"init_from", s.init_from},
                            {"method", quant::MethodName(spec.quant.method)},
                            {"arch", json::parse(s.task->architecture_json())},
                            {"device", s.device.str()},
                            {"process_group", s.comm->connected() ? s.comm->backend() : "none"},
                            // Paired runs (docs/RESULTS.md): the same seed gives the
                            // same initial model and the same batch order whatever
                            // the method.
                            {"init_digest", init_digest},
                            {"data_digest", [&] {
                               const auto perm = s.sampler->Permutation(0);
                               return Digest({at::tensor(*perm, at::kLong)});
                             }()}});
  }
  TERN_LOG(INFO) << "training " << spec.model.arch << " with " << quant::MethodName(spec.quant.method)
                 << " for " << s.total_steps << " steps from step " << s.global_step;
  const std::string eval_split = s.task->eval_split_name();
  s.quant->Stats(/*reset_flips=*/true);
  s.stop_vote = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(s.device));
  std::optional<TrainingLoopScope> loop_scope(std::in_place);
  int64_t images_since = 0;
  int64_t steps_since = 0;
  auto window_start = Clock::now();
  int64_t steps_in_stats_window = 0;
  // The phase before the next step, to catch the switch to the ternary
  // forward (a resumed run past it does not see it again).
  bool was_ternary =
      quant::ComputeSchedule(
          spec.quant, static_cast<double>(std::max<int64_t>(0, s.global_step - 1)) / s.total_steps)
          .ternary_forward;
  const bool sample_regularizer = spec.quant.quantized() && spec.quant.use_regularizer;
  // At most kRegularizerSamplesPerRun evenly spaced progress lines carry a
  // sample (about 3 KB each with ResNet-20's 19 layers), not every one.
  const int64_t reports = std::max<int64_t>(1, s.total_steps / spec.progress_every_steps);
  const int64_t sample_every =
      spec.progress_every_steps *
      ((reports + kRegularizerSamplesPerRun - 1) / kRegularizerSamplesPerRun);
  std::optional<std::pair<json, json>> last_eval;  // the last epoch's evaluation
  for (int64_t epoch = s.global_step / s.steps_per_epoch; epoch < spec.optim.epochs; ++epoch) {
    const auto epoch_start = Clock::now();
    const int64_t first_step = s.global_step % s.steps_per_epoch;
    s.task->StartEpoch(epoch, first_step);
    // Summed on the device; read at the epoch's end.
    at::Tensor epoch_loss = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(s.device));
    int64_t epoch_steps = 0;
    for (int64_t step = first_step; step < s.steps_per_epoch; ++step) {
      const double lr = LearningRate(spec.optim, s.global_step, s.total_steps, s.steps_per_epoch);
      SetLearningRate(*s.optimizer, lr);
      s.quant->SetProgress(static_cast<double>(s.global_step) / s.total_steps);
      if (s.quant->schedule().ternary_forward && !was_ternary) {
        // Its evaluations are not training: left out of the throughput window, as the
        // epochs' evaluations are.
        const auto switch_start = Clock::now();
        TERN_RETURN_IF_ERROR(PhaseSwitch(s, events));
        window_start += Clock::now() - switch_start;
      }
      was_ternary = s.quant->schedule().ternary_forward;
      const bool last = s.global_step + 1 == s.total_steps;
      const bool report = (s.global_step + 1) % spec.progress_every_steps == 0 || last;
      // The regularizer's diagnostics, on the steps that report.
      quant::RegularizerSample sample;
      const bool sampled =
          report && sample_regularizer && ((s.global_step + 1) % sample_every == 0 || last);
      TERN_ASSIGN_OR_RETURN(const at::Tensor step_loss, TrainStep(s, sampled ? &sample : nullptr));
      epoch_loss.add_(step_loss);
      // Reading a CUDA loss waits for the step to finish: on a GPU only when
      // reporting (divergence is caught within progress_every_steps steps),
      // so that the CPU queues the next steps meanwhile; on the CPU every step.
      double loss = std::nan("");
      if (report || !s.device.is_cuda()) {
        loss = step_loss.item<double>();
        if (!std::isfinite(loss)) {
          return AbortedError("loss is " + std::to_string(loss) + " at step " +
                              std::to_string(s.global_step) + " (diverged; lower optimization.lr)");
        }
      }
      ++s.global_step;
      ++steps_in_stats_window;
      images_since += local_batch;
      ++steps_since;
      ++epoch_steps;
      if (report) {
        const double window_seconds = Seconds(window_start);
        const double ips = images_since * s.run.world_size / std::max(1e-9, window_seconds);
        if (s.run.rank == 0) {
          json progress = {{"epoch", epoch + 1},  // 1-based, as in the API
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
                       {"phase", s.quant->schedule().ternary_forward ? 2 : 1},
                       {"step_seconds", window_seconds / steps_since},
                       {"data_wait_seconds", s.data_wait_seconds / steps_since},
                       {"allreduce_seconds", s.allreduce_seconds / steps_since}};
          if (s.step_graph != nullptr) {
            progress["cuda_graph_captures"] = s.step_graph->captures();
            progress["cuda_graph_replays"] = s.step_graph->replays();
          }
          if (const auto memory = GpuMemoryBytes(s)) {
            progress["gpu_memory_bytes"] = memory->first;
            progress["gpu_peak_memory_bytes"] = memory->second;
          }
          if (sampled) progress["regularizer"] = RegularizerJson(sample, s.sample_seconds);
          events.Emit("progress", progress);
        }
        images_since = 0;
        steps_since = 0;
        s.data_wait_seconds = 0;
        s.allreduce_seconds = 0;
        window_start = Clock::now();
      }
      const bool checkpointed = s.global_step % spec.checkpoint_every_steps == 0 || last;
      if (checkpointed) TERN_RETURN_IF_ERROR(SaveCheckpoint(s, events));
      // Every rank reads the vote at the same steps (the conditions are
      // rank-independent); on a GPU where the loss was read or cheaply.
      const bool read_vote = !s.device.is_cuda() || report ||
                             s.global_step % kStopCheckEverySteps == 0;
      if (read_vote && s.lease.Expired()) return Fenced(s.lease.path());
      if (read_vote && s.stop_vote.item<float>() > 0) {
        if (!checkpointed) TERN_RETURN_IF_ERROR(SaveCheckpoint(s, events));
        return StopAtCommittedCheckpoint(s, events);
      }
    }
    // Epoch end: metrics of the FP twin and the ternary model, layer stats.
    TERN_ASSIGN_OR_RETURN(auto metrics, EvaluateFpAndTernary(s, EvalSplit::kEval));
    last_eval = metrics;
    const auto stats = s.quant->Stats(/*reset_flips=*/true);
    if (s.run.rank == 0) {
      events.Emit("epoch_end",
                  {{"epoch", epoch + 1},
                   {"eval_split", eval_split},
                   {"train_loss", epoch_steps > 0 ? epoch_loss.item<double>() / epoch_steps : 0.0},
                   {"fp", metrics.first},
                   {"ternary", metrics.second},
                   {"epoch_seconds", Seconds(epoch_start)},
                   {"layers", LayerStatsJson(stats, steps_in_stats_window)}});
    }
    steps_in_stats_window = 0;
  }

  // Final: test metrics, export, re-load, evaluate the artifact. A stop
  // request from here on exits at once: the last step's checkpoint is
  // committed, and a restart redoes only this part. One that came during the
  // last epoch's evaluation is agreed on with one more vote.
  loop_scope.reset();
  s.stop_vote.fill_(StopRequested() ? 1.0 : 0.0);
  TERN_RETURN_IF_ERROR(s.comm->AllReduceMean({s.stop_vote}));
  if (s.stop_vote.item<float>() > 0) return StopAtCommittedCheckpoint(s, events);
  TrainResult result;
  result.steps = s.global_step;
  int64_t final_bn_batches = 0;
  if (spec.quant.recalibrate_bn_before_export) {
    TERN_ASSIGN_OR_RETURN(final_bn_batches, ReestimateWithTernaryWeights(s));
    last_eval.reset();  // the statistics changed
  }
  // The final epoch's validation metrics (never a best epoch's).
  if (eval_split == "val") {
    if (!last_eval) {
      TERN_ASSIGN_OR_RETURN(last_eval, EvaluateFpAndTernary(s, EvalSplit::kEval));
    }
    result.val_fp = last_eval->first;
    result.val_ternary = last_eval->second;
  }
  TERN_ASSIGN_OR_RETURN(auto final_metrics, EvaluateFpAndTernary(s, EvalSplit::kTest));
  result.fp = final_metrics.first;
  result.ternary = final_metrics.second;
  result.layers = s.quant->Stats(/*reset_flips=*/false);
  result.artifact_path = s.run.artifact_path.empty() ? s.run.workdir + "/model.tern"
                                                     : s.run.artifact_path;
  if (s.run.rank == 0) {
    json metadata = s.task->artifact_metadata();
    metadata["method"] = quant::MethodName(spec.quant.method);
    metadata["job"] = spec.name;
    metadata["steps"] = s.global_step;
    const quant::Artifact artifact =
        s.quant->Export(s.task->architecture_json(), metadata.dump());
    TERN_RETURN_IF_ERROR(quant::WriteArtifactFile(artifact, result.artifact_path));
    TERN_ASSIGN_OR_RETURN(const quant::Artifact reread, quant::ReadArtifactFile(result.artifact_path));
    TERN_ASSIGN_OR_RETURN(std::shared_ptr<torch::nn::Module> fresh,
                          s.task->BuildFromArchitecture(reread.architecture));
    TERN_RETURN_IF_ERROR(quant::LoadArtifactInto(reread, *fresh));
    result.bits_per_weight = reread.BitsPerTernaryWeight();
    result.artifact_bytes = static_cast<int64_t>(fs::file_size(result.artifact_path));
    // Rank 0 evaluates the re-loaded artifact on the whole final split alone
    // (detection also writes its detections in the COCO results format).
    EvalRequest request;
    request.split = EvalSplit::kTest;
    request.sharded = false;
    if (spec.task == "detection") {
      request.results_path = fs::path(result.artifact_path).replace_extension("").string() +
                             ".detections.json";
    }
    TERN_ASSIGN_OR_RETURN(result.artifact, s.task->Evaluate(*fresh, request));
  }
  result.wall_seconds = Seconds(start);
  result.images_per_second =
      result.wall_seconds > 0 ? static_cast<double>(s.global_step) * spec.optim.batch_size / result.wall_seconds : 0;
  if (s.run.rank == 0) {
    json finished = {{"fp", result.fp},
                     {"ternary", result.ternary},
                     {"artifact", result.artifact},
                     {"artifact_path", result.artifact_path},
                     {"artifact_bytes", result.artifact_bytes},
                     {"bits_per_weight", result.bits_per_weight},
                     {"steps", result.steps},
                     {"wall_seconds", result.wall_seconds},
                     {"images_per_second", result.images_per_second},
                     {"layers", LayerStatsJson(result.layers, 0)},
                     {"bn_recalibration_batches", final_bn_batches}};
    if (eval_split == "val") {
      finished["val"] = {{"fp", result.val_fp}, {"ternary", result.val_ternary}};
    }
    if (result.artifact.contains("results_path")) {
      finished["detections_path"] = result.artifact["results_path"];
    }
    events.Emit("finished", finished);
  }
  return result;
}

}  // namespace

StatusOr<TrainResult> RunTraining(const TrainerSpec& spec, const RunOptions& options,
                                  EventWriter& events) {
  Session s;
  s.spec = spec;
  s.run = options;
  s.lease = AgentLeaseWatch(options.lease_file);
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
  if (!result.ok() && !IsStoppedOnRequest(result.status())) {
    events.Emit("failed", {{"code", StatusCodeName(result.status().code())},
                           {"reason", result.status().message()},
                           {"step", s.global_step}});
  }
  return result;
}

namespace {

// The artifact's input normalization, which must have the dataset's channels.
StatusOr<Normalization> ArtifactNormalization(const json& metadata, size_t channels,
                                              const std::string& path) {
  const json* norm = metadata.is_object() && metadata.contains("normalization")
                         ? &metadata.at("normalization")
                         : nullptr;
  Normalization out;
  const auto read = [&](const char* key, std::vector<float>* values) {
    if (norm == nullptr || !norm->is_object() || !norm->contains(key)) return false;
    const json& v = norm->at(key);
    if (!v.is_array()) return false;
    for (const json& x : v) {
      if (!x.is_number()) return false;
      values->push_back(x.get<float>());
    }
    return true;
  };
  if (!read("mean", &out.mean) || !read("std", &out.std)) {
    return DataLossError(path + ": its metadata has no normalization {mean: [...], std: [...]}");
  }
  if (out.mean.size() != channels || out.std.size() != channels) {
    return FailedPreconditionError(
        path + " was trained on " + std::to_string(out.mean.size()) +
        "-channel images; the spec's dataset has " + std::to_string(channels) + " channels");
  }
  for (float v : out.std) {
    if (!(v > 0)) return DataLossError(path + ": its normalization has a std that is not > 0");
  }
  return out;
}

// The number of classes an architecture JSON names: a classifier's
// num_classes, a detector's category_ids; -1 when it names none.
int64_t ClassCount(const std::string& architecture) {
  const json j = json::parse(architecture, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return -1;
  if (j.contains("num_classes") && j["num_classes"].is_number_integer()) {
    return j["num_classes"].get<int64_t>();
  }
  if (j.contains("category_ids") && j["category_ids"].is_array()) {
    return static_cast<int64_t>(j["category_ids"].size());
  }
  return -1;
}

}  // namespace

StatusOr<json> EvaluateArtifact(const TrainerSpec& spec, const std::string& artifact_path,
                                EventWriter& events, const std::string& logits_path) {
  SetLogPrefix("[evaluate " + artifact_path + "] ");
  const Clock::time_point start = Clock::now();
  StatusOr<json> result = [&]() -> StatusOr<json> {
    TERN_RETURN_IF_ERROR(spec.Validate());
    TERN_ASSIGN_OR_RETURN(const std::string bytes, ReadFileToString(artifact_path));
    // A safetensors state dict holds weights only: the spec's model takes them.
    const bool weights_only = model_io::LooksLikeSafetensors(bytes);
    quant::Artifact artifact;
    if (!weights_only) {
      StatusOr<quant::Artifact> parsed = quant::ParseArtifact(bytes);
      if (!parsed.ok()) return parsed.status().WithContext(artifact_path);
      artifact = std::move(parsed).value();
    }
    const json metadata = json::parse(artifact.metadata, nullptr, /*allow_exceptions=*/false);
    // Metadata strings, "" when absent or not strings (no exception on odd files).
    const auto text = [&](const char* key) -> std::string {
      return metadata.is_object() && metadata.contains(key) && metadata.at(key).is_string()
                 ? metadata.at(key).get<std::string>()
                 : "";
    };
    std::string task = weights_only ? spec.task : text("task");
    if (task.empty()) task = "classification";  // artifacts before the field
    if (task != spec.task) {
      return FailedPreconditionError(artifact_path + " holds a " + task +
                                     " model; the spec's task is " + spec.task);
    }
    json metrics, init_from;
    TERN_RETURN_IF_ERROR(Guard("evaluation", [&]() -> Status {
      TERN_ASSIGN_OR_RETURN(const torch::Device device, PrepareDevice(spec));
      DistributedOptions alone;  // one process: no process group
      TERN_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, Communicator::Connect(alone));
      std::unique_ptr<TrainingTask> evaluator =
          MakeTask(TaskContextFor(spec, comm.get(), 0, 1, device));
      torch::manual_seed(spec.optim.seed);
      TERN_RETURN_IF_ERROR(evaluator->Load());
      EvalRequest request;
      request.split = EvalSplit::kTest;
      request.sharded = false;
      request.results_path = logits_path;
      if (weights_only) {  // the dataset's normalization, as training computes it
        std::shared_ptr<torch::nn::Module> model = evaluator->model();
        TERN_ASSIGN_OR_RETURN(
            const InitReport report,
            InitializeFrom(artifact_path, *model, ParseSourceNames(spec.model.init_from_names)));
        for (const InitReport::Skipped& skipped : report.skipped) {
          if (skipped.name.size() < 20 ||
              skipped.name.compare(skipped.name.size() - 20, 20, ".num_batches_tracked") != 0) {
            return FailedPreconditionError(artifact_path +
                                           " does not fill the spec's model: " + report.Summary());
          }
        }
        init_from = report.ToJson();
        TERN_ASSIGN_OR_RETURN(metrics, evaluator->Evaluate(*model, request));
        return OkStatus();
      }
      TERN_ASSIGN_OR_RETURN(
          const Normalization norm,
          ArtifactNormalization(metadata, evaluator->normalization().mean.size(), artifact_path));
      evaluator->set_normalization(norm);
      const int64_t model_classes = ClassCount(artifact.architecture);
      const int64_t data_classes = ClassCount(evaluator->architecture_json());
      if (model_classes != data_classes) {
        return FailedPreconditionError(artifact_path + " has " + std::to_string(model_classes) +
                                       " classes; the spec's dataset has " +
                                       std::to_string(data_classes));
      }
      TERN_ASSIGN_OR_RETURN(std::shared_ptr<torch::nn::Module> model,
                            evaluator->BuildFromArchitecture(artifact.architecture));
      TERN_RETURN_IF_ERROR(quant::LoadArtifactInto(artifact, *model));
      TERN_ASSIGN_OR_RETURN(metrics, evaluator->Evaluate(*model, request));
      return OkStatus();
    }));
    json evaluated = {{"artifact_path", artifact_path},
                      {"task", task},
                      {"method", text("method")},
                      {"metrics", metrics},
                      {"bits_per_weight", artifact.BitsPerTernaryWeight()},
                      {"seconds", Seconds(start)}};
    if (weights_only) evaluated["init_from"] = init_from;
    events.Emit("evaluated", evaluated);
    return evaluated;
  }();
  if (!result.ok()) {
    events.Emit("failed", {{"code", StatusCodeName(result.status().code())},
                           {"reason", result.status().message()}});
  }
  return result;
}

}  // namespace tern::trainer
