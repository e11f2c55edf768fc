// Detection pieces of the trainer: targets, box-aware augmentation, loader
// determinism, CenterNet shapes, loss and decoding, on a generated synthetic
// COCO set.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "quant/ternary_model.h"
#include "worker/detection/eval.h"
#include "worker/detection/synth.h"
#include "worker/trainer/detection_data.h"
#include "worker/trainer/detection_model.h"
#include "worker/trainer/image_decode.h"

namespace tern::trainer {
namespace {

namespace fs = std::filesystem;

class DetectionTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = testing::TempDir() + "/tern_detection_" + std::to_string(::getpid());
    fs::remove_all(dir_);
    detection::SynthOptions synth;
    synth.output_dir = dir_;
    synth.image_size = 64;
    synth.train_images = 24;
    synth.val_images = 8;
    synth.max_objects = 3;
    synth.seed = 7;
    ASSERT_TRUE(detection::WriteSynthCoco(synth).ok());
    DataConfig data;
    data.kind = "coco";
    data.path = dir_;
    auto splits = LoadDetectionSplits(data);
    ASSERT_TRUE(splits.ok()) << splits.status();
    splits_ = new DetectionSplits(std::move(*splits));
  }
  static void TearDownTestSuite() {
    delete splits_;
    splits_ = nullptr;
    fs::remove_all(dir_);
  }

  static DetectionLoaderOptions Options(bool augment) {
    DetectionLoaderOptions o;
    o.input_size = 64;
    o.num_classes = 4;
    o.augment = augment;
    o.seed = 11;
    o.norm.mean = {0.5f, 0.5f, 0.5f};
    o.norm.std = {0.25f, 0.25f, 0.25f};
    return o;
  }

  static std::string dir_;
  static DetectionSplits* splits_;
};

std::string DetectionTest::dir_;
DetectionSplits* DetectionTest::splits_ = nullptr;

// Box [x1, y1, x2, y2] in input pixels of object slot j of image i.
std::array<double, 4> TargetBox(const DetectionBatch& b, int64_t i, int64_t j) {
  const int64_t cells = b.heatmap.size(3);
  const int64_t idx = b.index[i][j].item<int64_t>();
  const double cx = (idx % cells + b.offset[i][j][0].item<float>()) * kDetectionStride;
  const double cy = (idx / cells + b.offset[i][j][1].item<float>()) * kDetectionStride;
  const double w = b.size[i][j][0].item<float>() * kDetectionStride;
  const double h = b.size[i][j][1].item<float>() * kDetectionStride;
  return {cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2};
}

TEST_F(DetectionTest, SplitsLimitsAndCategoryChecks) {
  EXPECT_EQ(splits_->train.records.size(), 24u);
  EXPECT_EQ(splits_->val.records.size(), 8u);
  DataConfig data;
  data.path = dir_;
  data.max_train_examples = 5;
  data.max_eval_examples = 2;
  auto limited = LoadDetectionSplits(data);
  ASSERT_TRUE(limited.ok()) << limited.status();
  EXPECT_EQ(limited->train.records.size(), 5u);
  EXPECT_EQ(limited->val.dataset.images.size(), 2u);
  for (const auto& a : limited->val.dataset.annotations) {
    EXPECT_TRUE(a.image_id == limited->val.records[0].image_id ||
                a.image_id == limited->val.records[1].image_id);
  }
  data.val_annotations = "annotations/missing.json";
  auto missing = LoadDetectionSplits(data);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("missing.json"), std::string::npos)
      << missing.status();
}

