// ServerMetrics' per-job series from relayed trainer progress, epoch-end and
// result events, read back from the registry's exposition text.
#include "server/server_metrics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <sstream>
#include <string>
#include <vector>

#include "trainer_protocol/trainer_events.h"

namespace tern::server {
namespace {

using std::chrono::minutes;
using std::chrono::seconds;
using trainer::ParseTrainerLine;
using trainer::TrainerEventKind;
using trainer::TrainerLine;

class ServerMetricsTest : public ::testing::Test {
 protected:
  void Progress(scheduler::JobId id, const std::string& line) {
    StatusOr<TrainerLine> parsed = ParseTrainerLine(line);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    ASSERT_EQ(parsed->kind, TrainerEventKind::kProgress);
    metrics_.OnProgress(id, *parsed);
  }
  // Whether the exposition has a line starting with `sample`.
  bool Has(const std::string& sample) const {
    return ("\n" + registry_.Serialize()).find("\n" + sample) !=
           std::string::npos;
  }
  std::string Text() const { return registry_.Serialize(); }
  // The exposition's sample lines that start with `prefix`, in order.
  std::vector<std::string> Lines(const std::string& prefix) const {
    std::vector<std::string> out;
    std::istringstream in(Text());
    for (std::string line; std::getline(in, line);) {
      if (line.rfind(prefix, 0) == 0) out.push_back(line);
    }
    return out;
  }
  // Job `id` reaches SUCCEEDED at `at`.
  void End(scheduler::JobId id, scheduler::TimePoint at) {
    scheduler::Job job;
    job.id = id;
    job.state = scheduler::JobState::kSucceeded;
    scheduler::JobEvent event;
    event.seq = 5;
    event.time = at;
    event.from = scheduler::JobState::kRunning;
    event.to = scheduler::JobState::kSucceeded;
    metrics_.OnJobEvent(job, event);
  }

