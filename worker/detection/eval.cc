#include "worker/detection/eval.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <unordered_map>
#include <utility>

#include "common/file_util.h"
#include "worker/detection/json_checks.h"

namespace tern::detection {
namespace {

using Json = nlohmann::json;
using internal::Checker;

constexpr int kNumIou = 10;  // IoU thresholds 0.50:0.05:0.95
constexpr int kIou50 = 0;
constexpr int kIou75 = 5;
constexpr int kNumRecall = 101;  // recall thresholds 0:0.01:1
constexpr int kNumAreas = 4;     // all, small, medium, large
constexpr double kAreaRanges[kNumAreas][2] = {
    {0, 1e10}, {0, 32 * 32}, {32 * 32, 96 * 96}, {96 * 96, 1e10}};

// np.linspace(start, stop, n) value by value: i * step + start, last = stop.
template <int N>
std::array<double, N> Linspace(double start, double stop) {
  std::array<double, N> out{};
  const double step = (stop - start) / (N - 1);
  for (int i = 0; i < N; ++i) out[i] = i * step + start;
  out[N - 1] = stop;
  return out;
}

// pycocotools' bbIou: a crowd ground-truth box divides by the detection area.
double Iou(const BoxXywh& dt, const BoxXywh& gt, bool crowd) {
  const double w = std::min(dt.x + dt.w, gt.x + gt.w) - std::max(dt.x, gt.x);
  if (w <= 0) return 0;
  const double h = std::min(dt.y + dt.h, gt.y + gt.h) - std::max(dt.y, gt.y);
  if (h <= 0) return 0;
  const double inter = w * h;
  const double uni = crowd ? dt.w * dt.h : dt.w * dt.h + gt.w * gt.h - inter;
  return uni > 0 ? inter / uni : 0;
}

// The ground truth and detections of one (category, image) pair.
struct Cell {
  std::vector<const CocoAnnotation*> gt;
  std::vector<const Detection*> dt;
};

// Everything one (category, area range) contributes, concatenated over images
// in image-id order (pycocotools' accumulate()).
struct Accumulator {
  std::vector<double> scores;                    // per detection
  std::array<std::vector<uint8_t>, kNumIou> tp;  // matched, per threshold
  std::array<std::vector<uint8_t>, kNumIou> ig;  // ignored, per threshold
  std::vector<int> rank;  // per detection: its position in its cell, 0-based
  int64_t num_gt = 0;     // non-ignored ground truth
};

// pycocotools' evaluateImg() for one cell and area range; appends to `acc`.
// `ious[d][g]`: detection d (score order) against ground truth g.
void MatchCell(const Cell& cell, const std::vector<std::vector<double>>& ious,
               const double range[2],
               const std::array<double, kNumIou>& thresholds,
               Accumulator* acc) {
  const size_t num_gt = cell.gt.size();
  const size_t num_dt = cell.dt.size();
  std::vector<uint8_t> gt_ignore(num_gt);
  for (size_t g = 0; g < num_gt; ++g) {
    const CocoAnnotation& a = *cell.gt[g];
    gt_ignore[g] = a.iscrowd || a.area < range[0] || a.area > range[1];
    if (!gt_ignore[g]) ++acc->num_gt;
  }
  // Non-ignored ground truth first, file order otherwise.
  std::vector<size_t> order(num_gt);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return gt_ignore[a] < gt_ignore[b];
  });

  for (size_t d = 0; d < num_dt; ++d) {
    acc->scores.push_back(cell.dt[d]->score);
    acc->rank.push_back(static_cast<int>(d));
  }
  for (int t = 0; t < kNumIou; ++t) {
    std::vector<uint8_t> gt_matched(num_gt, 0);
    for (size_t d = 0; d < num_dt; ++d) {
      double best = std::min(thresholds[t], 1 - 1e-10);
      int m = -1;  // position in `order`
      for (size_t j = 0; j < num_gt; ++j) {
        const size_t g = order[j];
        if (gt_matched[g] && !cell.gt[g]->iscrowd) continue;
        // Matched a regular box already; the rest are ignored ones.
        if (m > -1 && !gt_ignore[order[m]] && gt_ignore[g]) break;
        if (ious[d][g] < best) continue;
        best = ious[d][g];
        m = static_cast<int>(j);
      }
      bool matched = false;
      bool ignored = false;
      if (m > -1) {
        const size_t g = order[m];
        gt_matched[g] = 1;
        matched = true;
        ignored = gt_ignore[g];
      } else {
        const BoxXywh& b = cell.dt[d]->bbox;
        const double area = b.w * b.h;
        ignored = area < range[0] || area > range[1];
      }
      acc->tp[t].push_back(matched);
      acc->ig[t].push_back(ignored);
    }
  }
}