// dataset.val_fraction holds images out of the training annotations: a
// seeded subset, disjoint from what is trained on, with its own annotations,
// the same for a seed; the val annotations stay the final split.
TEST_F(DetectionTest, ValFractionHoldsOutASeededSubsetOfTrainingImages) {
  DataConfig data;
  data.path = dir_;
  data.val_fraction = 0.25;
  auto a = LoadDetectionSplits(data, /*seed=*/3);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->held_out.records.size(), 6u);  // 0.25 x 24
  EXPECT_EQ(a->train.records.size(), 18u);
  EXPECT_EQ(a->val.records.size(), 8u);
  std::set<int64_t> train_ids, held_ids;
  for (const auto& r : a->train.records) train_ids.insert(r.image_id);
  for (const auto& r : a->held_out.records) held_ids.insert(r.image_id);
  EXPECT_EQ(held_ids.size(), 6u);
  for (const int64_t id : held_ids) EXPECT_FALSE(train_ids.count(id)) << id;
  // Every training annotation is in exactly one part, with its image.
  size_t annotations = 0;
  for (const auto* part : {&a->train, &a->held_out}) {
    std::set<int64_t> ids;
    for (const auto& image : part->dataset.images) ids.insert(image.id);
    for (const auto& ann : part->dataset.annotations) EXPECT_TRUE(ids.count(ann.image_id));
    EXPECT_EQ(part->dataset.images.size(), part->records.size());
    EXPECT_EQ(part->dataset.categories.size(), 4u);
    annotations += part->dataset.annotations.size();
  }
  EXPECT_EQ(annotations, splits_->train.dataset.annotations.size());
  auto again = LoadDetectionSplits(data, 3);
  ASSERT_TRUE(again.ok());
  std::set<int64_t> again_ids;
  for (const auto& r : again->held_out.records) again_ids.insert(r.image_id);
  EXPECT_EQ(again_ids, held_ids);
  auto other = LoadDetectionSplits(data, 4);
  ASSERT_TRUE(other.ok());
  std::set<int64_t> other_ids;
  for (const auto& r : other->held_out.records) other_ids.insert(r.image_id);
  EXPECT_NE(other_ids, held_ids);
  // Nothing held out without the option; a single training image cannot be split.
  EXPECT_TRUE(splits_->held_out.records.empty());
  data.max_train_examples = 1;
  auto tiny = LoadDetectionSplits(data, 3);
  ASSERT_FALSE(tiny.ok());
  EXPECT_NE(tiny.status().message().find("dataset.val_fraction"), std::string::npos)
      << tiny.status();
}

// Without augmentation every object's target decodes back to its annotated
// box, and the heatmap peaks (exactly 1) at its centre cell.
TEST_F(DetectionTest, LetterboxTargetsDecodeToTheAnnotatedBoxes) {
  ShardedSampler sampler(24, 8, 0, 1, 1, /*shuffle=*/false);
  DetectionLoader loader(splits_->train, sampler, Options(false), 0, 1);
  auto batch = loader.Build(0, 0);
  ASSERT_TRUE(batch.ok()) << batch.status();
  int64_t objects = 0;
  for (int64_t i = 0; i < 8; ++i) {
    const auto& record = splits_->train.records[static_cast<size_t>(i)];
    const Placement p = Letterbox(record.width, record.height, 64);
    int64_t j = 0;
    for (const auto& object : record.objects) {
      ASSERT_EQ(batch->mask[i][j].item<float>(), 1.0f);
      const auto box = TargetBox(*batch, i, j);
      const detection::BoxXywh back =
          ToImageBox(p, record.width, record.height, box[0], box[1], box[2], box[3]);
      EXPECT_GT(detection::BoxIou(back, object.box), 0.999) << "image " << i << " object " << j;
      const int64_t idx = batch->index[i][j].item<int64_t>();
      EXPECT_EQ(batch->heatmap[i][object.class_index][idx / 16][idx % 16].item<float>(), 1.0f);
      ++j;
      ++objects;
    }
    for (; j < batch->mask.size(1); ++j) EXPECT_EQ(batch->mask[i][j].item<float>(), 0.0f);
  }
  EXPECT_EQ(batch->mask.sum().item<float>(), static_cast<float>(objects));
  EXPECT_EQ(batch->heatmap.eq(1).sum().item<int64_t>(), objects);  // no overlapping centres here
}

