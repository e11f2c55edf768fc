#include "worker/trainer/detection_model.h"

#include <torch/nn/init.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/torch.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "common/check.h"
#include "worker/trainer/detection_data.h"

namespace tern::trainer {
namespace {

namespace nn = torch::nn;
using json = nlohmann::json;

constexpr double kHeatmapPriorBias = -2.19;  // sigmoid^-1(0.1)

nn::Conv2d Conv(int64_t in, int64_t out, int64_t kernel, bool bias) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, kernel).padding(kernel / 2).bias(bias));
}

ModelArchitecture TrunkArchitecture(const DetectorArchitecture& arch) {
  ModelArchitecture trunk;
  trunk.arch = arch.backbone;
  trunk.in_channels = arch.in_channels;
  trunk.num_classes = std::max<int64_t>(2, arch.num_classes());
  trunk.width_multiplier = arch.width_multiplier;
  return trunk;
}

}  // namespace

std::string DetectorArchitecture::ToJson() const {
  return json{{"task", "detection"},
              {"backbone", backbone},
              {"head", head},
              {"in_channels", in_channels},
              {"width_multiplier", width_multiplier},
              {"input_size", input_size},
              {"category_ids", category_ids},
              {"category_names", category_names}}
      .dump();
}

StatusOr<DetectorArchitecture> DetectorArchitecture::FromJson(const std::string& text) {
  const json j = json::parse(text, nullptr, false);
  auto bad = [&](const std::string& what) {
    return InvalidArgumentError("detector architecture: " + what + " in " + text.substr(0, 200));
  };
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  if (j.value("task", "") != "detection") return bad("task is not \"detection\"");
  DetectorArchitecture a;
  try {
    a.backbone = j.at("backbone").get<std::string>();
    a.head = j.at("head").get<std::string>();
    a.in_channels = j.at("in_channels").get<int64_t>();
    a.width_multiplier = j.at("width_multiplier").get<double>();
    a.input_size = j.at("input_size").get<int64_t>();
    a.category_ids = j.at("category_ids").get<std::vector<int64_t>>();
    a.category_names = j.at("category_names").get<std::vector<std::string>>();
  } catch (const json::exception& e) {
    return bad(std::string("missing or mistyped field (") + e.what() + ")");
  }
  return a;
}

CenterNet::CenterNet(const DetectorArchitecture& arch) {
  StatusOr<ResNetTrunk> trunk = ResNetTrunk::Register(*this, TrunkArchitecture(arch));
  TERN_CHECK(trunk.ok()) << trunk.status().message();
  trunk_ = std::move(*trunk);
  const int64_t width =
      std::max<int64_t>(8, static_cast<int64_t>(std::lround(64 * arch.width_multiplier)));
  const auto& strides = trunk_.stage_strides();
  while (first_stage_ < strides.size() && strides[first_stage_] < kDetectionStride) {
    ++first_stage_;
  }
  TERN_CHECK(first_stage_ < strides.size());
  auto laterals = register_module("laterals", nn::ModuleList());
  auto lateral_bns = register_module("lateral_bns", nn::ModuleList());
  for (size_t s = first_stage_; s < strides.size(); ++s) {
    laterals_.push_back(Conv(trunk_.stage_channels()[s], width, 1, /*bias=*/false));
    lateral_bns_.push_back(nn::BatchNorm2d(width));
    laterals->push_back(laterals_.back());
    lateral_bns->push_back(lateral_bns_.back());
  }
  smooth_ = register_module("smooth", Conv(width, width, 3, /*bias=*/false));
  smooth_bn_ = register_module("smooth_bn", nn::BatchNorm2d(width));
  heatmap_hidden_ = register_module("heatmap_hidden", Conv(width, width, 3, /*bias=*/true));
  size_hidden_ = register_module("size_hidden", Conv(width, width, 3, /*bias=*/true));
  offset_hidden_ = register_module("offset_hidden", Conv(width, width, 3, /*bias=*/true));
  heatmap_out_ = register_module("heatmap_out", Conv(width, arch.num_classes(), 1, true));
  size_out_ = register_module("size_out", Conv(width, 2, 1, /*bias=*/true));
  offset_out_ = register_module("offset_out", Conv(width, 2, 1, /*bias=*/true));
  trunk_.InitWeights();
  torch::NoGradGuard no_grad;
  heatmap_out_->bias.fill_(kHeatmapPriorBias);
}

std::vector<std::string> CenterNet::OutputLayers() {
  return {"heatmap_out", "size_out", "offset_out"};
}

CenterNetOutput CenterNet::forward(const at::Tensor& x) {
  const std::vector<at::Tensor> stages = trunk_.Stages(x);
  // Top-down: start at the deepest stage, upsample, add the next lateral.
  at::Tensor p;
  for (size_t s = stages.size(); s-- > first_stage_;) {
    const size_t l = s - first_stage_;
    const at::Tensor lateral = lateral_bns_[l](laterals_[l](stages[s]));
    p = p.defined() ? lateral + at::upsample_nearest2d(p, {lateral.size(2), lateral.size(3)})
                    : lateral;
  }
  p = at::relu(smooth_bn_(smooth_(at::relu(p))));
  return CenterNetOutput{heatmap_out_(at::relu(heatmap_hidden_(p))),
                         size_out_(at::relu(size_hidden_(p))),
                         offset_out_(at::relu(offset_hidden_(p)))};
}

