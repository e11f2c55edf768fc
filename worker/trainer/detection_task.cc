// Object detection: COCO-format data, CenterNet on a ResNet backbone, the
// COCO-protocol AP of worker/detection/eval.h.
#include <torch/torch.h>

#include <optional>

#include "common/logging.h"
#include "worker/detection/eval.h"
#include "quant/autocast.h"
#include "worker/trainer/detection_data.h"
#include "worker/trainer/detection_model.h"
#include "worker/trainer/distributed.h"
#include "worker/trainer/task.h"

namespace tern::trainer {
namespace {

using json = nlohmann::json;

constexpr int kNormalizationImages = 256;  // images the mean/std come from
constexpr int kEvalBatch = 32;
constexpr double kSizeLossWeight = 0.1;    // CenterNet's lambda_size
constexpr uint64_t kRecalibrationSalt = 0x6465745f626e7265ULL;  // "det_bnre"

json OptionalJson(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

class DetectionTask : public TrainingTask {
 public:
  explicit DetectionTask(const TaskContext& ctx) : ctx_(ctx), spec_(*ctx.spec) {}

  Status Load() override {
    TERN_ASSIGN_OR_RETURN(splits_, LoadDetectionSplits(spec_.data, spec_.optim.seed));
    TERN_ASSIGN_OR_RETURN(norm_, DetectionMeanStd(splits_.train, kNormalizationImages));
    arch_.backbone = spec_.model.arch;
    arch_.head = spec_.model.head;
    arch_.in_channels = 3;
    arch_.width_multiplier = spec_.model.width_multiplier;
    arch_.input_size = spec_.data.input_size > 0 ? spec_.data.input_size : 512;
    for (const auto& category : splits_.train.dataset.categories) {
      arch_.category_ids.push_back(category.id);
      arch_.category_names.push_back(category.name);
    }
    TERN_ASSIGN_OR_RETURN(model_, BuildCenterNet(arch_));
    model_->to(ctx_.device);
    TERN_LOG(INFO) << "detection: " << splits_.train.records.size() << " training, "
                   << splits_.held_out.records.size() << " held-out validation and "
                   << splits_.val.records.size() << " val-annotation images, "
                   << arch_.num_classes() << " classes, input " << arch_.input_size;
    return OkStatus();
  }

  int64_t train_size() const override {
    return static_cast<int64_t>(splits_.train.records.size());
  }
  std::shared_ptr<torch::nn::Module> model() const override { return model_; }
  std::vector<std::string> output_layers() const override { return CenterNet::OutputLayers(); }
  std::string architecture_json() const override { return arch_.ToJson(); }

  StatusOr<std::shared_ptr<torch::nn::Module>> BuildFromArchitecture(
      const std::string& text) const override {
    TERN_ASSIGN_OR_RETURN(const DetectorArchitecture arch, DetectorArchitecture::FromJson(text));
    TERN_ASSIGN_OR_RETURN(std::shared_ptr<CenterNet> fresh, BuildCenterNet(arch));
    fresh->to(ctx_.device);
    return std::shared_ptr<torch::nn::Module>(fresh);
  }

  const Normalization& normalization() const override { return norm_; }
  void set_normalization(const Normalization& norm) override { norm_ = norm; }

  json artifact_metadata() const override {
    return {{"task", "detection"},
            {"output_stride", kDetectionStride},
            {"normalization", {{"mean", norm_.mean}, {"std", norm_.std}}}};
  }

  void StartTraining(const ShardedSampler& sampler) override {
    DetectionLoaderOptions options;
    options.input_size = static_cast<int>(arch_.input_size);
    options.num_classes = static_cast<int>(arch_.num_classes());
    options.augment = spec_.data.augment;
    options.seed = spec_.optim.seed;
    options.norm = norm_;
    options.pin_memory = ctx_.device.is_cuda();
    loader_ = std::make_unique<DetectionLoader>(splits_.train, sampler, options,
                                                spec_.data.num_workers, /*prefetch=*/4);
  }

  void StartEpoch(int64_t epoch, int64_t first_step) override {
    loader_->StartEpoch(epoch, first_step);
  }

  Status NextBatch() override {
    std::optional<StatusOr<DetectionBatch>> next = loader_->Next();
    if (!next) return InternalError("data loader ended inside an epoch");
    if (!next->ok()) return next->status();
    DetectionBatch& batch = **next;
    const auto to = [&](const at::Tensor& t) { return t.to(ctx_.device, /*non_blocking=*/true); };
    images_ = to(batch.images);
    if (ctx_.channels_last) images_ = images_.contiguous(at::MemoryFormat::ChannelsLast);
    heatmap_ = to(batch.heatmap);
    index_ = to(batch.index);
    size_ = to(batch.size);
    offset_ = to(batch.offset);
    mask_ = to(batch.mask);
    local_objects_ = batch.mask.sum().item<double>();  // on the CPU: no device sync
    return OkStatus();
  }

  // The loss is normalized by the number of objects in the whole global
  // batch, so every rank needs the total.
  Status BeginStep() override {
    at::Tensor objects = at::full({1}, local_objects_, at::kDouble);
    if (ctx_.comm->connected()) {
      if (ctx_.device.is_cuda()) objects = objects.to(ctx_.device);  // NCCL needs it there
      TERN_RETURN_IF_ERROR(ctx_.comm->AllReduceSum(objects));
    }
    global_objects_ = objects.item<double>();
    return OkStatus();
  }

  at::Tensor MicroBatchLoss(int m, int micro) override {
    const auto part = [&](const at::Tensor& t) { return t.chunk(micro)[m]; };
    CenterNetOutput out;
    {
      quant::Bf16Autocast autocast(at::kCUDA, ctx_.bf16);
      out = model_->forward(part(images_));
    }
    const CenterNetLossSums sums =
        CenterNetLoss(out, part(heatmap_), part(index_), part(size_), part(offset_), part(mask_));
    const at::Tensor total = sums.focal + kSizeLossWeight * sums.size + sums.offset;
    // Mean over micro-batches and ranks = sum over the global batch / objects.
    return total * (static_cast<double>(micro) * ctx_.world_size /
                    std::max(1.0, global_objects_));
  }

  // Unaugmented letterboxed training images, as evaluation renders them, in
  // batches of a sampler of its own (seeded from the run's seed): the
  // training order is untouched and every method sees the same images.
  StatusOr<int64_t> ForwardRecalibrationBatches(int64_t batches) override {
    const ShardedSampler sampler(train_size(), spec_.optim.batch_size, ctx_.rank, ctx_.world_size,
                                 spec_.optim.seed ^ kRecalibrationSalt, /*shuffle=*/true);
    DetectionLoaderOptions options;
    options.input_size = static_cast<int>(arch_.input_size);
    options.num_classes = static_cast<int>(arch_.num_classes());
    options.augment = false;
    options.seed = spec_.optim.seed;
    options.norm = norm_;
    const DetectionLoader loader(splits_.train, sampler, options, /*workers=*/0, /*prefetch=*/1);
    torch::NoGradGuard no_grad;
    for (int64_t k = 0; k < batches; ++k) {
      TERN_ASSIGN_OR_RETURN(
          const DetectionBatch batch,
          loader.Build(k / sampler.steps_per_epoch(), k % sampler.steps_per_epoch()));
      at::Tensor x = batch.images.to(ctx_.device);
      if (ctx_.channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
      quant::Bf16Autocast autocast(at::kCUDA, ctx_.bf16);
      model_->forward(x);
    }
    return batches;
  }

  // job.proto's EpochMetrics.eval_split: "val" with images held out of the
  // training annotations, else "test" (the val annotations, the final split).
  std::string eval_split_name() const override {
    return splits_.held_out.records.empty() ? "test" : "val";
  }

  // COCO AP of `module` on the held-out split (EvalSplit::kEval, when there
  // is one) or the val annotations. Sharded: each rank decodes its images
  // and the detections are summed into one table; rank 0 scores.
  StatusOr<json> Evaluate(torch::nn::Module& module, const EvalRequest& request) override {
    auto* model = dynamic_cast<CenterNet*>(&module);
    if (model == nullptr) return InternalError("detection: the model is not a CenterNet");
    const detection::CocoSplit& split =
        request.split == EvalSplit::kTest || splits_.held_out.records.empty() ? splits_.val
                                                                              : splits_.held_out;
    const int64_t images = static_cast<int64_t>(split.records.size());
    const int max_det = spec_.model.max_detections;
    const int size = static_cast<int>(arch_.input_size);
    const int rank = request.sharded ? ctx_.rank : 0;
    const int world = request.sharded ? ctx_.world_size : 1;
    // [image, detection, (x, y, w, h, score, class + 1)]; class 0 = empty.
    at::Tensor table = at::zeros({images, max_det, 6}, at::kFloat);
    float* cells = table.data_ptr<float>();
    torch::NoGradGuard no_grad;
    model->eval();
    for (const auto& [begin, end] : EvalRanges(images, kEvalBatch, rank, world)) {
      at::Tensor x = at::empty({end - begin, 3, size, size}, at::kFloat);
      std::vector<Placement> placements;
      for (int64_t i = begin; i < end; ++i) {
        const auto& record = split.records[static_cast<size_t>(i)];
        placements.push_back(Letterbox(record.width, record.height, size));
        const Status rendered = RenderImage(record, placements.back(), norm_, size,
                                            x.data_ptr<float>() + (i - begin) * 3 * size * size);
        if (!rendered.ok()) {
          model->train();
          return rendered;
        }
      }
      x = x.to(ctx_.device);
      if (ctx_.channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
      CenterNetOutput out;
      {
        quant::Bf16Autocast autocast(at::kCUDA, ctx_.bf16);
        out = model->forward(x);
      }
      const auto decoded = DecodeCenterNet(out, max_det);
      for (int64_t i = begin; i < end; ++i) {
        const auto& record = split.records[static_cast<size_t>(i)];
        const auto& dets = decoded[static_cast<size_t>(i - begin)];
        for (size_t j = 0; j < dets.size(); ++j) {
          const auto& d = dets[j];
          const detection::BoxXywh box = ToImageBox(placements[static_cast<size_t>(i - begin)],
                                                    record.width, record.height, d.x1, d.y1,
                                                    d.x2, d.y2);
          float* row = cells + (i * max_det + static_cast<int64_t>(j)) * 6;
          row[0] = static_cast<float>(box.x);
          row[1] = static_cast<float>(box.y);
          row[2] = static_cast<float>(box.w);
          row[3] = static_cast<float>(box.h);
          row[4] = d.score;
          row[5] = static_cast<float>(d.class_index + 1);
        }
      }
    }
    model->train();
    if (request.sharded) {
      if (ctx_.device.is_cuda()) table = table.to(ctx_.device);
      TERN_RETURN_IF_ERROR(ctx_.comm->AllReduceSum(table));
      table = table.cpu().contiguous();
      cells = table.data_ptr<float>();
    }
    json metrics = {{"images", images}};
    if (request.sharded && ctx_.rank != 0) return metrics;  // rank 0 reports
    std::vector<detection::Detection> detections;
    for (int64_t i = 0; i < images; ++i) {
      for (int64_t j = 0; j < max_det; ++j) {
        const float* row = cells + (i * max_det + j) * 6;
        if (row[5] < 0.5f) continue;
        detection::Detection d;
        d.image_id = split.records[static_cast<size_t>(i)].image_id;
        d.category_id = arch_.category_ids[static_cast<size_t>(std::lround(row[5]) - 1)];
        d.bbox = detection::BoxXywh{row[0], row[1], row[2], row[3]};
        d.score = row[4];
        detections.push_back(d);
      }
    }
    detection::EvalOptions options;
    options.max_detections = max_det;
    TERN_ASSIGN_OR_RETURN(const detection::CocoMetrics m,
                          detection::EvaluateDetections(split.dataset, detections, options));
    metrics["ap"] = OptionalJson(m.ap);
    metrics["ap50"] = OptionalJson(m.ap50);
    metrics["ap75"] = OptionalJson(m.ap75);
    metrics["ap_small"] = OptionalJson(m.ap_small);
    metrics["ap_medium"] = OptionalJson(m.ap_medium);
    metrics["ap_large"] = OptionalJson(m.ap_large);
    metrics["ar1"] = OptionalJson(m.ar1);
    metrics["ar10"] = OptionalJson(m.ar10);
    metrics["ar100"] = OptionalJson(m.ar100);
    metrics["ar_small"] = OptionalJson(m.ar_small);
    metrics["ar_medium"] = OptionalJson(m.ar_medium);
    metrics["ar_large"] = OptionalJson(m.ar_large);
    metrics["detections"] = detections.size();
    if (!request.results_path.empty()) {
      TERN_RETURN_IF_ERROR(detection::WriteDetectionsJson(request.results_path, detections));
      metrics["results_path"] = request.results_path;
    }
    return metrics;
  }

 private:
  TaskContext ctx_;
  const TrainerSpec& spec_;
  DetectionSplits splits_;
  Normalization norm_;
  DetectorArchitecture arch_;
  std::shared_ptr<CenterNet> model_;
  std::unique_ptr<DetectionLoader> loader_;
  at::Tensor images_, heatmap_, index_, size_, offset_, mask_;
  double local_objects_ = 0;   // this rank's batch
  double global_objects_ = 0;  // the global batch
};

}  // namespace

std::unique_ptr<TrainingTask> MakeDetectionTask(const TaskContext& ctx) {
  return std::make_unique<DetectionTask>(ctx);
}

}  // namespace tern::trainer