// With augmentation (flip, scale, crop) boxes move with the pixels: every
// kept target maps back into its image's annotated box, and the rendered
// pixel at a rectangle's centre has the source pixel's colour.
TEST_F(DetectionTest, AugmentedBoxesFollowThePixels) {
  ShardedSampler sampler(24, 24, 0, 1, 1, /*shuffle=*/false);
  DetectionLoader loader(splits_->train, sampler, Options(true), 0, 1);
  int flips = 0, checked_pixels = 0, kept = 0;
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    auto batch = loader.Build(epoch, 0);
    ASSERT_TRUE(batch.ok()) << batch.status();
    for (int64_t i = 0; i < 24; ++i) {
      const auto& record = splits_->train.records[static_cast<size_t>(i)];
      const Placement p = TrainPlacement(record, Options(true), epoch, i);
      flips += p.flip;
      ImageHeader header;
      auto source = DecodeImage(record.path, 3, &header);
      ASSERT_TRUE(source.ok()) << source.status();
      for (int64_t j = 0; j < batch->mask.size(1); ++j) {
        if (batch->mask[i][j].item<float>() == 0) continue;
        ++kept;
        const auto box = TargetBox(*batch, i, j);
        const detection::BoxXywh back =
            ToImageBox(p, record.width, record.height, box[0], box[1], box[2], box[3]);
        double best = 0;
        const detection::ObjectBox* match = nullptr;
        for (const auto& object : record.objects) {
          const double inter = detection::BoxIou(back, object.box);
          if (inter > best) best = inter, match = &object;
        }
        // Clipped boxes keep >= 30% of their area; unclipped ones match.
        ASSERT_NE(match, nullptr);
        EXPECT_GT(best, 0.29) << "epoch " << epoch << " image " << i;
        const bool inside = box[0] > 1 && box[1] > 1 && box[2] < 63 && box[3] < 63;
        if (inside) {
          EXPECT_GT(best, 0.97) << "epoch " << epoch << " image " << i;
        }
        if (!inside || match->class_index != 0) continue;  // rectangles: centre is filled
        const int sx = static_cast<int>(match->box.x + match->box.w / 2);
        const int sy = static_cast<int>(match->box.y + match->box.h / 2);
        const int u = static_cast<int>((box[0] + box[2]) / 2);
        const int v = static_cast<int>((box[1] + box[3]) / 2);
        for (int c = 0; c < 3; ++c) {
          const float src = (*source)[static_cast<size_t>(c * record.width * record.height +
                                                           sy * record.width + sx)] / 255.0f;
          const float rendered = batch->images[i][c][v][u].item<float>() * 0.25f + 0.5f;
          EXPECT_NEAR(rendered, src, 0.06) << "epoch " << epoch << " image " << i;
        }
        ++checked_pixels;
      }
    }
  }
  EXPECT_GT(flips, 10);
  EXPECT_LT(flips, 62);
  EXPECT_GT(kept, 40);
  EXPECT_GT(checked_pixels, 5);
}

TEST_F(DetectionTest, BatchesAreIdenticalForAnyThreadCount) {
  ShardedSampler sampler(24, 8, 0, 1, 5, /*shuffle=*/true);
  DetectionLoader inline_loader(splits_->train, sampler, Options(true), 0, 1);
  DetectionLoader threaded(splits_->train, sampler, Options(true), 2, 2);
  threaded.StartEpoch(1, 0);
  for (int64_t step = 0; step < 3; ++step) {
    auto a = inline_loader.Build(1, step);
    auto b = threaded.Next();
    ASSERT_TRUE(a.ok() && b.has_value() && b->ok());
    EXPECT_TRUE(a->images.equal((*b)->images));
    EXPECT_TRUE(a->heatmap.equal((*b)->heatmap));
    EXPECT_TRUE(a->index.equal((*b)->index));
    EXPECT_TRUE(a->size.equal((*b)->size));
  }
  EXPECT_FALSE(threaded.Next().has_value());
}

TEST_F(DetectionTest, CorruptImageIsAnErrorNamingTheFile) {
  detection::CocoSplit split = splits_->train;
  const std::string bad = dir_ + "/bad.png";
  {
    std::ofstream out(bad);
    out << "\x89PNG not really";
  }
  split.records[0].path = bad;
  ShardedSampler sampler(24, 8, 0, 1, 1, /*shuffle=*/false);
  DetectionLoader loader(split, sampler, Options(false), 0, 1);
  auto batch = loader.Build(0, 0);
  ASSERT_FALSE(batch.ok());
  EXPECT_NE(batch.status().message().find("bad.png"), std::string::npos) << batch.status();
}

