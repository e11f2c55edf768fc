// Parsing of the trainer's JSON lines (as worker/trainer writes them) into
// tern.v1 messages.
#include "server/trainer_events.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

namespace tern::server {
namespace {

TEST(TrainerEventsTest, ParsesProgress) {
  StatusOr<TrainerLine> line = ParseTrainerLine(
      R"({"event":"progress","job":"j","rank":0,"world_size":2,"time":1.7e9,)"
      R"("epoch":1,"epochs":3,"step":40,"total_steps":120,"loss":null,)"
      R"("lr":0.05,"images_per_second":512.5,"eta_seconds":9,)"
      R"("reg_lambda":0.002,"kappa":7.5,"phase":2})");
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(line->kind, TrainerEventKind::kProgress);
  EXPECT_EQ(line->progress.epoch(), 1);
  EXPECT_EQ(line->progress.epochs(), 3);
  EXPECT_EQ(line->progress.step(), 40);
  EXPECT_EQ(line->progress.total_steps(), 120);
  EXPECT_TRUE(std::isnan(line->progress.loss()));  // diverged: null
  EXPECT_DOUBLE_EQ(line->progress.lr(), 0.05);
  EXPECT_DOUBLE_EQ(line->progress.images_per_second(), 512.5);
  EXPECT_DOUBLE_EQ(line->progress.reg_lambda(), 0.002);
  EXPECT_EQ(line->progress.phase(), 2);
  EXPECT_DOUBLE_EQ(line->kappa, 7.5);
}

TEST(TrainerEventsTest, ProgressStepBreakdownAndGpuMemoryAreOptional) {
  StatusOr<TrainerLine> gpu = ParseTrainerLine(
      R"({"event":"progress","rank":0,"time":1700000000.5,"step":40,)"
      R"("loss":1,"step_seconds":0.125,"allreduce_seconds":0.03,)"
      R"("data_wait_seconds":0.004,"gpu_memory_bytes":1073741824,)"
      R"("gpu_peak_memory_bytes":6442450944})");
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const v1::Progress& p = gpu->progress;
  EXPECT_DOUBLE_EQ(gpu->time, 1700000000.5);
  ASSERT_TRUE(p.has_step_seconds());
  EXPECT_DOUBLE_EQ(p.step_seconds(), 0.125);
  ASSERT_TRUE(p.has_allreduce_seconds());
  EXPECT_DOUBLE_EQ(p.allreduce_seconds(), 0.03);
  ASSERT_TRUE(p.has_data_wait_seconds());
  EXPECT_DOUBLE_EQ(p.data_wait_seconds(), 0.004);
  ASSERT_TRUE(p.has_gpu_memory_bytes());
  EXPECT_EQ(p.gpu_memory_bytes(), int64_t{1} << 30);
  ASSERT_TRUE(p.has_gpu_peak_memory_bytes());
  EXPECT_EQ(p.gpu_peak_memory_bytes(), int64_t{6} << 30);

  // An older trainer or a CPU run omits them; null, negative and mistyped
  // values read as absent too.
  for (const char* line : {
           R"({"event":"progress","rank":0,"step":40,"loss":1})",
           R"({"event":"progress","step":40,"step_seconds":null,)"
           R"("allreduce_seconds":-0.5,"data_wait_seconds":"x",)"
           R"("gpu_memory_bytes":-1,"gpu_peak_memory_bytes":{}})",
       }) {
    StatusOr<TrainerLine> cpu = ParseTrainerLine(line);
    ASSERT_TRUE(cpu.ok()) << line;
    EXPECT_FALSE(cpu->progress.has_step_seconds()) << line;
    EXPECT_FALSE(cpu->progress.has_allreduce_seconds()) << line;
    EXPECT_FALSE(cpu->progress.has_data_wait_seconds()) << line;
    EXPECT_FALSE(cpu->progress.has_gpu_memory_bytes()) << line;
    EXPECT_FALSE(cpu->progress.has_gpu_peak_memory_bytes()) << line;
    EXPECT_DOUBLE_EQ(cpu->time, 0);
  }
}

TEST(TrainerEventsTest, ParsesEpochEndFinishedCheckpointAndFailed) {
  StatusOr<TrainerLine> epoch = ParseTrainerLine(
      R"({"event":"epoch_end","rank":0,"epoch":2,"eval_split":"val",)"
      R"("train_loss":0.7,"fp":{"loss":0.5,"top1":0.9,"top5":1,"examples":10},)"
      R"("ternary":{"loss":0.6,"top1":0.85,"top5":0.99,"examples":10},)"
      R"("epoch_seconds":3.5,"layers":[{"name":"a","quantized":true,)"
      R"("numel":200,"sparsity":0.3,"alpha":0.1,"delta":0.05,"cos_wt":0.8,)"
      R"("flips":10,"flips_per_step":2},{"name":"fc","quantized":false}]})");
  ASSERT_TRUE(epoch.ok());
  ASSERT_EQ(epoch->kind, TrainerEventKind::kEpochEnd);
  const v1::EpochMetrics& m = epoch->epoch_end.metrics();
  EXPECT_EQ(m.epoch(), 2);
  EXPECT_EQ(m.eval_split(), "val");
  EXPECT_DOUBLE_EQ(m.eval_loss(), 0.6);
  EXPECT_DOUBLE_EQ(m.fp_top1(), 0.9);
  EXPECT_DOUBLE_EQ(m.ternary_top5(), 0.99);
  EXPECT_FALSE(m.has_train_top1());
  ASSERT_EQ(epoch->epoch_end.layers_size(), 1);
  EXPECT_DOUBLE_EQ(epoch->epoch_end.layers(0).flips(), 0.01);  // 2 / 200

  StatusOr<TrainerLine> finished = ParseTrainerLine(
      R"({"event":"finished","rank":0,"fp":{"top1":0.9,"top5":1},)"
      R"("ternary":{"top1":0.8},"artifact_path":"/a/m.tern",)"
      R"("artifact_bytes":12345,"bits_per_weight":1.7,"steps":99,)"
      R"("wall_seconds":12.5,"images_per_second":100})");
  ASSERT_TRUE(finished.ok());
  ASSERT_EQ(finished->kind, TrainerEventKind::kFinished);
  EXPECT_EQ(finished->result.artifact_path(), "/a/m.tern");
  EXPECT_EQ(finished->result.artifact_bytes(), 12345);
  EXPECT_DOUBLE_EQ(finished->result.ternary_top1(), 0.8);  // no "artifact"
  EXPECT_FALSE(finished->result.has_ternary_top5());
  EXPECT_EQ(finished->result.steps(), 99);

  StatusOr<TrainerLine> resumed = ParseTrainerLine(
      R"({"event":"started","rank":0,"resumed_from_step":120,"total_steps":400,)"
      R"("device":"cuda:0","process_group":"nccl","epochs":4})");
  ASSERT_TRUE(resumed.ok());
  ASSERT_EQ(resumed->kind, TrainerEventKind::kStarted);
  EXPECT_EQ(resumed->started.resumed_from_step(), 120);
  EXPECT_EQ(resumed->started.total_steps(), 400);
  EXPECT_EQ(resumed->started.device(), "cuda:0");
  EXPECT_EQ(resumed->started.process_group(), "nccl");
  StatusOr<TrainerLine> fresh =
      ParseTrainerLine(R"({"event":"started","rank":0,"resumed_from_step":-1})");
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(fresh->started.resumed_from_step(), 0);

  StatusOr<TrainerLine> checkpoint = ParseTrainerLine(
      R"({"event":"checkpoint","rank":0,"step":50,"epoch":1,"path":"/c/s"})");
  ASSERT_TRUE(checkpoint.ok());
  EXPECT_EQ(checkpoint->kind, TrainerEventKind::kCheckpoint);
  EXPECT_EQ(checkpoint->checkpoint.step(), 50);
  EXPECT_EQ(checkpoint->checkpoint.path(), "/c/s");

  // Every rank's `stopped` names the committed checkpoint it stopped at.
  StatusOr<TrainerLine> stopped = ParseTrainerLine(
      R"({"event":"stopped","rank":1,"step":60,"epoch":2,"total_steps":90,"checkpoint":"/c/60"})");
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->kind, TrainerEventKind::kStopped);
  EXPECT_EQ(stopped->rank, 1);
  EXPECT_EQ(stopped->checkpoint.step(), 60);
  EXPECT_EQ(stopped->checkpoint.epoch(), 2);
  EXPECT_EQ(stopped->checkpoint.path(), "/c/60");