// Mean interpolated precision of one accumulator at threshold index t.
double AveragePrecision(const Accumulator& acc,
                        const std::vector<size_t>& order, int t,
                        const std::array<double, kNumRecall>& recall_points) {
  const size_t n = order.size();
  std::vector<double> recall(n), precision(n);
  double tp = 0, fp = 0;
  for (size_t i = 0; i < n; ++i) {
    const size_t d = order[i];
    if (!acc.ig[t][d]) (acc.tp[t][d] ? tp : fp) += 1;
    recall[i] = tp / static_cast<double>(acc.num_gt);
    precision[i] = tp + fp > 0 ? tp / (tp + fp) : 0;
  }
  for (size_t i = n; i-- > 1;) {
    precision[i - 1] = std::max(precision[i - 1], precision[i]);
  }
  double sum = 0;
  for (double r : recall_points) {
    const size_t i =
        std::lower_bound(recall.begin(), recall.end(), r) - recall.begin();
    if (i == n) break;  // recall r never reached: precision 0 from here on
    sum += precision[i];
  }
  return sum / kNumRecall;
}

// pycocotools' recall[t, k, a, m]: the share of the non-ignored ground truth
// matched by the first `max_det` detections of each cell.
double Recall(const Accumulator& acc, int t, int max_det) {
  int64_t tp = 0;
  for (size_t d = 0; d < acc.scores.size(); ++d) {
    if (acc.rank[d] < max_det && acc.tp[t][d] && !acc.ig[t][d]) ++tp;
  }
  return static_cast<double>(tp) / static_cast<double>(acc.num_gt);
}

std::optional<double> MeanOf(double sum, int count) {
  if (count == 0) return std::nullopt;
  return sum / count;
}

}  // namespace

Status EvalOptions::Validate() const {
  if (max_detections < 1) {
    return InvalidArgumentError("max_detections: must be >= 1, got " +
                                std::to_string(max_detections));
  }
  return OkStatus();
}

double BoxIou(const BoxXywh& a, const BoxXywh& b) { return Iou(a, b, false); }

