#include "worker/detection/eval.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tests/worker/detection/test_util.h"

namespace tern::detection {
namespace {

// Expected values below are worked by hand from the COCO protocol: per
// IoU threshold, precision made monotone from the right and read at the 101
// recall points 0, 0.01, ..., 1 (0 where a recall point is never reached).

CocoAnnotation Ann(int64_t image_id, int64_t category_id, BoxXywh box,
                   bool crowd = false) {
  static int64_t next_id = 1;
  CocoAnnotation a;
  a.id = next_id++;
  a.image_id = image_id;
  a.category_id = category_id;
  a.bbox = box;
  a.area = box.w * box.h;
  a.iscrowd = crowd;
  return a;
}

Detection Det(int64_t image_id, int64_t category_id, BoxXywh box,
              double score) {
  return Detection{image_id, category_id, box, score};
}

// Images 1..num_images of 200 x 200, categories 1..num_categories.
CocoDataset Gt(int num_images, int num_categories,
               std::vector<CocoAnnotation> annotations) {
  CocoDataset d;
  for (int i = 1; i <= num_images; ++i) {
    d.images.push_back(CocoImage{i, std::to_string(i) + ".png", 200, 200});
  }
  for (int k = 1; k <= num_categories; ++k) {
    d.categories.push_back(CocoCategory{k, "c" + std::to_string(k)});
  }
  d.annotations = std::move(annotations);
  return d;
}

CocoMetrics Evaluate(const CocoDataset& gt, const std::vector<Detection>& dets,
                     int max_detections = 100) {
  EvalOptions options;
  options.max_detections = max_detections;
  auto m = EvaluateDetections(gt, dets, options);
  TERN_CHECK(m.ok()) << m.status();
  return *m;
}

const BoxXywh kBox{0, 0, 10, 10};

TEST(BoxIouTest, HandWorkedCases) {
  EXPECT_DOUBLE_EQ(BoxIou(kBox, kBox), 1.0);
  EXPECT_DOUBLE_EQ(BoxIou(kBox, {5, 0, 10, 10}), 50.0 / 150.0);
  EXPECT_DOUBLE_EQ(BoxIou(kBox, {5, 5, 10, 10}), 25.0 / 175.0);
  EXPECT_DOUBLE_EQ(BoxIou(kBox, {2, 2, 5, 5}), 25.0 / 100.0);
  EXPECT_DOUBLE_EQ(BoxIou(kBox, {0, 0, 10, 5.9}), 0.59);
  EXPECT_DOUBLE_EQ(BoxIou({1.5, 2.5, 4, 2}, {3.5, 2.5, 4, 4}), 4.0 / 20.0);
  EXPECT_DOUBLE_EQ(BoxIou({5, 0, 10, 10}, kBox), BoxIou(kBox, {5, 0, 10, 10}));
}

TEST(BoxIouTest, DisjointTouchingAndEmptyBoxesScoreZero) {
  EXPECT_EQ(BoxIou(kBox, {20, 20, 5, 5}), 0.0);
  EXPECT_EQ(BoxIou(kBox, {10, 0, 5, 5}), 0.0);   // shares an edge
  EXPECT_EQ(BoxIou(kBox, {10, 10, 5, 5}), 0.0);  // shares a corner
  EXPECT_EQ(BoxIou(kBox, {3, 3, 0, 0}), 0.0);
  EXPECT_EQ(BoxIou({3, 3, 0, 0}, {3, 3, 0, 0}), 0.0);
}

TEST(EvaluateTest, PerfectDetectionsScoreOne) {
  const CocoDataset gt =
      Gt(2, 2,
         {Ann(1, 1, {0, 0, 10, 10}), Ann(1, 2, {20, 20, 8, 16}),
          Ann(1, 1, {50, 50, 40, 40}), Ann(2, 2, {5, 5, 30, 20})});
  std::vector<Detection> dets;
  double score = 0.9;
  for (const CocoAnnotation& a : gt.annotations) {
    dets.push_back(Det(a.image_id, a.category_id, a.bbox, score));
    score -= 0.1;
  }
  const CocoMetrics m = Evaluate(gt, dets);
  EXPECT_DOUBLE_EQ(*m.ap, 1.0);
  EXPECT_DOUBLE_EQ(*m.ap50, 1.0);
  EXPECT_DOUBLE_EQ(*m.ap75, 1.0);
  EXPECT_DOUBLE_EQ(*m.ap_small, 1.0);
  EXPECT_DOUBLE_EQ(*m.ap_medium, 1.0);   // the 40 x 40 box
  EXPECT_FALSE(m.ap_large.has_value());  // no ground truth above 96^2
  ASSERT_EQ(m.class_ap.size(), 2u);
  EXPECT_DOUBLE_EQ(*m.class_ap[0], 1.0);
  EXPECT_DOUBLE_EQ(*m.class_ap[1], 1.0);
}

TEST(EvaluateTest, ShiftedBoxBelowHalfIouScoresZero) {
  const CocoDataset gt = Gt(1, 1, {Ann(1, 1, kBox)});
  const CocoMetrics m =
      Evaluate(gt, {Det(1, 1, {6, 0, 10, 10}, 0.9)});  // IoU 0.25
  EXPECT_DOUBLE_EQ(*m.ap50, 0.0);
  EXPECT_DOUBLE_EQ(*m.ap75, 0.0);
  EXPECT_DOUBLE_EQ(*m.ap, 0.0);
}

TEST(EvaluateTest, IouNearPointSixCountsForAp50ButNotAp75) {
  // IoU 0.59 clears the thresholds 0.50 and 0.55 only: 2 of 10.
  const CocoDataset gt = Gt(1, 1, {Ann(1, 1, kBox)});
  const CocoMetrics m = Evaluate(gt, {Det(1, 1, {0, 0, 10, 5.9}, 0.9)});
  EXPECT_DOUBLE_EQ(*m.ap50, 1.0);
  EXPECT_DOUBLE_EQ(*m.ap75, 0.0);
  EXPECT_DOUBLE_EQ(*m.ap, 0.2);
  // IoU 0.69 clears 0.50 .. 0.65: 4 of 10.
  const CocoMetrics m69 = Evaluate(gt, {Det(1, 1, {0, 0, 10, 6.9}, 0.9)});
  EXPECT_DOUBLE_EQ(*m69.ap50, 1.0);
  EXPECT_DOUBLE_EQ(*m69.ap, 0.4);
}

TEST(EvaluateTest, DuplicateDetectionIsAFalsePositive) {
  // Scores rank TP (image 1), duplicate FP (image 1), TP (image 2).
  // recall 1/2, 1/2, 1; precision 1, 1/2, 2/3 -> monotone 1, 2/3, 2/3.
  // Recall points 0 .. 0.50 (51) read 1; 0.51 .. 1 (50) read 2/3.
  // AP = (51 + 50 * 2/3) / 101 = 253/303 at every IoU threshold.
  const CocoDataset gt =
      Gt(2, 1, {Ann(1, 1, kBox), Ann(2, 1, {20, 20, 10, 10})});
  const std::vector<Detection> dets = {Det(1, 1, kBox, 0.9),
                                       Det(1, 1, kBox, 0.8),
                                       Det(2, 1, {20, 20, 10, 10}, 0.7)};
  const CocoMetrics m = Evaluate(gt, dets);
  EXPECT_NEAR(*m.ap50, 253.0 / 303.0, 1e-12);
  EXPECT_NEAR(*m.ap75, 253.0 / 303.0, 1e-12);
  EXPECT_NEAR(*m.ap, 253.0 / 303.0, 1e-12);
}

TEST(EvaluateTest, DuplicateRankedBelowEveryMatchCostsNothing) {
  // TP, TP, FP: precision 1, 1, 2/3 and full recall is reached at the
  // second detection, so every recall point reads 1.
  const CocoDataset gt =
      Gt(2, 1, {Ann(1, 1, kBox), Ann(2, 1, {20, 20, 10, 10})});
  const std::vector<Detection> dets = {Det(1, 1, kBox, 0.9),
                                       Det(1, 1, kBox, 0.6),
                                       Det(2, 1, {20, 20, 10, 10}, 0.7)};
  EXPECT_DOUBLE_EQ(*Evaluate(gt, dets).ap, 1.0);
}

TEST(EvaluateTest, MissedDetectionHalvesRecall) {
  // recall 1/2 at precision 1: recall points 0 .. 0.50 read 1, the rest 0.
  const CocoDataset gt =
      Gt(1, 1, {Ann(1, 1, kBox), Ann(1, 1, {30, 30, 10, 10})});
  const CocoMetrics m = Evaluate(gt, {Det(1, 1, kBox, 0.9)});
  EXPECT_DOUBLE_EQ(*m.ap50, 51.0 / 101.0);
  EXPECT_DOUBLE_EQ(*m.ap, 51.0 / 101.0);
}

TEST(EvaluateTest, NoDetectionsScoreZero) {
  const CocoDataset gt = Gt(1, 1, {Ann(1, 1, kBox)});
  const CocoMetrics m = Evaluate(gt, {});
  EXPECT_DOUBLE_EQ(*m.ap, 0.0);
  EXPECT_DOUBLE_EQ(*m.ap50, 0.0);
}

TEST(EvaluateTest, EmptyImageWithoutDetectionsChangesNothing) {
  const CocoDataset gt = Gt(2, 1, {Ann(1, 1, kBox)});  // image 2 is empty
  EXPECT_DOUBLE_EQ(*Evaluate(gt, {Det(1, 1, kBox, 0.5)}).ap, 1.0);
}

TEST(EvaluateTest, DetectionOnEmptyImageIsAFalsePositive) {
  const CocoDataset gt = Gt(2, 1, {Ann(1, 1, kBox)});  // image 2 is empty
  // FP (image 2) ranked first: recall 0, 1; precision 0, 1/2 -> monotone
  // 1/2, 1/2; every recall point reads 1/2.
  const CocoMetrics above =
      Evaluate(gt, {Det(1, 1, kBox, 0.5), Det(2, 1, kBox, 0.9)});
  EXPECT_DOUBLE_EQ(*above.ap, 0.5);
  EXPECT_DOUBLE_EQ(*above.ap50, 0.5);
  // Ranked after the match it costs nothing.
  const CocoMetrics below =
      Evaluate(gt, {Det(1, 1, kBox, 0.5), Det(2, 1, kBox, 0.1)});
  EXPECT_DOUBLE_EQ(*below.ap, 1.0);
}

TEST(EvaluateTest, NoGroundTruthLeavesEveryMetricUnset) {
  const CocoDataset gt = Gt(2, 2, {});
  const CocoMetrics m = Evaluate(gt, {Det(1, 1, kBox, 0.9)});
  EXPECT_FALSE(m.ap.has_value());
  EXPECT_FALSE(m.ap50.has_value());
  EXPECT_FALSE(m.ap75.has_value());
  EXPECT_FALSE(m.ap_small.has_value());
  EXPECT_FALSE(m.ap_medium.has_value());
  EXPECT_FALSE(m.ap_large.has_value());
  ASSERT_EQ(m.class_ap.size(), 2u);
  EXPECT_FALSE(m.class_ap[0].has_value());
}

TEST(EvaluateTest, CategoryWithoutGroundTruthIsLeftOutOfTheMean) {
  // Category 2 has no ground truth: its false positives do not count and it
  // is not averaged in as 0 (pycocotools' -1 entries).
  const CocoDataset gt = Gt(1, 2, {Ann(1, 1, kBox)});
  const CocoMetrics m =
      Evaluate(gt, {Det(1, 1, kBox, 0.5), Det(1, 2, kBox, 0.9),
                    Det(1, 2, {50, 50, 5, 5}, 0.8)});
  EXPECT_DOUBLE_EQ(*m.ap, 1.0);
  EXPECT_DOUBLE_EQ(*m.class_ap[0], 1.0);
  EXPECT_FALSE(m.class_ap[1].has_value());
}

TEST(EvaluateTest, ClassesAreAveragedWithEqualWeight) {
  // Class 1: perfect (AP 1). Class 2: two objects, one found (AP 51/101).
  const CocoDataset gt = Gt(1, 2,
                            {Ann(1, 1, kBox), Ann(1, 2, {20, 20, 10, 10}),
                             Ann(1, 2, {40, 40, 10, 10})});
  const CocoMetrics m =
      Evaluate(gt, {Det(1, 1, kBox, 0.9), Det(1, 2, {20, 20, 10, 10}, 0.9)});
  EXPECT_DOUBLE_EQ(*m.class_ap[0], 1.0);
  EXPECT_DOUBLE_EQ(*m.class_ap[1], 51.0 / 101.0);
  EXPECT_DOUBLE_EQ(*m.ap, (1.0 + 51.0 / 101.0) / 2);
}

TEST(EvaluateTest, MaxDetectionsKeepsTheHighestScores) {
  // Three objects, three exact detections listed lowest score first.
  const CocoDataset gt = Gt(1, 1,
                            {Ann(1, 1, kBox), Ann(1, 1, {20, 20, 10, 10}),
                             Ann(1, 1, {40, 40, 10, 10})});
  const std::vector<Detection> dets = {Det(1, 1, {40, 40, 10, 10}, 0.7),
                                       Det(1, 1, {20, 20, 10, 10}, 0.8),
                                       Det(1, 1, kBox, 0.9)};
  EXPECT_DOUBLE_EQ(*Evaluate(gt, dets, 3).ap, 1.0);
  // Cut to 2: recall 2/3 at precision 1; recall points 0 .. 0.66 (67) read 1.
  EXPECT_DOUBLE_EQ(*Evaluate(gt, dets, 2).ap, 67.0 / 101.0);
  // Cut to 1: recall 1/3; points 0 .. 0.33 (34).
  EXPECT_DOUBLE_EQ(*Evaluate(gt, dets, 1).ap, 34.0 / 101.0);
  // A false positive ranked first takes one of the two slots: FP, TP gives
  // recall 0, 1/3 and monotone precision 1/2, 1/2 over points 0 .. 0.33.
  std::vector<Detection> with_fp = dets;
  with_fp.push_back(Det(1, 1, {100, 100, 10, 10}, 0.95));
  EXPECT_DOUBLE_EQ(*Evaluate(gt, with_fp, 2).ap, 34.0 * 0.5 / 101.0);
}

TEST(EvaluateTest, MaxDetectionsApplyPerImageAndCategory) {
  // As pycocotools applies maxDets: one detection per image *and category*.
  const CocoDataset gt =
      Gt(1, 2, {Ann(1, 1, kBox), Ann(1, 2, {20, 20, 10, 10})});
  const CocoMetrics m =
      Evaluate(gt, {Det(1, 1, kBox, 0.9), Det(1, 2, {20, 20, 10, 10}, 0.8)}, 1);
  EXPECT_DOUBLE_EQ(*m.ap, 1.0);
}

TEST(EvaluateTest, SizeBucketsUseTheGroundTruthArea) {
  // A small (10 x 10) and a large (100 x 100) object, both found; a
  // medium-sized false positive ranked first. In "all" it is a false
  // positive: recall 0, 1/2, 1, precision 0, 1/2, 2/3 -> monotone 2/3
  // everywhere. In the small and large buckets an unmatched detection of
  // another size is ignored, and so is a match to an out-of-bucket object.
  const CocoDataset gt =
      Gt(1, 1, {Ann(1, 1, kBox), Ann(1, 1, {50, 50, 100, 100})});
  const CocoMetrics m =
      Evaluate(gt, {Det(1, 1, {150, 0, 50, 50}, 0.99), Det(1, 1, kBox, 0.9),
                    Det(1, 1, {50, 50, 100, 100}, 0.8)});
  EXPECT_NEAR(*m.ap, 2.0 / 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(*m.ap_small, 1.0);
  EXPECT_DOUBLE_EQ(*m.ap_large, 1.0);
  EXPECT_FALSE(m.ap_medium.has_value());
}

TEST(EvaluateTest, SizeBucketsUseTheAnnotatedAreaNotTheBox) {
  // COCO's area is the segment's; a 40 x 40 box with area 500 is small.
  CocoAnnotation a = Ann(1, 1, {0, 0, 40, 40});
  a.area = 500;
  const CocoMetrics m =
      Evaluate(Gt(1, 1, {a}), {Det(1, 1, {0, 0, 40, 40}, 0.9)});
  EXPECT_DOUBLE_EQ(*m.ap_small, 1.0);
  EXPECT_FALSE(m.ap_medium.has_value());
}

TEST(EvaluateTest, CrowdRegionsAbsorbDetectionsWithoutPenalty) {
  // Detections inside a crowd region match it (IoU over the detection's own
  // area) any number of times and are ignored; the crowd is not an object.
  const CocoDataset gt =
      Gt(1, 1, {Ann(1, 1, kBox), Ann(1, 1, {50, 50, 40, 40}, true)});
  const std::vector<Detection> dets = {Det(1, 1, {55, 55, 10, 10}, 0.99),
                                       Det(1, 1, {70, 70, 10, 10}, 0.98),
                                       Det(1, 1, kBox, 0.5)};
  EXPECT_DOUBLE_EQ(*Evaluate(gt, dets).ap, 1.0);
  // The same region not marked crowd is an object the two detections miss
  // (IoU 100/1600 each): ranked FP, FP, TP with 2 objects.
  const CocoDataset plain =
      Gt(1, 1, {Ann(1, 1, kBox), Ann(1, 1, {50, 50, 40, 40})});
  // recall 0, 0, 1/2; precision 0, 0, 1/3 -> monotone 1/3 over 0 .. 0.50.
  EXPECT_NEAR(*Evaluate(plain, dets).ap50, 51.0 / 3.0 / 101.0, 1e-12);
}

TEST(EvaluateTest, OnlyCrowdGroundTruthIsLikeNoGroundTruth) {
  const CocoDataset gt = Gt(1, 1, {Ann(1, 1, kBox, true)});
  EXPECT_FALSE(Evaluate(gt, {Det(1, 1, kBox, 0.9)}).ap.has_value());
}

TEST(EvaluateTest, ResultDoesNotDependOnDetectionOrder) {
  // 20 images with 1..4 objects of 3 classes; detections are the boxes
  // jittered by a deterministic LCG plus scattered false positives, all
  // scores distinct. Any input order gives the same numbers.
  uint64_t state = 12345;
  auto next = [&](int n) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<int>((state >> 33) % static_cast<uint64_t>(n));
  };
  std::vector<CocoAnnotation> anns;
  std::vector<Detection> dets;
  int score_rank = 1;
  for (int img = 1; img <= 20; ++img) {
    for (int n = 1 + next(4); n > 0; --n) {
      const BoxXywh box{double(next(150)), double(next(150)), 5.0 + next(45),
                        5.0 + next(45)};
      const int64_t cat = 1 + next(3);
      anns.push_back(Ann(img, cat, box));
      if (next(5) == 0) continue;  // missed
      const BoxXywh moved{box.x + next(7) - 3, box.y + next(7) - 3,
                          box.w + next(5) - 2, box.h + next(5) - 2};
      dets.push_back(Det(img, cat, moved, 0.001 * score_rank++));
    }
    if (next(2) == 0) {
      dets.push_back(Det(img, 1 + next(3),
                         {double(next(150)), double(next(150)), 20, 20},
                         0.001 * score_rank++));
    }
  }
  const CocoDataset gt = Gt(20, 3, anns);
  const CocoMetrics m = Evaluate(gt, dets, 100);
  std::vector<Detection> reversed(dets.rbegin(), dets.rend());
  const CocoMetrics r = Evaluate(gt, reversed, 100);
  EXPECT_EQ(*m.ap, *r.ap);
  EXPECT_EQ(*m.ap50, *r.ap50);
  EXPECT_EQ(*m.ap75, *r.ap75);
  EXPECT_EQ(m.ap_small, r.ap_small);
  EXPECT_EQ(m.ap_medium, r.ap_medium);
  // Plausible values for jittered boxes: high at IoU .5, lower at .75.
  EXPECT_GT(*m.ap50, 0.5);
  EXPECT_LE(*m.ap75, *m.ap50);
  EXPECT_LE(*m.ap, *m.ap50);
  EXPECT_GT(*m.ap, 0.0);
}

TEST(EvaluateTest, RejectsBadInput) {
  const CocoDataset gt = Gt(1, 1, {Ann(1, 1, kBox)});
  auto expect_invalid = [&](const std::vector<Detection>& dets,
                            const std::string& message,
                            EvalOptions options = {}) {
    const auto m = EvaluateDetections(gt, dets, options);
    ASSERT_FALSE(m.ok()) << message;
    EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(m.status().message().find(message), std::string::npos)
        << m.status();
  };
  expect_invalid({Det(1, 1, kBox, 0.5), Det(99, 1, kBox, 0.5)},
                 "detections[1].image_id: unknown image id 99");
  expect_invalid({Det(1, 7, kBox, 0.5)},
                 "detections[0].category_id: unknown category id 7");
  expect_invalid({Det(1, 1, {0, 0, -1, 1}, 0.5)}, "detections[0].bbox");
  expect_invalid({Det(1, 1, {0, 0, 1, 1}, std::nan(""))},
                 "detections[0].score");
  EvalOptions zero;
  zero.max_detections = 0;
  expect_invalid({}, "max_detections: must be >= 1", zero);
  CocoDataset bad = gt;
  bad.annotations.push_back(Ann(5, 1, kBox));
  EXPECT_EQ(EvaluateDetections(bad, {}).status().code(),
            StatusCode::kInvalidArgument);
}

class ResultsJsonTest : public ::testing::Test {
 protected:
  TempDir dir_;
};

TEST_F(ResultsJsonTest, WritesTheCocoResultsFormat) {
  EXPECT_EQ(DetectionsToJson({Det(7, 3, {1, 2.5, 3, 4}, 0.5)}),
            "[{\"bbox\":[1.0,2.5,3.0,4.0],\"category_id\":3,\"image_id\":7,"
            "\"score\":0.5}]\n");
  EXPECT_EQ(DetectionsToJson({}), "[]\n");
}

TEST_F(ResultsJsonTest, RoundTripsExactly) {
  const std::vector<Detection> dets = {
      Det(1, 1, {0.1, 0.2, 1.0 / 3.0, 1e-7}, 0.123456789012345),
      Det(9000000000LL, -4, {1e6, 0, 0, 2}, 1.0 / 7.0),
      Det(2, 5, {-1.5, 3, 7, 8}, 0.0)};
  const std::string path = dir_.Path("results.json");
  ASSERT_TRUE(WriteDetectionsJson(path, dets).ok());
  const auto back = ReadDetectionsJson(path);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), dets.size());
  for (size_t i = 0; i < dets.size(); ++i) {
    EXPECT_EQ((*back)[i].image_id, dets[i].image_id);
    EXPECT_EQ((*back)[i].category_id, dets[i].category_id);
    EXPECT_EQ((*back)[i].bbox.x, dets[i].bbox.x);
    EXPECT_EQ((*back)[i].bbox.y, dets[i].bbox.y);
    EXPECT_EQ((*back)[i].bbox.w, dets[i].bbox.w);
    EXPECT_EQ((*back)[i].bbox.h, dets[i].bbox.h);
    EXPECT_EQ((*back)[i].score, dets[i].score);
  }
}

