// Image classification: IDX / CIFAR / image-folder data, ResNet classifiers,
// cross-entropy, top-1/top-5 evaluation.
#include <torch/torch.h>

#include <optional>

#include "common/file_util.h"
#include "quant/autocast.h"
#include "worker/trainer/data.h"
#include "worker/trainer/distributed.h"
#include "worker/trainer/models.h"
#include "worker/trainer/task.h"

namespace tern::trainer {
namespace {

using json = nlohmann::json;

// Seeds the BatchNorm re-estimation's batch order (xor the run's seed).
constexpr uint64_t kRecalibrationSalt = 0x6e2f1a9b3c5d7e81ULL;

// Appends a batch's labels and logits (float [b, classes]) to the
// predictions file's {"labels": [...], "logits": [[...], ...]}, in split order.
void AppendPredictions(const at::Tensor& logits, const at::Tensor& labels, json& out) {
  const at::Tensor l = logits.cpu().contiguous();
  const at::Tensor y = labels.cpu().contiguous();
  for (int64_t i = 0; i < l.size(0); ++i) {
    out["labels"].push_back(y[i].item<int64_t>());
    const float* row = l.data_ptr<float>() + i * l.size(1);
    out["logits"].push_back(std::vector<float>(row, row + l.size(1)));
  }
}

std::string ShapeString(const at::Tensor& t) {
  std::string out = "[";
  for (int64_t d = 0; d < t.dim(); ++d) out += (d ? ", " : "") + std::to_string(t.size(d));
  return out + "]";
}

class ClassificationTask : public TrainingTask {
 public:
  explicit ClassificationTask(const TaskContext& ctx) : ctx_(ctx), spec_(*ctx.spec) {}

  Status Load() override {
    DatasetOptions data;
    TERN_ASSIGN_OR_RETURN(data.kind, ParseDatasetKind(spec_.data.kind));
    data.path = spec_.data.path;
    data.val_fraction = spec_.data.val_fraction;
    data.seed = spec_.optim.seed;
    data.train_limit = spec_.data.max_train_examples;
    data.test_limit = spec_.data.max_eval_examples;
    data.image_size = spec_.data.input_size;
    TERN_ASSIGN_OR_RETURN(data_, LoadDatasets(data));
    norm_ = ComputeMeanStd(data_.train);
    arch_.arch = spec_.model.arch;
    arch_.in_channels = data_.train.images.size(1);
    arch_.num_classes = data_.train.num_classes;
    arch_.width_multiplier = spec_.model.width_multiplier;
    TERN_ASSIGN_OR_RETURN(model_, BuildClassifier(arch_));
    model_->to(ctx_.device);
    return OkStatus();
  }

  int64_t train_size() const override { return data_.train.images.size(0); }
  std::shared_ptr<torch::nn::Module> model() const override { return model_; }
  std::vector<std::string> output_layers() const override { return {}; }
  std::string architecture_json() const override { return arch_.ToJson(); }

  StatusOr<std::shared_ptr<torch::nn::Module>> BuildFromArchitecture(
      const std::string& text) const override {
    TERN_ASSIGN_OR_RETURN(const ModelArchitecture arch, ModelArchitecture::FromJson(text));
    TERN_ASSIGN_OR_RETURN(std::shared_ptr<Classifier> fresh, BuildClassifier(arch));
    fresh->to(ctx_.device);
    return std::shared_ptr<torch::nn::Module>(fresh);
  }

  const Normalization& normalization() const override { return norm_; }
  void set_normalization(const Normalization& norm) override { norm_ = norm; }

  json artifact_metadata() const override {
    return {{"task", "classification"},
            {"normalization", {{"mean", norm_.mean}, {"std", norm_.std}}}};
  }

  void StartTraining(const ShardedSampler& sampler) override {
    AugmentOptions augment;
    augment.random_crop = spec_.data.augment;
    // Flips suit objects and clothes, not digits.
    augment.horizontal_flip = spec_.data.augment && (spec_.data.kind != "idx" ||
                                                     spec_.data.path.find("fashion") !=
                                                         std::string::npos);
    // On a GPU, batches travel as pinned uint8 and are normalized there.
    BatchFormat format;
    format.raw_bytes = format.pin_memory = ctx_.device.is_cuda();
    if (format.raw_bytes) {
      device_norm_ = MakeNormalizationTensors(norm_, data_.train.channels(), ctx_.device);
    }
    loader_ = std::make_unique<BatchLoader>(data_.train, sampler, norm_, augment, /*train=*/true,
                                            spec_.optim.seed, spec_.data.num_workers,
                                            /*prefetch=*/4, format);
  }

  void StartEpoch(int64_t epoch, int64_t first_step) override {
    loader_->StartEpoch(epoch, first_step);
  }

  Status NextBatch() override {
    std::optional<Batch> batch = loader_->Next();
    if (!batch) return InternalError("data loader ended inside an epoch");
    at::Tensor images = batch->images.to(ctx_.device, /*non_blocking=*/true);  // [b, C, H, W]
    if (images.scalar_type() == at::kByte) images = NormalizeBatch(images, device_norm_);
    if (ctx_.channels_last) images = images.contiguous(at::MemoryFormat::ChannelsLast);
    at::Tensor labels = batch->labels.to(ctx_.device, /*non_blocking=*/true);  // [b]
    if (ctx_.static_batches && images_.defined()) {
      if (images.sizes() != images_.sizes() || labels.sizes() != labels_.sizes()) {
        return InternalError("static batches: batch shape changed from " +
                             ShapeString(images_) + " to " + ShapeString(images));
      }
      images_.copy_(images, /*non_blocking=*/true);
      labels_.copy_(labels, /*non_blocking=*/true);
    } else {
      images_ = images;
      labels_ = labels;
    }
    return OkStatus();
  }