StatusOr<std::shared_ptr<CenterNet>> BuildCenterNet(const DetectorArchitecture& arch) {
  if (arch.head != "centernet") {
    return InvalidArgumentError("model.head: unknown detection head '" + arch.head +
                                "' (centernet)");
  }
  if (arch.category_ids.empty() || arch.category_ids.size() != arch.category_names.size()) {
    return InvalidArgumentError("detector: needs one id and name per class (got " +
                                std::to_string(arch.category_ids.size()) + " ids, " +
                                std::to_string(arch.category_names.size()) + " names)");
  }
  if (arch.input_size < 64 || arch.input_size > 2048 || arch.input_size % 32 != 0) {
    return InvalidArgumentError("dataset.input_size: detection needs a multiple of 32 in "
                                "[64, 2048], got " + std::to_string(arch.input_size));
  }
  // Validates backbone, channels and width.
  TERN_RETURN_IF_ERROR(BuildClassifier(TrunkArchitecture(arch)).status());
  return std::make_shared<CenterNet>(arch);
}

namespace {

// [N, 2, h, w] gathered at index [N, K] -> [N, K, 2].
at::Tensor GatherAt(const at::Tensor& map, const at::Tensor& index) {
  const int64_t n = map.size(0), c = map.size(1);
  const at::Tensor flat = map.reshape({n, c, -1});
  return flat.gather(2, index.unsqueeze(1).expand({n, c, index.size(1)})).permute({0, 2, 1});
}

}  // namespace

CenterNetLossSums CenterNetLoss(const CenterNetOutput& out, const at::Tensor& heatmap,
                                const at::Tensor& index, const at::Tensor& size,
                                const at::Tensor& offset, const at::Tensor& mask) {
  const at::Tensor logits = out.heatmap.to(at::kFloat);
  const at::Tensor pred = at::sigmoid(logits).clamp(1e-4, 1 - 1e-4);
  const at::Tensor pos = heatmap.eq(1).to(at::kFloat);
  const at::Tensor neg_weight = at::pow(1 - heatmap, 4) * (1 - pos);
  const at::Tensor pos_term = at::log(pred) * at::pow(1 - pred, 2) * pos;
  const at::Tensor neg_term = at::log(1 - pred) * at::pow(pred, 2) * neg_weight;
  CenterNetLossSums sums;
  sums.focal = -(pos_term + neg_term).sum();
  const at::Tensor m = mask.unsqueeze(2);
  sums.size = ((GatherAt(out.size.to(at::kFloat), index) - size).abs() * m).sum();
  sums.offset = ((GatherAt(out.offset.to(at::kFloat), index) - offset).abs() * m).sum();
  return sums;
}

std::vector<std::vector<InputDetection>> DecodeCenterNet(const CenterNetOutput& out,
                                                         int max_detections) {
  torch::NoGradGuard no_grad;
  const at::Tensor heat = at::sigmoid(out.heatmap.to(at::kFloat));
  const int64_t n = heat.size(0), classes = heat.size(1), h = heat.size(2), w = heat.size(3);
  const at::Tensor peaks = at::max_pool2d(heat, {3, 3}, {1, 1}, {1, 1});
  const at::Tensor kept = heat * peaks.eq(heat).to(at::kFloat);
  const int64_t k = std::min<int64_t>(max_detections, classes * h * w);
  auto [scores, flat] = kept.reshape({n, -1}).topk(k, 1);  // sorted, descending
  const at::Tensor cell = flat.remainder(h * w);
  const at::Tensor sizes = GatherAt(out.size.to(at::kFloat), cell).cpu().contiguous();
  const at::Tensor offsets = GatherAt(out.offset.to(at::kFloat), cell).cpu().contiguous();
  scores = scores.cpu().contiguous();
  flat = flat.cpu().contiguous();
  const float* score = scores.data_ptr<float>();
  const int64_t* idx = flat.data_ptr<int64_t>();
  const float* wh = sizes.data_ptr<float>();
  const float* off = offsets.data_ptr<float>();
  std::vector<std::vector<InputDetection>> result(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t s = i * k + j;
      if (score[s] <= 0) continue;  // a suppressed cell
      const int64_t c = idx[s] / (h * w), pixel = idx[s] % (h * w);
      const float cx = (static_cast<float>(pixel % w) + off[2 * s]) * kDetectionStride;
      const float cy = (static_cast<float>(pixel / w) + off[2 * s + 1]) * kDetectionStride;
      const float bw = std::max(0.0f, wh[2 * s]) * kDetectionStride;
      const float bh = std::max(0.0f, wh[2 * s + 1]) * kDetectionStride;
      result[i].push_back(
          InputDetection{cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, score[s], c});
    }
  }
  return result;
}

}  // namespace tern::trainer