DetectorArchitecture SmallArch(const std::string& backbone) {
  DetectorArchitecture arch;
  arch.backbone = backbone;
  arch.width_multiplier = 0.25;
  arch.input_size = 64;
  arch.category_ids = {1, 2, 3, 4};
  arch.category_names = {"a", "b", "c", "d"};
  return arch;
}

TEST(CenterNetTest, OutputShapesAndArchitectureRoundTrip) {
  for (const std::string backbone : {"resnet20", "resnet18"}) {
    auto net = BuildCenterNet(SmallArch(backbone));
    ASSERT_TRUE(net.ok()) << net.status();
    const CenterNetOutput out = (*net)->forward(torch::randn({2, 3, 64, 64}));
    EXPECT_EQ(out.heatmap.sizes(), (std::vector<int64_t>{2, 4, 16, 16})) << backbone;
    EXPECT_EQ(out.size.sizes(), (std::vector<int64_t>{2, 2, 16, 16}));
    EXPECT_EQ(out.offset.sizes(), (std::vector<int64_t>{2, 2, 16, 16}));
    // Heatmap starts at the prior 0.1.
    EXPECT_NEAR(torch::sigmoid(out.heatmap).mean().item<double>(), 0.1, 0.05);
    auto again = DetectorArchitecture::FromJson(SmallArch(backbone).ToJson());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->ToJson(), SmallArch(backbone).ToJson());
    // The backbone shares the classifier's parameter names (init_from).
    EXPECT_TRUE((*net)->named_parameters().contains("blocks.0.conv1.weight"));
    EXPECT_TRUE((*net)->named_parameters().contains("conv1.weight"));
  }
  DetectorArchitecture bad = SmallArch("resnet20");
  bad.input_size = 100;
  EXPECT_FALSE(BuildCenterNet(bad).ok());
  EXPECT_FALSE(DetectorArchitecture::FromJson(R"({"arch": "resnet20"})").ok());
}

TEST(CenterNetTest, PredictionLayersStayFullPrecision) {
  auto net = BuildCenterNet(SmallArch("resnet20"));
  ASSERT_TRUE(net.ok());
  auto quant = quant::TernaryModel::Attach(*net, quant::MakePreset(quant::Method::kHla),
                                           CenterNet::OutputLayers());
  ASSERT_TRUE(quant.ok()) << quant.status();
  for (const auto& s : (*quant)->Stats(false)) {
    const bool output = s.name == "heatmap_out" || s.name == "size_out" || s.name == "offset_out";
    EXPECT_EQ(s.quantized, !output && s.name != "conv1") << s.name;
  }
  EXPECT_FALSE(quant::TernaryModel::Attach(*net, quant::MakePreset(quant::Method::kHla),
                                           {"no_such_layer"})
                   .ok());
}