TEST_F(ResultsJsonTest, EvaluatesTheSameAfterARoundTrip) {
  const CocoDataset gt =
      Gt(2, 1, {Ann(1, 1, kBox), Ann(2, 1, {20, 20, 10, 10})});
  const std::vector<Detection> dets = {Det(1, 1, {0.3, 0.1, 9.7, 10.2}, 0.9),
                                       Det(1, 1, kBox, 0.8),
                                       Det(2, 1, {21, 20, 10, 9}, 0.7)};
  const auto back = ParseDetectionsJson(DetectionsToJson(dets), "mem");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*Evaluate(gt, dets).ap, *Evaluate(gt, *back).ap);
}

TEST_F(ResultsJsonTest, RejectsMalformedResults) {
  auto expect = [](const std::string& text, StatusCode code,
                   const std::string& message) {
    const auto r = ParseDetectionsJson(text, "res.json");
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status().code(), code) << r.status();
    EXPECT_NE(r.status().message().find("res.json: " + message),
              std::string::npos)
        << r.status();
  };
  const std::string ok =
      R"({"image_id":1,"category_id":1,"bbox":[0,0,1,1],"score":0.5})";
  expect("[" + ok + ",", StatusCode::kDataLoss, "not valid JSON");
  expect("", StatusCode::kDataLoss, "not valid JSON");
  expect("{}", StatusCode::kInvalidArgument,
         "(root): expected an array, got object");
  expect("[" + ok + ",1]", StatusCode::kInvalidArgument,
         "[1]: expected an object");
  expect(R"([{"image_id":"1","category_id":1,"bbox":[0,0,1,1],"score":0.5}])",
         StatusCode::kInvalidArgument,
         "[0].image_id: expected an integer, got string");
  expect(R"([{"image_id":1,"category_id":1,"bbox":[0,0,1],"score":0.5}])",
         StatusCode::kInvalidArgument, "[0].bbox: expected 4 numbers");
  expect(R"([{"image_id":1,"category_id":1,"bbox":[0,0,-1,1],"score":0.5}])",
         StatusCode::kInvalidArgument,
         "[0].bbox: width and height must be >= 0");
  expect("[" + ok + R"(,{"image_id":1,"category_id":1,"bbox":[0,0,1,1]}])",
         StatusCode::kInvalidArgument, "[1]: missing \"score\"");
  expect(R"([{"image_id":1,"category_id":1,"bbox":[0,0,1,1],"score":null}])",
         StatusCode::kInvalidArgument,
         "[0].score: expected a number, got null");
  const auto empty = ParseDetectionsJson("[]", "res.json");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