  StatusOr<TrainerLine> failed = ParseTrainerLine(
      R"({"event":"failed","rank":1,"code":"COLLECTIVE_TIMEOUT","reason":"x"})");
  ASSERT_TRUE(failed.ok());
  EXPECT_EQ(failed->kind, TrainerEventKind::kFailed);
  EXPECT_EQ(failed->rank, 1);
  EXPECT_EQ(failed->failure.code(), "COLLECTIVE_TIMEOUT");
  EXPECT_EQ(failed->failure.message(), "x");
}

TEST(TrainerEventsTest, DetectionMetricsCarryTheTwelveCocoNumbers) {
  StatusOr<TrainerLine> epoch = ParseTrainerLine(
      R"({"event":"epoch_end","rank":0,"epoch":1,"eval_split":"val",)"
      R"("train_loss":2.5,"fp":{"ap":0.4,"ap50":0.7,"ap75":0.3,)"
      R"("ap_small":0.2,"ap_medium":0.5,"ap_large":null,"ar1":0.25,)"
      R"("ar10":0.45,"ar100":0.5,"ar_small":0.3,"ar_medium":0.6,)"
      R"("ar_large":null,"images":8},"ternary":{"ap":0.35},"layers":[]})");
  ASSERT_TRUE(epoch.ok());
  const v1::EpochMetrics& m = epoch->epoch_end.metrics();
  ASSERT_TRUE(m.has_fp_detection());
  const v1::DetectionMetrics& d = m.fp_detection();
  EXPECT_DOUBLE_EQ(d.ap(), 0.4);
  EXPECT_DOUBLE_EQ(d.ap_medium(), 0.5);
  EXPECT_FALSE(d.has_ap_large());
  EXPECT_DOUBLE_EQ(d.ar1(), 0.25);
  EXPECT_DOUBLE_EQ(d.ar10(), 0.45);
  EXPECT_DOUBLE_EQ(d.ar100(), 0.5);
  EXPECT_DOUBLE_EQ(d.ar_small(), 0.3);
  EXPECT_DOUBLE_EQ(d.ar_medium(), 0.6);
  EXPECT_FALSE(d.has_ar_large());  // null: no large objects
  // An older trainer's line without AR leaves it unset.
  EXPECT_DOUBLE_EQ(m.ternary_detection().ap(), 0.35);
  EXPECT_FALSE(m.ternary_detection().has_ar100());
}

TEST(TrainerEventsTest, ToleratesOddInput) {
  EXPECT_FALSE(ParseTrainerLine("not json").ok());
  EXPECT_FALSE(ParseTrainerLine("[1,2]").ok());
  StatusOr<TrainerLine> unknown = ParseTrainerLine(R"({"event":"new_kind"})");
  ASSERT_TRUE(unknown.ok());
  EXPECT_EQ(unknown->kind, TrainerEventKind::kUnknown);
  // Wrong types read as absent instead of throwing.
  StatusOr<TrainerLine> odd = ParseTrainerLine(
      R"({"event":"progress","step":"ten","loss":{},"layers":7})");
  ASSERT_TRUE(odd.ok());
  EXPECT_EQ(odd->progress.step(), 0);
  EXPECT_DOUBLE_EQ(odd->progress.loss(), 0);
}

TEST(TrainerEventsTest, LogPayloadRoundTripsAndCutsLongLines) {
  StatusOr<TrainerLine> log = ParseTrainerLine(LogPayload(3, "a \"quoted\"\n"));
  ASSERT_TRUE(log.ok());
  EXPECT_EQ(log->kind, TrainerEventKind::kLog);
  EXPECT_EQ(log->log.rank(), 3);
  EXPECT_EQ(log->log.text(), "a \"quoted\"\n");
  // 4095 ASCII bytes and a 2-byte character that does not fit: the cut
  // leaves it out whole, the line stays valid UTF-8.
  const std::string long_line = std::string(4095, 'x') + "\xc3\xa9" + "tail";
  StatusOr<TrainerLine> cut = ParseTrainerLine(LogPayload(0, long_line));
  ASSERT_TRUE(cut.ok());
  EXPECT_EQ(cut->log.text(), std::string(4095, 'x'));
  // A stray byte becomes U+FFFD.
  StatusOr<TrainerLine> stray = ParseTrainerLine(LogPayload(0, "bad \xff byte"));
  ASSERT_TRUE(stray.ok());
  EXPECT_EQ(stray->log.text(), "bad \xef\xbf\xbd byte");
}

}  // namespace
}  // namespace tern::server