StatusOr<CocoMetrics> EvaluateDetections(
    const CocoDataset& ground_truth, const std::vector<Detection>& detections,
    const EvalOptions& options) {
  TERN_RETURN_IF_ERROR(options.Validate());
  const CocoDataset& gt = ground_truth;
  for (size_t k = 1; k < gt.categories.size(); ++k) {
    if (gt.categories[k - 1].id >= gt.categories[k].id) {
      return InvalidArgumentError(
          "ground truth categories: not sorted by id or duplicate id " +
          std::to_string(gt.categories[k].id));
    }
  }
  // Images ranked by id: pycocotools concatenates per-image results in
  // sorted image-id order, which decides ties between equal scores.
  std::vector<int64_t> image_ids;
  for (const CocoImage& img : gt.images) image_ids.push_back(img.id);
  std::sort(image_ids.begin(), image_ids.end());
  std::unordered_map<int64_t, int> image_rank;
  for (size_t i = 0; i < image_ids.size(); ++i) {
    if (!image_rank.emplace(image_ids[i], static_cast<int>(i)).second) {
      return InvalidArgumentError("ground truth images: duplicate image id " +
                                  std::to_string(image_ids[i]));
    }
  }

  std::map<std::pair<int, int>, Cell> cells;  // (class, image rank)
  for (size_t i = 0; i < gt.annotations.size(); ++i) {
    const CocoAnnotation& a = gt.annotations[i];
    const auto img = image_rank.find(a.image_id);
    const int k = gt.ClassIndex(a.category_id);
    if (img == image_rank.end() || k < 0) {
      return InvalidArgumentError("ground truth annotations[" +
                                  std::to_string(i) +
                                  "]: unknown image or category id");
    }
    cells[{k, img->second}].gt.push_back(&a);
  }
  for (size_t i = 0; i < detections.size(); ++i) {
    const Detection& d = detections[i];
    const std::string path = "detections[" + std::to_string(i) + "]";
    const auto img = image_rank.find(d.image_id);
    if (img == image_rank.end()) {
      return InvalidArgumentError(path + ".image_id: unknown image id " +
                                  std::to_string(d.image_id));
    }
    const int k = gt.ClassIndex(d.category_id);
    if (k < 0) {
      return InvalidArgumentError(path + ".category_id: unknown category id " +
                                  std::to_string(d.category_id));
    }
    const BoxXywh& b = d.bbox;
    if (!std::isfinite(b.x) || !std::isfinite(b.y) || !std::isfinite(b.w) ||
        !std::isfinite(b.h) || b.w < 0 || b.h < 0) {
      return InvalidArgumentError(path +
                                  ".bbox: expected finite x, y and w, h >= 0");
    }
    if (!std::isfinite(d.score)) {
      return InvalidArgumentError(path + ".score: expected a finite number");
    }
    cells[{k, img->second}].dt.push_back(&d);
  }

  const auto iou_thresholds = Linspace<kNumIou>(0.5, 0.95);
  const auto recall_points = Linspace<kNumRecall>(0.0, 1.0);
  const size_t num_classes = gt.categories.size();
  std::vector<Accumulator> acc(num_classes * kNumAreas);
  for (auto& [key, cell] : cells) {
    // Highest score first (stable), at most max_detections.
    std::stable_sort(cell.dt.begin(), cell.dt.end(),
                     [](const Detection* a, const Detection* b) {
                       return a->score > b->score;
                     });
    if (cell.dt.size() > static_cast<size_t>(options.max_detections)) {
      cell.dt.resize(options.max_detections);
    }
    std::vector<std::vector<double>> ious(cell.dt.size(),
                                          std::vector<double>(cell.gt.size()));
    for (size_t d = 0; d < cell.dt.size(); ++d) {
      for (size_t g = 0; g < cell.gt.size(); ++g) {
        const CocoAnnotation& a = *cell.gt[g];
        const BoxXywh& box = options.clipped_ground_truth || !a.file_bbox
                                 ? a.bbox
                                 : *a.file_bbox;
        ious[d][g] = Iou(cell.dt[d]->bbox, box, a.iscrowd);
      }
    }
    for (int a = 0; a < kNumAreas; ++a) {
      MatchCell(cell, ious, kAreaRanges[a], iou_thresholds,
                &acc[key.first * kNumAreas + a]);
    }
  }

  // ap[k][a][t], or nullopt where class k has no ground truth in range a;
  // ar[k][a][m][t] likewise, for maxDets 1, 10 and max_detections.
  using PerIou = std::array<double, kNumIou>;
  const std::array<int, 3> max_dets = {
      std::min(1, options.max_detections), std::min(10, options.max_detections),
      options.max_detections};
  std::vector<std::array<std::optional<PerIou>, kNumAreas>> ap(num_classes);
  std::vector<std::array<std::optional<std::array<PerIou, 3>>, kNumAreas>> ar(
      num_classes);
  for (size_t k = 0; k < num_classes; ++k) {
    for (int a = 0; a < kNumAreas; ++a) {
      const Accumulator& ac = acc[k * kNumAreas + a];
      if (ac.num_gt == 0) continue;
      std::vector<size_t> order(ac.scores.size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](size_t i, size_t j) {
        return ac.scores[i] > ac.scores[j];
      });
      std::array<double, kNumIou> per_t{};
      for (int t = 0; t < kNumIou; ++t) {
        per_t[t] = AveragePrecision(ac, order, t, recall_points);
      }
      ap[k][a] = per_t;
      std::array<PerIou, 3> recall{};
      for (int m = 0; m < 3; ++m) {
        for (int t = 0; t < kNumIou; ++t) {
          recall[m][t] = Recall(ac, t, max_dets[m]);
        }
      }
      ar[k][a] = recall;
    }
  }

  // Means over the classes (and thresholds) that have ground truth.
  auto summarize = [&](int area, int first_t, int last_t) {
    double sum = 0;
    int count = 0;
    for (size_t k = 0; k < num_classes; ++k) {
      if (!ap[k][area]) continue;
      for (int t = first_t; t <= last_t; ++t) sum += (*ap[k][area])[t];
      count += last_t - first_t + 1;
    }
    return MeanOf(sum, count);
  };
  auto summarize_recall = [&](int area, int m) {
    double sum = 0;
    int count = 0;
    for (size_t k = 0; k < num_classes; ++k) {
      if (!ar[k][area]) continue;
      for (double v : (*ar[k][area])[m]) sum += v;
      count += kNumIou;
    }
    return MeanOf(sum, count);
  };
  CocoMetrics m;
  m.ap = summarize(0, 0, kNumIou - 1);
  m.ap50 = summarize(0, kIou50, kIou50);
  m.ap75 = summarize(0, kIou75, kIou75);
  m.ap_small = summarize(1, 0, kNumIou - 1);
  m.ap_medium = summarize(2, 0, kNumIou - 1);
  m.ap_large = summarize(3, 0, kNumIou - 1);
  m.ar1 = summarize_recall(0, 0);
  m.ar10 = summarize_recall(0, 1);
  m.ar100 = summarize_recall(0, 2);
  m.ar_small = summarize_recall(1, 2);
  m.ar_medium = summarize_recall(2, 2);
  m.ar_large = summarize_recall(3, 2);
  m.class_ap.resize(num_classes);
  for (size_t k = 0; k < num_classes; ++k) {
    if (!ap[k][0]) continue;
    double sum = 0;
    for (double v : *ap[k][0]) sum += v;
    m.class_ap[k] = sum / kNumIou;
  }
  return m;
}