// A prediction that matches the targets has (almost) zero loss; a uniform
// one does not; gradients flow to every head.
TEST(CenterNetTest, LossIsSmallForThePerfectPredictionAndDecodesIt) {
  const int64_t cells = 16;
  at::Tensor heat = at::zeros({1, 2, cells, cells});
  heat[0][1][5][7] = 1;  // one object of class 1 centred in cell (x 7, y 5)
  const at::Tensor index = torch::tensor({{5 * cells + 7}}, at::kLong);
  const at::Tensor size = torch::tensor({{{3.0f, 2.0f}}});
  const at::Tensor offset = torch::tensor({{{0.25f, 0.5f}}});
  const at::Tensor mask = torch::ones({1, 1});
  CenterNetOutput perfect;
  perfect.heatmap = at::full({1, 2, cells, cells}, -20.0);
  perfect.heatmap[0][1][5][7] = 20;
  perfect.size = at::zeros({1, 2, cells, cells});
  perfect.size[0][0][5][7] = 3;
  perfect.size[0][1][5][7] = 2;
  perfect.offset = at::zeros({1, 2, cells, cells});
  perfect.offset[0][0][5][7] = 0.25;
  perfect.offset[0][1][5][7] = 0.5;
  const CenterNetLossSums good = CenterNetLoss(perfect, heat, index, size, offset, mask);
  EXPECT_LT(good.focal.item<double>(), 1e-3);
  EXPECT_LT(good.size.item<double>(), 1e-6);
  EXPECT_LT(good.offset.item<double>(), 1e-6);

  CenterNetOutput flat;
  flat.heatmap = torch::zeros({1, 2, cells, cells}, torch::requires_grad());
  flat.size = torch::zeros({1, 2, cells, cells}, torch::requires_grad());
  flat.offset = torch::zeros({1, 2, cells, cells}, torch::requires_grad());
  const CenterNetLossSums bad = CenterNetLoss(flat, heat, index, size, offset, mask);
  EXPECT_GT(bad.focal.item<double>(), 1.0);
  EXPECT_NEAR(bad.size.item<double>(), 5.0, 1e-6);
  EXPECT_NEAR(bad.offset.item<double>(), 0.75, 1e-6);
  (bad.focal + bad.size + bad.offset).backward();
  EXPECT_GT(flat.heatmap.grad().abs().sum().item<double>(), 0);
  EXPECT_GT(flat.size.grad()[0][0][5][7].abs().item<double>(), 0);
  EXPECT_EQ(flat.size.grad()[0][0][0][0].item<double>(), 0);

  const auto decoded = DecodeCenterNet(perfect, 5);
  ASSERT_EQ(decoded.size(), 1u);
  ASSERT_FALSE(decoded[0].empty());
  const InputDetection& top = decoded[0][0];
  EXPECT_EQ(top.class_index, 1);
  EXPECT_GT(top.score, 0.99);
  // Centre (7.25, 5.5) cells, size 3 x 2 cells, times the stride 4.
  EXPECT_NEAR(top.x1, 4 * (7.25 - 1.5), 1e-5);
  EXPECT_NEAR(top.y1, 4 * (5.5 - 1.0), 1e-5);
  EXPECT_NEAR(top.x2, 4 * (7.25 + 1.5), 1e-5);
  EXPECT_NEAR(top.y2, 4 * (5.5 + 1.0), 1e-5);
  for (size_t k = 1; k < decoded[0].size(); ++k) EXPECT_LT(decoded[0][k].score, 1e-6);
}

