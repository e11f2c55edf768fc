// TrainerMetrics: the agent's per-rank tern_job_* series, fed with the
// trainer's JSON lines through TrainerEventParser and read back from the
// registry's exposition text.
#include "worker/agent/trainer_metrics.h"

#include <gtest/gtest.h>

#include <string>

#include "trainer_protocol/trainer_events.h"

namespace tern::agent {
namespace {

v1::JobSpec Spec() {
  v1::JobSpec spec;
  spec.mutable_quantization()->set_method(v1::METHOD_HLA);
  spec.mutable_optimization()->set_epochs(3);
  return spec;
}

class TrainerMetricsTest : public ::testing::Test {
 protected:
  void Feed(const std::string& line) {
    metrics_.Update("7", "0", parser_.ParseStdoutLine(line, {}), &window_);
  }
  // Whether the exposition has a line starting with `sample` (a series and
  // its value, or just a series name with its opening brace).
  bool Has(const std::string& sample) const {
    const std::string text = "\n" + registry_.Serialize();
    return text.find("\n" + sample) != std::string::npos;
  }
  std::string Text() const { return registry_.Serialize(); }

  metrics::Registry registry_;
  TrainerMetrics metrics_{&registry_};
  trainer::TrainerEventParser parser_{Spec(), 1};
  TrainerMetrics::Window window_;
};

// A CUDA trainer's progress lines, 10 steps and 2 s apart.
constexpr const char* kGpuProgress1 =
    R"({"event":"progress","rank":0,"time":100,"step":10,"loss":1.5,"images_per_second":500,)"
    R"("step_seconds":0.25,"allreduce_seconds":0.0625,"data_wait_seconds":0.015625,)"
    R"("gpu_memory_bytes":1073741824,"gpu_peak_memory_bytes":2147483648})";
constexpr const char* kGpuProgress2 =
    R"({"event":"progress","rank":0,"time":102,"step":20,"loss":1.25,"images_per_second":640,)"
    R"("step_seconds":0.125,"allreduce_seconds":0.03125,"data_wait_seconds":0.0078125,)"
    R"("gpu_memory_bytes":1610612736,"gpu_peak_memory_bytes":6442450944})";

TEST_F(TrainerMetricsTest, ExportsTheStepBreakdownAndGpuMemoryOfACudaTrainer) {
  Feed(kGpuProgress1);
  Feed(kGpuProgress2);
  // One observation per progress line, the trainer's own per-step means
  // (not the 0.2 s the line times would give).
  for (const char* sample : {
           R"(tern_job_step_time_seconds_count{job="7",rank="0"} 2)",
           R"(tern_job_step_time_seconds_sum{job="7",rank="0"} 0.375)",
           R"(tern_job_allreduce_seconds_count{job="7",rank="0"} 2)",
           R"(tern_job_allreduce_seconds_sum{job="7",rank="0"} 0.09375)",
           R"(tern_job_allreduce_seconds_bucket{job="7",rank="0",le="0.032"} 1)",
           R"(tern_job_allreduce_seconds_bucket{job="7",rank="0",le="+Inf"} 2)",
           R"(tern_job_data_wait_seconds_count{job="7",rank="0"} 2)",
           R"(tern_job_data_wait_seconds_sum{job="7",rank="0"} 0.0234375)",
           // Gauges: the latest values, byte counts as plain integers.
           R"(tern_job_gpu_memory_bytes{job="7",rank="0"} 1610612736)",
           R"(tern_job_gpu_peak_memory_bytes{job="7",rank="0"} 6442450944)",
           R"(tern_job_step{job="7",rank="0"} 20)",
           R"(tern_job_images_per_second{job="7",rank="0"} 640)",
       }) {
    EXPECT_TRUE(Has(sample)) << sample << "\n" << Text();
  }
  EXPECT_TRUE(Has("# TYPE tern_job_allreduce_seconds histogram")) << Text();
  EXPECT_TRUE(Has("# TYPE tern_job_gpu_memory_bytes gauge")) << Text();
}

TEST_F(TrainerMetricsTest, CpuAndOlderTrainersGetNoGpuOrBreakdownSeries) {
  // No step_seconds: the step time comes from the line times (2 s / 10).
  Feed(R"({"event":"progress","time":100,"step":10,"loss":1.5,"images_per_second":500})");
  Feed(R"({"event":"progress","time":102,"step":20,"loss":1.25,"images_per_second":640})");
  EXPECT_TRUE(Has(R"(tern_job_step_time_seconds_count{job="7",rank="0"} 1)")) << Text();
  EXPECT_TRUE(Has(R"(tern_job_step_time_seconds_sum{job="7",rank="0"} 0.2)")) << Text();
  // A CPU run of a new trainer: the breakdown, still no GPU memory.
  Feed(R"({"event":"progress","time":103,"step":30,"loss":1,"step_seconds":0.5,)"
       R"("allreduce_seconds":0.25,"data_wait_seconds":0})");
  EXPECT_TRUE(Has(R"(tern_job_step_time_seconds_sum{job="7",rank="0"} 0.7)")) << Text();
  EXPECT_TRUE(Has(R"(tern_job_allreduce_seconds_sum{job="7",rank="0"} 0.25)")) << Text();
  EXPECT_TRUE(Has(R"(tern_job_data_wait_seconds_count{job="7",rank="0"} 1)")) << Text();
  // The families are declared; no series (no bogus 0) without a value.
  EXPECT_TRUE(Has("# TYPE tern_job_gpu_memory_bytes gauge")) << Text();
  EXPECT_FALSE(Has("tern_job_gpu_memory_bytes{")) << Text();
  EXPECT_FALSE(Has("tern_job_gpu_peak_memory_bytes{")) << Text();
}

TEST_F(TrainerMetricsTest, OlderTrainerWithoutBreakdownHasNoBreakdownSeries) {
  Feed(R"({"event":"progress","time":100,"step":10,"loss":1.5})");
  EXPECT_FALSE(Has("tern_job_allreduce_seconds_count{")) << Text();
  EXPECT_FALSE(Has("tern_job_data_wait_seconds_count{")) << Text();
  EXPECT_FALSE(Has("tern_job_gpu_memory_bytes{")) << Text();
  // A single line has no interval yet.
  EXPECT_FALSE(Has("tern_job_step_time_seconds_count{")) << Text();
}

TEST_F(TrainerMetricsTest, StartedOpensANewInterval) {
  Feed(R"({"event":"progress","time":100,"step":10,"loss":1.5})");
  // Restarted from a checkpoint after a pause: the pause is no step time.
  Feed(R"({"event":"started","time":500,"resumed_from_step":10})");
  Feed(R"({"event":"progress","time":502,"step":20,"loss":1.25})");
  EXPECT_FALSE(Has("tern_job_step_time_seconds_count{")) << Text();
  Feed(R"({"event":"progress","time":503,"step":30,"loss":1})");
  EXPECT_TRUE(Has(R"(tern_job_step_time_seconds_sum{job="7",rank="0"} 0.1)")) << Text();
}

TEST_F(TrainerMetricsTest, RemoveDropsEveryRankSeries) {
  Feed(kGpuProgress1);
  Feed(kGpuProgress2);
  Feed(R"({"event":"checkpoint","time":103,"step":20,"path":"/c","seconds":1.5})");
  EXPECT_TRUE(Has(R"(tern_job_checkpoint_seconds{job="7",rank="0"} 1.5)")) << Text();
  metrics_.Update("8", "1", parser_.ParseStdoutLine(kGpuProgress1, {}), &window_);
  metrics_.Remove("7", "0");
  const std::string text = Text();
  EXPECT_EQ(text.find("job=\"7\""), std::string::npos) << text;
  EXPECT_TRUE(Has(R"(tern_job_gpu_memory_bytes{job="8",rank="1"} 1073741824)")) << text;
  EXPECT_TRUE(Has(R"(tern_job_allreduce_seconds_count{job="8",rank="1"} 1)")) << text;
}

}  // namespace
}  // namespace tern::agent