  metrics::Registry registry_;
  ServerMetrics metrics_{&registry_, minutes(5)};
};

// Rank 0 of a CUDA job, 10 steps and 2 s apart.
constexpr const char* kGpuProgress1 =
    R"({"event":"progress","rank":0,"time":100,"step":10,"loss":1.5,)"
    R"("step_seconds":0.25,"allreduce_seconds":0.0625,)"
    R"("data_wait_seconds":0.015625,"gpu_memory_bytes":1073741824,)"
    R"("gpu_peak_memory_bytes":2147483648})";
constexpr const char* kGpuProgress2 =
    R"({"event":"progress","rank":0,"time":102,"step":20,"loss":1.25,)"
    R"("step_seconds":0.125,"allreduce_seconds":0.03125,)"
    R"("data_wait_seconds":0.0078125,"gpu_memory_bytes":1610612736,)"
    R"("gpu_peak_memory_bytes":6442450944})";

TEST_F(ServerMetricsTest, ExportsTheStepBreakdownAndGpuMemory) {
  Progress(42, kGpuProgress1);
  Progress(42, kGpuProgress2);
  for (const char* sample : {
           // The trainer's step_seconds, not the 0.2 s of the line times.
           R"(tern_job_step_time_seconds_count{job="42"} 2)",
           R"(tern_job_step_time_seconds_sum{job="42"} 0.375)",
           R"(tern_job_step_time_seconds_bucket{job="42",le="0.128"} 1)",
           R"(tern_job_allreduce_seconds_count{job="42"} 2)",
           R"(tern_job_allreduce_seconds_sum{job="42"} 0.09375)",
           R"(tern_job_data_wait_seconds_count{job="42"} 2)",
           R"(tern_job_data_wait_seconds_sum{job="42"} 0.0234375)",
           R"(tern_job_gpu_memory_bytes{job="42"} 1610612736)",
           R"(tern_job_gpu_peak_memory_bytes{job="42"} 6442450944)",
           R"(tern_job_step{job="42"} 20)",
       }) {
    EXPECT_TRUE(Has(sample)) << sample << "\n" << Text();
  }
}

TEST_F(ServerMetricsTest, CpuAndOlderTrainersGetNoGpuOrBreakdownSeries) {
  Progress(42, R"({"event":"progress","time":100,"step":10,"loss":1.5})");
  Progress(42, R"({"event":"progress","time":102,"step":20,"loss":1.25})");
  // Without step_seconds: 2 s over 10 steps.
  EXPECT_TRUE(Has(R"(tern_job_step_time_seconds_count{job="42"} 1)")) << Text();
  EXPECT_TRUE(Has(R"(tern_job_step_time_seconds_sum{job="42"} 0.2)")) << Text();
  EXPECT_TRUE(Has("# TYPE tern_job_gpu_memory_bytes gauge")) << Text();
  EXPECT_TRUE(Has("# TYPE tern_job_allreduce_seconds histogram")) << Text();
  for (const char* series :
       {"tern_job_gpu_memory_bytes{", "tern_job_gpu_peak_memory_bytes{",
        "tern_job_allreduce_seconds_count{",
        "tern_job_data_wait_seconds_count{"}) {
    EXPECT_FALSE(Has(series)) << series << "\n" << Text();
  }
  // A CPU run of a new trainer: the breakdown, still no GPU memory.
  Progress(42, R"({"event":"progress","time":103,"step":30,"loss":1,)"
               R"("step_seconds":0.5,"allreduce_seconds":0.25,)"
               R"("data_wait_seconds":0})");
  EXPECT_TRUE(Has(R"(tern_job_step_time_seconds_sum{job="42"} 0.7)")) << Text();
  EXPECT_TRUE(Has(R"(tern_job_allreduce_seconds_sum{job="42"} 0.25)"))
      << Text();
  EXPECT_TRUE(Has(R"(tern_job_data_wait_seconds_count{job="42"} 1)")) << Text();
  EXPECT_FALSE(Has("tern_job_gpu_memory_bytes{")) << Text();
}

TEST_F(ServerMetricsTest, ARestartedTrainerOpensANewStepTimeInterval) {
  Progress(42, R"({"event":"progress","time":100,"step":10,"loss":1.5})");
  // The next attempt resumes from a checkpoint minutes later.
  metrics_.OnTrainerStarted(42);
  Progress(42, R"({"event":"progress","time":500,"step":20,"loss":1.25})");
  EXPECT_FALSE(Has("tern_job_step_time_seconds_count{")) << Text();
  Progress(42, R"({"event":"progress","time":501,"step":30,"loss":1})");
  EXPECT_TRUE(Has(R"(tern_job_step_time_seconds_sum{job="42"} 0.1)")) << Text();
}

TEST_F(ServerMetricsTest, AnEndedJobsNewSeriesGoAfterTheGracePeriod) {
  Progress(42, kGpuProgress1);
  Progress(42, kGpuProgress2);
  Progress(43, kGpuProgress1);
  const scheduler::TimePoint end = scheduler::TimePoint() + seconds(1000);
  End(42, end);
  EXPECT_EQ(metrics_.DropEndedJobs(end + minutes(4)), 0);
  EXPECT_TRUE(Has(R"(tern_job_gpu_memory_bytes{job="42"} 1610612736)"))
      << Text();
  EXPECT_EQ(metrics_.DropEndedJobs(end + minutes(5)), 1);
  const std::string text = Text();
  EXPECT_EQ(text.find("job=\"42\""), std::string::npos) << text;
  EXPECT_TRUE(Has(R"(tern_job_gpu_memory_bytes{job="43"} 1073741824)")) << text;
  EXPECT_TRUE(Has(R"(tern_job_allreduce_seconds_count{job="43"} 1)")) << text;
}

// A classification epoch evaluated on `split` (top-1 0.75 FP, 0.5 ternary),
// and a result with test top-1 0.875 FP, 0.625 ternary.
v1::EpochEnd ClassificationEpochEnd(const std::string& split) {
  v1::EpochEnd e;
  e.mutable_metrics()->set_eval_split(split);
  e.mutable_metrics()->set_fp_top1(0.75);
  e.mutable_metrics()->set_ternary_top1(0.5);
  return e;
}

v1::JobResult ClassificationResult() {
  v1::JobResult r;
  r.set_fp_top1(0.875);
  r.set_ternary_top1(0.625);
  return r;
}

// A detection epoch: fp with all three AP values, ternary without ap75.
v1::EpochEnd DetectionEpochEnd() {
  v1::EpochEnd e;
  v1::EpochMetrics* m = e.mutable_metrics();
  m->set_epoch(3);
  m->set_eval_split("val");
  m->set_train_loss(2.5);
  m->mutable_fp_detection()->set_ap(0.25);
  m->mutable_fp_detection()->set_ap50(0.5);
  m->mutable_fp_detection()->set_ap75(0.125);
  m->mutable_fp_detection()->set_ap_small(0.0625);
  m->mutable_ternary_detection()->set_ap(0.1875);
  m->mutable_ternary_detection()->set_ap50(0.375);
  m->mutable_ternary_detection()->set_ar1(0.125);
  m->mutable_ternary_detection()->set_ar100(0.5);
  return e;
}

v1::JobResult DetectionResult() {
  v1::JobResult r;
  r.mutable_fp_detection()->set_ap(0.3125);
  r.mutable_fp_detection()->set_ap50(0.625);
  r.mutable_fp_detection()->set_ap75(0.25);
  r.mutable_ternary_detection()->set_ap(0.28125);
  r.mutable_ternary_detection()->set_ap50(0.5625);
  r.mutable_ternary_detection()->set_ap75(0.21875);
  return r;
}

TEST_F(ServerMetricsTest, ADetectionEpochSetsApByWeightsAndIou) {
  metrics_.OnEpochEnd(7, DetectionEpochEnd());
  std::vector<std::string> want = {
      R"(tern_job_ap{job="7",split="val",weights="fp",iou="0.50:0.95"} 0.25)",
      R"(tern_job_ap{job="7",split="val",weights="fp",iou="0.50"} 0.5)",
      R"(tern_job_ap{job="7",split="val",weights="fp",iou="0.75"} 0.125)",
      R"(tern_job_ap{job="7",split="val",weights="ternary",)"
      R"(iou="0.50:0.95"} 0.1875)",
      R"(tern_job_ap{job="7",split="val",weights="ternary",iou="0.50"} 0.375)",
  };
  std::vector<std::string> lines = Lines("tern_job_ap{");
  std::sort(lines.begin(), lines.end());
  std::sort(want.begin(), want.end());
  EXPECT_EQ(lines, want) << Text();
  // AR by maxDets, only the values the trainer reported.
  std::vector<std::string> ar = Lines("tern_job_ar{");
  std::sort(ar.begin(), ar.end());
  EXPECT_EQ(ar, (std::vector<std::string>{
                    R"(tern_job_ar{job="7",split="val",weights="ternary",max_dets="1"} 0.125)",
                    R"(tern_job_ar{job="7",split="val",weights="ternary",max_dets="100"} 0.5)"}))
      << Text();
  // No top-1 for a detection job.
  EXPECT_TRUE(Lines("tern_job_accuracy{").empty()) << Text();
}

TEST_F(ServerMetricsTest, AClassificationEpochCreatesNoApSeries) {
  metrics_.OnEpochEnd(7, ClassificationEpochEnd("test"));
  metrics_.OnResult(7, ClassificationResult());
  EXPECT_TRUE(Has(R"(tern_job_accuracy{job="7",split="test",weights="fp"} )"
                  R"(0.875)"))
      << Text();
  EXPECT_TRUE(Has("# TYPE tern_job_ap gauge")) << Text();
  EXPECT_TRUE(Lines("tern_job_ap{").empty()) << Text();
}

TEST_F(ServerMetricsTest, AJobResultSetsApOnTheTestSplit) {
  metrics_.OnEpochEnd(7, DetectionEpochEnd());
  metrics_.OnResult(7, DetectionResult());
  const std::string test = R"(tern_job_ap{job="7",split="test",)";
  for (const std::string& sample : {
           test + R"(weights="fp",iou="0.50:0.95"} 0.3125)",
           test + R"(weights="fp",iou="0.50"} 0.625)",
           test + R"(weights="fp",iou="0.75"} 0.25)",
           test + R"(weights="ternary",iou="0.50:0.95"} 0.28125)",
           test + R"(weights="ternary",iou="0.50"} 0.5625)",
           test + R"(weights="ternary",iou="0.75"} 0.21875)",
           // The epoch's series stay.
           std::string(
               R"(tern_job_ap{job="7",split="val",weights="fp",iou="0.50"} )"
               R"(0.5)"),
       }) {
    EXPECT_TRUE(Has(sample)) << sample << "\n" << Text();
  }
  EXPECT_EQ(Lines(test).size(), 6u) << Text();
  EXPECT_EQ(Lines("tern_job_ap{").size(), 11u) << Text();
}

// A result's validation-split figures (dataset.val_fraction) update the epochs' split="val"
// series: top-1 for classification, AP and AR for detection; none without a split.
TEST_F(ServerMetricsTest, AJobResultsValidationFiguresUpdateTheValSeries) {
  metrics_.OnEpochEnd(7, ClassificationEpochEnd("val"));
  v1::JobResult r = ClassificationResult();
  r.set_val_fp_top1(0.8125);
  r.set_val_ternary_top1(0.5625);
  metrics_.OnResult(7, r);
  EXPECT_TRUE(Has(R"(tern_job_accuracy{job="7",split="val",weights="fp"} 0.8125)")) << Text();
  EXPECT_TRUE(Has(R"(tern_job_accuracy{job="7",split="val",weights="ternary"} 0.5625)")) << Text();
  EXPECT_TRUE(Has(R"(tern_job_accuracy{job="7",split="test",weights="ternary"} 0.625)")) << Text();
  EXPECT_EQ(Lines(R"(tern_job_accuracy{job="7",)").size(), 4u) << Text();
  EXPECT_TRUE(Lines("tern_job_ap{").empty()) << Text();

  metrics_.OnEpochEnd(8, DetectionEpochEnd());
  v1::JobResult d = DetectionResult();
  d.mutable_val_fp_detection()->set_ap50(0.6875);
  d.mutable_val_ternary_detection()->set_ap50(0.4375);
  d.mutable_val_ternary_detection()->set_ar100(0.75);
  metrics_.OnResult(8, d);
  const std::string val = R"(tern_job_ap{job="8",split="val",)";
  EXPECT_TRUE(Has(val + R"(weights="fp",iou="0.50"} 0.6875)")) << Text();
  EXPECT_TRUE(Has(val + R"(weights="ternary",iou="0.50"} 0.4375)")) << Text();
  // The epoch's other values stay (the result reported no AP or AP75 on val).
  EXPECT_TRUE(Has(val + R"(weights="fp",iou="0.50:0.95"} 0.25)")) << Text();
  EXPECT_TRUE(Has(R"(tern_job_ar{job="8",split="val",weights="ternary",max_dets="100"} 0.75)"))
      << Text();
  EXPECT_TRUE(Lines(R"(tern_job_accuracy{job="8",)").empty()) << Text();

  metrics_.OnResult(9, DetectionResult());  // no validation split
  EXPECT_TRUE(Lines(R"(tern_job_ap{job="9",split="val",)").empty()) << Text();
}

TEST_F(ServerMetricsTest, AnEndedJobsApSeriesGoAfterTheGracePeriod) {
  metrics_.OnEpochEnd(42, DetectionEpochEnd());
  metrics_.OnResult(42, DetectionResult());
  metrics_.OnEpochEnd(43, DetectionEpochEnd());
  const scheduler::TimePoint end = scheduler::TimePoint() + seconds(1000);
  End(42, end);
  EXPECT_EQ(metrics_.DropEndedJobs(end + minutes(4)), 0);
  EXPECT_EQ(Lines(R"(tern_job_ap{job="42",)").size(), 11u) << Text();
  EXPECT_EQ(metrics_.DropEndedJobs(end + minutes(5)), 1);
  EXPECT_TRUE(Lines(R"(tern_job_ap{job="42",)").empty()) << Text();
  EXPECT_EQ(Lines(R"(tern_job_ap{job="43",)").size(), 5u) << Text();
  EXPECT_TRUE(Has("# TYPE tern_job_ap gauge")) << Text();
}

TEST_F(ServerMetricsTest, OwnerSeriesFollowTheOwnersWithUnfinishedJobs) {
  scheduler::SchedulerStats stats;
  stats.owners["alice"].unfinished_jobs = 3;
  stats.owners["alice"].slots = {{"cuda", 6}};
  stats.owners["bob"].unfinished_jobs = 1;
  stats.jobs_waiting_on_quota = 2;
  metrics_.UpdateScheduler(stats);
  EXPECT_TRUE(Has("tern_scheduler_owner_unfinished_jobs{owner=\"alice\"} 3")) << Text();
  EXPECT_TRUE(Has("tern_scheduler_owner_slots{owner=\"alice\",device_kind=\"cuda\"} 6"));
  EXPECT_TRUE(Has("tern_scheduler_owner_slots{owner=\"alice\",device_kind=\"cpu\"} 0"));
  EXPECT_TRUE(Has("tern_scheduler_owner_unfinished_jobs{owner=\"bob\"} 1"));
  EXPECT_TRUE(Has("tern_scheduler_jobs_waiting_on_quota 2"));

  stats.owners.erase("alice");  // her last job ended
  stats.jobs_waiting_on_quota = 0;
  metrics_.UpdateScheduler(stats);
  EXPECT_TRUE(Lines("tern_scheduler_owner_slots{owner=\"alice\"").empty()) << Text();
  EXPECT_TRUE(Lines("tern_scheduler_owner_unfinished_jobs{owner=\"alice\"").empty()) << Text();
  EXPECT_TRUE(Has("tern_scheduler_owner_unfinished_jobs{owner=\"bob\"} 1"));
  EXPECT_TRUE(Has("tern_scheduler_jobs_waiting_on_quota 0"));
}

}  // namespace
}  // namespace tern::server