  Status BeginStep() override { return OkStatus(); }

  at::Tensor MicroBatchLoss(int m, int micro) override {
    const at::Tensor x = images_.chunk(micro)[m];
    const at::Tensor y = labels_.chunk(micro)[m];
    at::Tensor logits;
    {
      quant::Bf16Autocast autocast(at::kCUDA, ctx_.bf16);
      logits = model_->forward(x);  // [b/M, classes]
    }
    return at::cross_entropy_loss(logits.to(at::kFloat), y);
  }

  StatusOr<int64_t> ForwardRecalibrationBatches(int64_t batches) override {
    // Batches of a sampler of its own (seeded from the run's seed), so the
    // training order is untouched and every method sees the same images.
    const ShardedSampler sampler(train_size(), spec_.optim.batch_size, ctx_.rank, ctx_.world_size,
                                 spec_.optim.seed ^ kRecalibrationSalt,
                                 /*shuffle=*/true);
    const NormalizationTensors norm =
        MakeNormalizationTensors(norm_, data_.train.channels(), ctx_.device);
    torch::NoGradGuard no_grad;
    for (int64_t k = 0; k < batches; ++k) {
      const std::vector<int64_t> rows =
          sampler.Indices(k / sampler.steps_per_epoch(), k % sampler.steps_per_epoch());
      const at::Tensor index = at::tensor(rows, at::kLong);
      at::Tensor x = NormalizeBatch(data_.train.images.index_select(0, index).to(ctx_.device),
                                    norm);  // [b, C, H, W], as evaluation sees it
      if (ctx_.channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
      model_->forward(x);
    }
    return batches;
  }

  std::string eval_split_name() const override {
    return data_.val.images.size(0) > 0 ? "val" : "test";
  }

  // Loss, top-1 and top-5 over the split.
  StatusOr<json> Evaluate(torch::nn::Module& module, const EvalRequest& request) override {
    auto* model = dynamic_cast<Classifier*>(&module);
    if (model == nullptr) return InternalError("classification: the model is not a classifier");
    const ImageDataset& data = request.split == EvalSplit::kTest || data_.val.images.size(0) == 0
                                   ? data_.test
                                   : data_.val;
    const int rank = request.sharded ? ctx_.rank : 0;
    const int world = request.sharded ? ctx_.world_size : 1;
    torch::NoGradGuard no_grad;
    model->eval();
    // [loss sum, top-1 correct, top-5 correct, count]
    at::Tensor totals = at::zeros({4}, at::kDouble);
    json predictions = {{"labels", json::array()}, {"logits", json::array()}};  // results_path
    for (const auto& [begin, end] : EvalRanges(data.images.size(0), /*batch=*/512, rank, world)) {
      const at::Tensor x = MakeEvalBatch(data, begin, end, norm_).to(ctx_.device);
      const at::Tensor y = data.labels.slice(0, begin, end).to(ctx_.device);
      const at::Tensor logits = model->forward(x).to(at::kFloat);
      const int64_t k = std::min<int64_t>(5, logits.size(1));
      const at::Tensor top = std::get<1>(logits.topk(k, 1));
      const at::Tensor hit = top.eq(y.unsqueeze(1));
      totals[0] += at::cross_entropy_loss(logits, y, {}, at::Reduction::Sum).item<double>();
      totals[1] += hit.select(1, 0).sum().item<double>();
      totals[2] += hit.any(1).sum().item<double>();
      totals[3] += static_cast<double>(end - begin);
      if (!request.results_path.empty()) AppendPredictions(logits, y, predictions);
    }
    model->train();
    if (request.sharded) {
      if (ctx_.device.is_cuda()) totals = totals.to(ctx_.device);
      TERN_RETURN_IF_ERROR(ctx_.comm->AllReduceSum(totals));
      totals = totals.cpu();
    }
    const double n = std::max(1.0, totals[3].item<double>());
    json metrics = {{"loss", totals[0].item<double>() / n},
                    {"top1", totals[1].item<double>() / n},
                    {"top5", totals[2].item<double>() / n},
                    {"examples", static_cast<int64_t>(totals[3].item<double>())}};
    if (!request.results_path.empty()) {
      TERN_RETURN_IF_ERROR(WriteFileAtomically(request.results_path, predictions.dump()));
      metrics["results_path"] = request.results_path;
    }
    return metrics;
  }

 private:
  TaskContext ctx_;
  const TrainerSpec& spec_;
  DatasetSplits data_;
  Normalization norm_;
  NormalizationTensors device_norm_;  // raw-byte batches only
  ModelArchitecture arch_;
  std::shared_ptr<Classifier> model_;
  std::unique_ptr<BatchLoader> loader_;
  at::Tensor images_, labels_;
};

}  // namespace

std::unique_ptr<TrainingTask> MakeClassificationTask(const TaskContext& ctx) {
  return std::make_unique<ClassificationTask>(ctx);
}

}  // namespace tern::trainer