// The penalty-reduced focal loss on a Gaussian target, against the formula
// evaluated cell by cell in double precision: -(1 - p)^2 log p at the peak,
// -(1 - y)^4 p^2 log(1 - p) elsewhere (alpha 2, beta 4). Cells near the
// peak (0 < y < 1) are where the (1 - y)^beta factor matters: a loss that
// dropped it, or used another beta, is off by far more than rounding.
TEST(CenterNetTest, FocalLossOnAGaussianTargetFollowsTheFormula) {
  const int64_t cells = 12;
  at::Tensor heat = at::zeros({1, 2, cells, cells});
  for (int64_t yy = 0; yy < cells; ++yy) {
    for (int64_t xx = 0; xx < cells; ++xx) {
      const double d2 = static_cast<double>((xx - 6) * (xx - 6) + (yy - 4) * (yy - 4));
      heat[0][0][yy][xx] = std::exp(-d2 / (2 * 1.5 * 1.5));  // 1 at (6, 4)
    }
  }
  heat[0][1][2][9] = 1;  // a second class: a single-cell peak
  torch::manual_seed(3);
  CenterNetOutput out;
  out.heatmap = (torch::randn({1, 2, cells, cells}) * 2).requires_grad_();
  out.size = torch::zeros({1, 2, cells, cells});
  out.offset = torch::zeros({1, 2, cells, cells});
  const at::Tensor index = torch::tensor({{4 * cells + 6, 2 * cells + 9}}, at::kLong);
  const at::Tensor zeros = torch::zeros({1, 2, 2});
  const CenterNetLossSums sums =
      CenterNetLoss(out, heat, index, zeros, zeros, torch::ones({1, 2}));

  const at::Tensor detached = out.heatmap.detach();
  const auto logits = detached.accessor<float, 4>();
  const auto target = heat.accessor<float, 4>();
  double expected = 0, near_peak = 0;
  int soft_cells = 0;
  for (int64_t c = 0; c < 2; ++c) {
    for (int64_t yy = 0; yy < cells; ++yy) {
      for (int64_t xx = 0; xx < cells; ++xx) {
        const double p =
            std::clamp(1 / (1 + std::exp(-static_cast<double>(logits[0][c][yy][xx]))), 1e-4,
                       1 - 1e-4);
        const double y = target[0][c][yy][xx];
        if (y == 1) {
          expected -= std::pow(1 - p, 2) * std::log(p);
        } else {
          const double term = -std::pow(1 - y, 4) * std::pow(p, 2) * std::log(1 - p);
          expected += term;
          if (y > 0.1) {
            near_peak += term;
            ++soft_cells;
          }
        }
      }
    }
  }
  EXPECT_GT(soft_cells, 10);
  EXPECT_NEAR(sums.focal.item<double>(), expected, 1e-5 * expected);
  // Not vacuous: without the (1 - y)^4 reduction the near-peak cells would
  // add a visible amount (their unreduced penalty is many times larger).
  double unreduced = 0;
  for (int64_t yy = 0; yy < cells; ++yy) {
    for (int64_t xx = 0; xx < cells; ++xx) {
      const double y = target[0][0][yy][xx];
      if (y <= 0.1 || y == 1) continue;
      const double p = std::clamp(
          1 / (1 + std::exp(-static_cast<double>(logits[0][0][yy][xx]))), 1e-4, 1 - 1e-4);
      unreduced -= std::pow(p, 2) * std::log(1 - p);
    }
  }
  EXPECT_GT(unreduced - near_peak, 1e-3 * expected);

  // The gradient at a near-peak cell follows the same formula:
  // d/dz [-(1 - y)^4 p^2 log(1 - p)] = (1 - y)^4 (p^3 - 2 p^2 (1 - p) log(1 - p))
  // with p = sigmoid(z) inside the clamp.
  sums.focal.backward();
  const int64_t gx = 7, gy = 4;  // next to the peak
  const double y = target[0][0][gy][gx];
  ASSERT_GT(y, 0.5);
  ASSERT_LT(y, 1);
  const double p = 1 / (1 + std::exp(-static_cast<double>(logits[0][0][gy][gx])));
  ASSERT_GT(p, 1e-4);
  ASSERT_LT(p, 1 - 1e-4);
  const double grad =
      std::pow(1 - y, 4) * (std::pow(p, 3) - 2 * p * p * (1 - p) * std::log(1 - p));
  EXPECT_NEAR(out.heatmap.grad()[0][0][gy][gx].item<double>(), grad, 1e-6 + 1e-4 * std::abs(grad));
}

TEST(CenterNetTest, LetterboxInverseMapsBack) {
  const Placement p = Letterbox(200, 100, 64);  // scale 0.32, dy 16
  EXPECT_DOUBLE_EQ(p.scale, 0.32);
  EXPECT_DOUBLE_EQ(p.dx, 0);
  EXPECT_DOUBLE_EQ(p.dy, 16);
  const detection::BoxXywh box = ToImageBox(p, 200, 100, 3.2, 16 + 3.2, 6.4, 16 + 9.6);
  EXPECT_NEAR(box.x, 10, 1e-9);
  EXPECT_NEAR(box.y, 10, 1e-9);
  EXPECT_NEAR(box.w, 10, 1e-9);
  EXPECT_NEAR(box.h, 20, 1e-9);
  Placement flipped = p;
  flipped.flip = true;
  const detection::BoxXywh mirrored = ToImageBox(flipped, 200, 100, 3.2, 16 + 3.2, 6.4, 16 + 9.6);
  EXPECT_NEAR(mirrored.x, 180, 1e-9);
  EXPECT_NEAR(mirrored.w, 10, 1e-9);
}

}  // namespace
}  // namespace tern::trainer