std::string FormatCocoSummary(const CocoMetrics& m, int max_detections) {
  struct Line {
    bool ap;
    const char* iou;
    const char* area;
    int max_dets;
    const std::optional<double>* value;
  };
  const int n = max_detections;
  const Line lines[] = {
      {true, "0.50:0.95", "all", n, &m.ap},
      {true, "0.50", "all", n, &m.ap50},
      {true, "0.75", "all", n, &m.ap75},
      {true, "0.50:0.95", "small", n, &m.ap_small},
      {true, "0.50:0.95", "medium", n, &m.ap_medium},
      {true, "0.50:0.95", "large", n, &m.ap_large},
      {false, "0.50:0.95", "all", std::min(1, n), &m.ar1},
      {false, "0.50:0.95", "all", std::min(10, n), &m.ar10},
      {false, "0.50:0.95", "all", n, &m.ar100},
      {false, "0.50:0.95", "small", n, &m.ar_small},
      {false, "0.50:0.95", "medium", n, &m.ar_medium},
      {false, "0.50:0.95", "large", n, &m.ar_large},
  };
  std::string out;
  for (const Line& l : lines) {
    // pycocotools: ' {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ]
    // = {:0.3f}'
    char buf[160];
    std::snprintf(buf, sizeof(buf),
                  " %-18s %s @[ IoU=%-9s | area=%6s | maxDets=%3d ] = %0.3f\n",
                  l.ap ? "Average Precision" : "Average Recall",
                  l.ap ? "(AP)" : "(AR)", l.iou, l.area, l.max_dets,
                  l.value->value_or(-1.0));
    out += buf;
  }
  return out;
}

std::string CocoMetricsToJson(const CocoMetrics& m) {
  auto value = [](const std::optional<double>& v) {
    return v ? Json(*v) : Json(nullptr);
  };
  const Json out = {{"ap", value(m.ap)},
                    {"ap50", value(m.ap50)},
                    {"ap75", value(m.ap75)},
                    {"ap_small", value(m.ap_small)},
                    {"ap_medium", value(m.ap_medium)},
                    {"ap_large", value(m.ap_large)},
                    {"ar1", value(m.ar1)},
                    {"ar10", value(m.ar10)},
                    {"ar100", value(m.ar100)},
                    {"ar_small", value(m.ar_small)},
                    {"ar_medium", value(m.ar_medium)},
                    {"ar_large", value(m.ar_large)}};
  return out.dump();
}

std::string DetectionsToJson(const std::vector<Detection>& detections) {
  Json out = Json::array();
  for (const Detection& d : detections) {
    out.push_back({{"image_id", d.image_id},
                   {"category_id", d.category_id},
                   {"bbox", {d.bbox.x, d.bbox.y, d.bbox.w, d.bbox.h}},
                   {"score", d.score}});
  }
  return out.dump() + "\n";
}

Status WriteDetectionsJson(const std::string& path,
                           const std::vector<Detection>& detections) {
  return WriteFileAtomically(path, DetectionsToJson(detections));
}

StatusOr<std::vector<Detection>> ParseDetectionsJson(
    std::string_view json, const std::string& source) {
  TERN_ASSIGN_OR_RETURN(const Json root, internal::ParseJson(json, source));
  const Checker c(source);
  if (!root.is_array()) {
    return c.Invalid("(root)",
                     std::string("expected an array, got ") + root.type_name());
  }
  std::vector<Detection> out;
  out.reserve(root.size());
  for (size_t i = 0; i < root.size(); ++i) {
    const Json& e = root[i];
    const std::string path = "[" + std::to_string(i) + "]";
    if (!e.is_object()) return c.Invalid(path, "expected an object");
    Detection d;
    TERN_ASSIGN_OR_RETURN(d.image_id, c.Int(e, path, "image_id"));
    TERN_ASSIGN_OR_RETURN(d.category_id, c.Int(e, path, "category_id"));
    double v[4];
    TERN_RETURN_IF_ERROR(c.Box(e, path, "bbox", v));
    if (v[2] < 0 || v[3] < 0) {
      return c.Invalid(path + ".bbox", "width and height must be >= 0");
    }
    d.bbox = BoxXywh{v[0], v[1], v[2], v[3]};
    TERN_ASSIGN_OR_RETURN(const Json* score, c.Member(e, path, "score"));
    TERN_ASSIGN_OR_RETURN(d.score, c.Number(*score, path + ".score"));
    out.push_back(d);
  }
  return out;
}

StatusOr<std::vector<Detection>> ReadDetectionsJson(const std::string& path) {
  TERN_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  return ParseDetectionsJson(text, path);
}

}  // namespace tern::detection