// The 12 numbers of pycocotools' summary for tests/worker/detection/testdata/
// coco_eval_{annotations,results}.json (also what tern-coco-eval prints for
// them, tests/worker/detection/coco_eval_command_test.cc), worked by hand.
//
// Ground truth (all images 200 x 200; area as written):
//   category 1: g1 image 1 [0,0,10,10] area 100 (small)
//               g2 image 1 [50,50,40,40] area 1600 (medium)
//               g3 image 2 [0,0,100,100] area 10000 (large)
//   category 2: g4 image 2 [150,150,60,60] area 3600 (medium; crosses the
//               image edge: the reader's clip would make it [150,150,50,50])
//               g5 image 3 [100,100,50,50] crowd
//               g6 image 3 [20,20,20,20] area 400 (small)
//   category 3: none, so it is left out of every mean (pycocotools: -1)
// Detections (score): category 1: d1 image 1 = g1 (.9), d2 image 1
// [50,50,40,35] (.6; IoU with g2 1400/1600 = .875, area 1400), d3 image 1
// = g1 again (.5), d4 image 2 = g3 (.8); category 2: d5 image 2
// [150,150,50,50] (.7; IoU with raw g4 2500/3600 = .694, area 2500), d6
// image 3 [110,110,20,20] inside the crowd (.95), d7 image 3 [60,60,20,20]
// overlapping nothing (.6); category 3: one detection (.99).
//
// T = the 10 IoU thresholds .50:.05:.95. d2 matches g2 at the 8 thresholds
// .50-.85, d5 matches g4 at the 4 thresholds .50-.65, d1 and d4 at all,
// d3 never (g1 is taken); d6 matches the crowd (ignored), d7 is a FP.
//
// Category 1, area all (3 ground truth), score order d1 d4 d2 d3:
//   t <= .85: TP TP TP FP: recall reaches 1 at precision 1: AP 1, recall 1.
//   t >= .90: TP TP FP FP: recall 1/3, 2/3, 2/3, 2/3 at precision 1 up to
//     2/3: recall points 0 .. .66 (67 of 101) read 1: AP 67/101, recall 2/3.
//   maxDets 1 keeps d1 (image 1) and d4 (image 2): recall 2/3 at every t.
// Category 2, area all (g4 and g6; the crowd is ignored), order d6 d5 d7:
//   d6 ignored; t <= .65: TP FP: recall 1/2 at precision 1: points 0 .. .50
//   (51) read 1: AP 51/101, recall 1/2; t >= .70: FP FP: AP 0, recall 0.
//   maxDets 1 keeps d5 (image 2) and d6 (image 3): the same recall.
// Small [0, 32^2]: category 1 has g1 only (d1 TP; d4, d2 matched or too
//   large, ignored; d3 a small FP after full recall): AP 1, recall 1.
//   Category 2 has g6 only, never matched (d7 a small FP): AP 0, recall 0.
// Medium [32^2, 96^2]: category 1 has g2 only: d2 TP at t <= .85 (AP 1,
//   recall 1), an in-range FP above (AP 0, recall 0): mean .8 over T;
//   d1, d3, d4 are ignored (matched to out-of-range ground truth or out of
//   range). Category 2 has g4 only: d5 TP at t <= .65, FP above: .4.
// Large [96^2, 1e10]: category 1 has g3 (d4 TP, the rest ignored): AP 1,
//   recall 1; category 2 has no large ground truth: left out.
//
// Means over (category, t):
//   AP     = (8 + 2 * 67/101 + 4 * 51/101) / 20 = 1146/2020 = 0.5673
//   AP50   = (1 + 51/101) / 2 = 76/101 = 0.7525
//   AP75   = (1 + 0) / 2 = 0.5
//   APs    = (1 + 0) / 2 = 0.5;  APm = (.8 + .4) / 2 = 0.6;  APl = 1
//   AR@1   = (10 * 2/3 + 4 * 1/2) / 20 = 26/60 = 0.4333
//   AR@10  = AR@100 = (8 + 2 * 2/3 + 4 * 1/2) / 20 = 34/60 = 0.5667
//   ARs    = (1 + 0) / 2 = 0.5;  ARm = (.8 + .4) / 2 = 0.6;  ARl = 1
TEST(EvaluateTest, PinnedCocoSummary) {
  CocoReadOptions keep;
  keep.out_of_image = BoxPolicy::kKeep;
  const auto gt = ReadCocoFile(
      TERN_DETECTION_TESTDATA "/coco_eval_annotations.json", keep);
  ASSERT_TRUE(gt.ok()) << gt.status();
  const auto dets =
      ReadDetectionsJson(TERN_DETECTION_TESTDATA "/coco_eval_results.json");
  ASSERT_TRUE(dets.ok()) << dets.status();
  const auto m = EvaluateDetections(*gt, *dets);
  ASSERT_TRUE(m.ok()) << m.status();
  constexpr double kEps = 1e-12;
  EXPECT_NEAR(*m->ap, 1146.0 / 2020.0, kEps);
  EXPECT_NEAR(*m->ap50, 76.0 / 101.0, kEps);
  EXPECT_NEAR(*m->ap75, 0.5, kEps);
  EXPECT_NEAR(*m->ap_small, 0.5, kEps);
  EXPECT_NEAR(*m->ap_medium, 0.6, kEps);
  EXPECT_NEAR(*m->ap_large, 1.0, kEps);
  EXPECT_NEAR(*m->ar1, 26.0 / 60.0, kEps);
  EXPECT_NEAR(*m->ar10, 34.0 / 60.0, kEps);
  EXPECT_NEAR(*m->ar100, 34.0 / 60.0, kEps);
  EXPECT_NEAR(*m->ar_small, 0.5, kEps);
  EXPECT_NEAR(*m->ar_medium, 0.6, kEps);
  EXPECT_NEAR(*m->ar_large, 1.0, kEps);
  ASSERT_EQ(m->class_ap.size(), 3u);
  EXPECT_NEAR(*m->class_ap[0], (8 + 2 * 67.0 / 101) / 10, kEps);
  EXPECT_NEAR(*m->class_ap[1], 4 * 51.0 / 101 / 10, kEps);
  EXPECT_FALSE(m->class_ap[2].has_value());

  // The training reader (BoxPolicy::kClip) clips g4 to [150,150,50,50] but
  // keeps the file's box for evaluation: the same numbers. Scored against
  // the clipped box, d5 matches at every t: category 2's AP is 51/101 at
  // all 10 thresholds, AP = (8 + 2 * 67/101 + 10 * 51/101) / 20.
  const auto clipped = ReadCocoFile(
      TERN_DETECTION_TESTDATA "/coco_eval_annotations.json");
  ASSERT_TRUE(clipped.ok()) << clipped.status();
  ASSERT_TRUE(clipped->annotations[3].file_bbox.has_value());
  EXPECT_DOUBLE_EQ(clipped->annotations[3].bbox.w, 50);
  const auto same = EvaluateDetections(*clipped, *dets);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(*same->ap, *m->ap);
  EXPECT_EQ(*same->ar100, *m->ar100);
  EvalOptions clip;
  clip.clipped_ground_truth = true;
  const auto other = EvaluateDetections(*clipped, *dets, clip);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_NEAR(*other->ap, 1452.0 / 2020.0, kEps);

  EXPECT_EQ(FormatCocoSummary(*m, 100),
            " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.567\n"
            " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.752\n"
            " Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ] = 0.500\n"
            " Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = 0.500\n"
            " Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ] = 0.600\n"
            " Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = 1.000\n"
            " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = 0.433\n"
            " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ] = 0.567\n"
            " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.567\n"
            " Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = 0.500\n"
            " Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ] = 0.600\n"
            " Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = 1.000\n");
}

TEST(EvaluateTest, RecallCountsTheFirstOneTenAndMaxDetectionsPerImage) {
  // 12 objects in one image, each found exactly; scores fall with the index.
  // maxDets 1, 10, 100 keep 1, 10, 12 of them: AR 1/12, 10/12, 1 at every
  // IoU threshold; AP (maxDets 100) 1. With max_detections 5: AR@10 and
  // AR@5 are 5/12, AP 5/12 at precision 1 reads 1 at recall points 0 .. .41
  // (42 of 101).
  std::vector<CocoAnnotation> anns;
  std::vector<Detection> dets;
  for (int i = 0; i < 12; ++i) {
    const BoxXywh box{static_cast<double>(15 * i), 0, 10, 10};
    anns.push_back(Ann(1, 1, box));
    dets.push_back(Det(1, 1, box, 1.0 - 0.01 * i));
  }
  const CocoDataset gt = Gt(1, 1, anns);
  const CocoMetrics m = Evaluate(gt, dets);
  EXPECT_DOUBLE_EQ(*m.ar1, 1.0 / 12);
  EXPECT_DOUBLE_EQ(*m.ar10, 10.0 / 12);
  EXPECT_DOUBLE_EQ(*m.ar100, 1.0);
  EXPECT_DOUBLE_EQ(*m.ar_small, 1.0);
  EXPECT_FALSE(m.ar_medium.has_value());
  EXPECT_FALSE(m.ar_large.has_value());
  EXPECT_DOUBLE_EQ(*m.ap, 1.0);
  const CocoMetrics five = Evaluate(gt, dets, 5);
  EXPECT_DOUBLE_EQ(*five.ar1, 1.0 / 12);
  EXPECT_DOUBLE_EQ(*five.ar10, 5.0 / 12);
  EXPECT_DOUBLE_EQ(*five.ar100, 5.0 / 12);
  EXPECT_DOUBLE_EQ(*five.ap, 42.0 / 101);
  const std::string summary = FormatCocoSummary(five, 5);
  EXPECT_NE(summary.find("area=   all | maxDets=  5 ] = 0.416\n"),
            std::string::npos)
      << summary;
  EXPECT_NE(summary.find("(AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]"),
            std::string::npos);
}

TEST(EvaluateTest, SummaryPrintsMinusOneAndJsonNullForUnsetValues) {
  const CocoMetrics none;
  const std::string summary = FormatCocoSummary(none, 100);
  EXPECT_EQ(std::count(summary.begin(), summary.end(), '\n'), 12);
  EXPECT_NE(summary.find(
                " Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | "
                "maxDets=100 ] = -1.000\n"),
            std::string::npos)
      << summary;
  CocoMetrics some;
  some.ap = 0.5;
  some.ar_large = 0.25;
  EXPECT_EQ(CocoMetricsToJson(some),
            R"({"ap":0.5,"ap50":null,"ap75":null,"ap_large":null,)"
            R"("ap_medium":null,"ap_small":null,"ar1":null,"ar10":null,)"
            R"("ar100":null,"ar_large":0.25,"ar_medium":null,"ar_small":null})");
}

}  // namespace
}  // namespace tern::detection
