// The trainer's JSON lines (worker/trainer/trainer.cc writes them) parsed
// into tern.v1 messages: ParseTrainerLine as ternd reads stored lines, and
// TrainerEventParser as tern-agent relays a trainer's stdout.
#include "trainer_protocol/trainer_events.h"

#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>

namespace tern::trainer {
namespace {

using google::protobuf::util::TimeUtil;

// --- ParseTrainerLine (ternd) ------------------------------------------------

TEST(ParseTrainerLineTest, ParsesProgress) {
  StatusOr<TrainerLine> line =
      ParseTrainerLine(R"({"event":"progress","job":"j","rank":0,"world_size":2,"time":1.7e9,)"
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

TEST(ParseTrainerLineTest, ProgressStepBreakdownAndGpuMemoryAreOptional) {
  StatusOr<TrainerLine> gpu =
      ParseTrainerLine(R"({"event":"progress","rank":0,"time":1700000000.5,"step":40,)"
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

TEST(ParseTrainerLineTest, ParsesEpochEndFinishedCheckpointAndFailed) {
  StatusOr<TrainerLine> epoch =
      ParseTrainerLine(R"({"event":"epoch_end","rank":0,"epoch":2,"eval_split":"val",)"
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

  StatusOr<TrainerLine> finished =
      ParseTrainerLine(R"({"event":"finished","rank":0,"fp":{"top1":0.9,"top5":1},)"
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

  StatusOr<TrainerLine> resumed =
      ParseTrainerLine(R"({"event":"started","rank":0,"resumed_from_step":120,"total_steps":400,)"
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

  StatusOr<TrainerLine> checkpoint =
      ParseTrainerLine(R"({"event":"checkpoint","rank":0,"step":50,"epoch":1,"path":"/c/s"})");
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

  StatusOr<TrainerLine> failed =
      ParseTrainerLine(R"({"event":"failed","rank":1,"code":"COLLECTIVE_TIMEOUT","reason":"x"})");
  ASSERT_TRUE(failed.ok());
  EXPECT_EQ(failed->kind, TrainerEventKind::kFailed);
  EXPECT_EQ(failed->rank, 1);
  EXPECT_EQ(failed->failure.code(), "COLLECTIVE_TIMEOUT");
  EXPECT_EQ(failed->failure.message(), "x");
}

TEST(ParseTrainerLineTest, ParsesTheHlaDiagnosticsAndTheFinalValidationMetrics) {
  auto progress = ParseTrainerLine(
      R"({"event":"progress","step":50,"phase":1,"regularizer":{"lambda":0.1,"cos_wt":0.85,)"
      R"("reg_grad_share":0.2,"seconds":0.01,"layers":[{"name":"blocks.0.conv1","numel":2304,)"
      R"("cos_wt":0.8,"reg_grad_norm":0.1,"grad_norm":0.5,"reg_grad_share":0.2}]}})");
  ASSERT_TRUE(progress.ok());
  EXPECT_DOUBLE_EQ(progress->progress.reg_grad_share(), 0.2);
  EXPECT_DOUBLE_EQ(progress->progress.cos_wt(), 0.85);
  ASSERT_EQ(progress->progress.layers_size(), 1);
  EXPECT_EQ(progress->progress.layers(0).name(), "blocks.0.conv1");
  EXPECT_EQ(progress->progress.layers(0).numel(), 2304);
  EXPECT_DOUBLE_EQ(progress->progress.layers(0).cos_wt(), 0.8);
  EXPECT_DOUBLE_EQ(progress->progress.layers(0).reg_grad_share(), 0.2);
  auto plain = ParseTrainerLine(R"({"event":"progress","step":50})");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->progress.has_reg_grad_share());
  EXPECT_EQ(plain->progress.layers_size(), 0);

  auto sw = ParseTrainerLine(
      R"({"event":"phase_switch","step":84,"epoch":2,"eval_split":"val","fp":{"top1":0.8},)"
      R"("ternary":{"top1":0.6},"ternary_bn":{"top1":0.75},"bn_batches":16,"bn_kept":false,)"
      R"("seconds":3.5})");
  ASSERT_TRUE(sw.ok());
  EXPECT_EQ(sw->kind, TrainerEventKind::kPhaseSwitch);
  EXPECT_EQ(sw->phase_switch.step(), 84);
  EXPECT_EQ(sw->phase_switch.epoch(), 2);
  EXPECT_EQ(sw->phase_switch.eval_split(), "val");
  EXPECT_DOUBLE_EQ(sw->phase_switch.fp_top1(), 0.8);
  EXPECT_DOUBLE_EQ(sw->phase_switch.ternary_top1(), 0.6);
  EXPECT_DOUBLE_EQ(sw->phase_switch.ternary_bn_top1(), 0.75);
  EXPECT_EQ(sw->phase_switch.bn_batches(), 16);
  EXPECT_FALSE(sw->phase_switch.bn_kept());
  auto no_bn = ParseTrainerLine(R"({"event":"phase_switch","ternary_bn":null})");
  ASSERT_TRUE(no_bn.ok());
  EXPECT_FALSE(no_bn->phase_switch.has_ternary_bn_top1());
  EXPECT_FALSE(no_bn->phase_switch.has_ternary_bn_detection());
  // Detection: AP in the detection fields, the top-1 fields unset.
  auto detection = ParseTrainerLine(
      R"({"event":"phase_switch","step":10,"eval_split":"val","fp":{"ap":0.2,"ap50":0.5},)"
      R"("ternary":{"ap":0.01,"ap50":0.03},"ternary_bn":{"ap":0.15,"ap50":0.4},"bn_batches":4})");
  ASSERT_TRUE(detection.ok());
  EXPECT_FALSE(detection->phase_switch.has_fp_top1());
  EXPECT_FALSE(detection->phase_switch.has_ternary_bn_top1());
  EXPECT_DOUBLE_EQ(detection->phase_switch.fp_detection().ap50(), 0.5);
  EXPECT_DOUBLE_EQ(detection->phase_switch.ternary_detection().ap(), 0.01);
  EXPECT_DOUBLE_EQ(detection->phase_switch.ternary_bn_detection().ap50(), 0.4);

  const char* finished = R"({"event":"finished","fp":{"top1":0.9},"artifact":{"top1":0.88},)"
                         R"("val":{"fp":{"top1":0.91},"ternary":{"top1":0.89}}})";
  auto done = ParseTrainerLine(finished);
  ASSERT_TRUE(done.ok());
  EXPECT_DOUBLE_EQ(done->result.val_fp_top1(), 0.91);
  EXPECT_DOUBLE_EQ(done->result.val_ternary_top1(), 0.89);
  ParseOptions fp;
  fp.full_precision = true;
  auto fp_done = ParseTrainerLine(finished, fp);
  ASSERT_TRUE(fp_done.ok());
  EXPECT_FALSE(fp_done->result.has_val_ternary_top1());
  auto no_val = ParseTrainerLine(R"({"event":"finished","artifact":{"top1":0.88}})");
  ASSERT_TRUE(no_val.ok());
  EXPECT_FALSE(no_val->result.has_val_fp_top1());
  EXPECT_FALSE(no_val->result.has_val_ternary_detection());
  const char* det_finished =
      R"({"event":"finished","fp":{"ap":0.3},"artifact":{"ap":0.25,"ap50":0.6},)"
      R"("val":{"fp":{"ap":0.31,"ap50":0.7},"ternary":{"ap":0.26,"ap50":0.62}}})";
  auto det_done = ParseTrainerLine(det_finished);
  ASSERT_TRUE(det_done.ok());
  EXPECT_FALSE(det_done->result.has_val_fp_top1());
  EXPECT_DOUBLE_EQ(det_done->result.val_fp_detection().ap50(), 0.7);
  EXPECT_DOUBLE_EQ(det_done->result.val_ternary_detection().ap50(), 0.62);
  EXPECT_DOUBLE_EQ(det_done->result.ternary_detection().ap50(), 0.6);
  auto det_fp = ParseTrainerLine(det_finished, fp);
  ASSERT_TRUE(det_fp.ok());
  EXPECT_TRUE(det_fp->result.has_val_fp_detection());
  EXPECT_FALSE(det_fp->result.has_val_ternary_detection());
}

TEST(ParseTrainerLineTest, DetectionMetricsCarryTheTwelveCocoNumbers) {
  StatusOr<TrainerLine> epoch =
      ParseTrainerLine(R"({"event":"epoch_end","rank":0,"epoch":1,"eval_split":"val",)"
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

TEST(ParseTrainerLineTest, ToleratesOddInput) {
  EXPECT_FALSE(ParseTrainerLine("not json").ok());
  EXPECT_FALSE(ParseTrainerLine("[1,2]").ok());
  StatusOr<TrainerLine> unknown = ParseTrainerLine(R"({"event":"new_kind"})");
  ASSERT_TRUE(unknown.ok());
  EXPECT_EQ(unknown->kind, TrainerEventKind::kUnknown);
  // Wrong types read as absent instead of throwing.
  StatusOr<TrainerLine> odd =
      ParseTrainerLine(R"({"event":"progress","step":"ten","loss":{},"layers":7})");
  ASSERT_TRUE(odd.ok());
  EXPECT_EQ(odd->progress.step(), 0);
  EXPECT_DOUBLE_EQ(odd->progress.loss(), 0);
}

TEST(ParseTrainerLineTest, LogPayloadRoundTripsAndCutsLongLines) {
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

// --- TrainerEventParser (tern-agent) ----------------------------------------

v1::JobSpec Spec(v1::QuantMethod method = v1::METHOD_HLA, int epochs = 3) {
  v1::JobSpec spec;
  spec.mutable_quantization()->set_method(method);
  spec.mutable_optimization()->set_epochs(epochs);
  return spec;
}

TEST(TrainerEventParserTest, StartedCarriesPidDeviceAndResumeStep) {
  TrainerEventParser parser(Spec(), 4242);
  const auto now = TimeUtil::SecondsToTimestamp(1000);
  ParsedLine p =
      parser.ParseStdoutLine(R"({"event":"started","job":"j","rank":0,"world_size":2,"time":1.5,)"
                             R"("resumed_from_step":-1,"steps_per_epoch":100,"device":"cpu"})",
                             now);
  EXPECT_EQ(p.kind, "started");
  ASSERT_TRUE(p.event.has_started());
  EXPECT_EQ(p.event.started().pid(), 4242);
  EXPECT_EQ(p.event.started().device(), "cpu");
  EXPECT_EQ(p.event.started().resumed_from_step(), 0);  // -1 (fresh) becomes 0
  EXPECT_EQ(p.event.time(), now);
  EXPECT_DOUBLE_EQ(p.trainer_time, 1.5);
  EXPECT_FALSE(p.event.json_line().empty());
}

TEST(TrainerEventParserTest, ProgressEpochIsOneBased) {
  TrainerEventParser parser(Spec(), 1);
  ParsedLine p = parser.ParseStdoutLine(
      R"({"event":"progress","time":2,"epoch":1,"epochs":3,"step":50,"total_steps":300,)"
      R"("loss":0.75,"lr":0.1,"images_per_second":900,"eta_seconds":12,"phase":2,"reg_lambda":0.01})",
      {});
  ASSERT_TRUE(p.event.has_progress());
  const v1::Progress& pr = p.event.progress();
  EXPECT_EQ(pr.epoch(), 1);
  EXPECT_EQ(pr.epochs(), 3);
  EXPECT_EQ(pr.step(), 50);
  EXPECT_EQ(pr.total_steps(), 300);
  EXPECT_DOUBLE_EQ(pr.loss(), 0.75);
  EXPECT_DOUBLE_EQ(pr.images_per_second(), 900);
  EXPECT_EQ(pr.phase(), 2);
}

TEST(TrainerEventParserTest, ProgressCarriesStepBreakdownAndGpuMemory) {
  TrainerEventParser parser(Spec(), 1);
  ParsedLine p = parser.ParseStdoutLine(
      R"({"event":"progress","time":2,"epoch":1,"step":50,"loss":0.75,"step_seconds":0.125,)"
      R"("allreduce_seconds":0.03,"data_wait_seconds":0.004,"gpu_memory_bytes":1073741824,)"
      R"("gpu_peak_memory_bytes":6442450944})",
      {});
  ASSERT_TRUE(p.event.has_progress());
  const v1::Progress& pr = p.event.progress();
  ASSERT_TRUE(pr.has_step_seconds());
  EXPECT_DOUBLE_EQ(pr.step_seconds(), 0.125);
  ASSERT_TRUE(pr.has_allreduce_seconds());
  EXPECT_DOUBLE_EQ(pr.allreduce_seconds(), 0.03);
  ASSERT_TRUE(pr.has_data_wait_seconds());
  EXPECT_DOUBLE_EQ(pr.data_wait_seconds(), 0.004);
  ASSERT_TRUE(pr.has_gpu_memory_bytes());
  EXPECT_EQ(pr.gpu_memory_bytes(), int64_t{1} << 30);
  ASSERT_TRUE(pr.has_gpu_peak_memory_bytes());
  EXPECT_EQ(pr.gpu_peak_memory_bytes(), int64_t{6} << 30);  // above 2^32
}

TEST(TrainerEventParserTest, ProgressWithoutTheNewFieldsLeavesThemUnset) {
  TrainerEventParser parser(Spec(), 1);
  // An older trainer, or a CPU run without GPU memory; null (non-finite) and
  // negative values read as absent too.
  for (const char* line : {
           R"({"event":"progress","epoch":1,"step":50,"loss":0.75})",
           R"({"event":"progress","step":50,"step_seconds":null,"allreduce_seconds":-1,)"
           R"("data_wait_seconds":"x","gpu_memory_bytes":-5,"gpu_peak_memory_bytes":null})",
       }) {
    ParsedLine p = parser.ParseStdoutLine(line, {});
    ASSERT_TRUE(p.event.has_progress()) << line;
    const v1::Progress& pr = p.event.progress();
    EXPECT_FALSE(pr.has_step_seconds()) << line;
    EXPECT_FALSE(pr.has_allreduce_seconds()) << line;
    EXPECT_FALSE(pr.has_data_wait_seconds()) << line;
    EXPECT_FALSE(pr.has_gpu_memory_bytes()) << line;
    EXPECT_FALSE(pr.has_gpu_peak_memory_bytes()) << line;
  }
}

TEST(TrainerEventParserTest, NullLossIsNan) {
  TrainerEventParser parser(Spec(), 1);
  ParsedLine p = parser.ParseStdoutLine(R"({"event":"progress","epoch":1,"loss":null})", {});
  ASSERT_TRUE(p.event.has_progress());
  EXPECT_TRUE(std::isnan(p.event.progress().loss()));
}

TEST(TrainerEventParserTest, EpochEndMapsMetricsAndSkipsFullPrecisionLayers) {
  TrainerEventParser parser(Spec(), 1);
  ParsedLine p = parser.ParseStdoutLine(
      R"({"event":"epoch_end","epoch":2,"eval_split":"test","train_loss":0.5,)"
      R"("fp":{"loss":0.4,"top1":0.9,"top5":0.99},"ternary":{"loss":0.45,"top1":0.88,"top5":0.98},)"
      R"("epoch_seconds":12.5,"layers":[{"name":"conv1","quantized":false,"numel":10},)"
      R"({"name":"layer1.0.conv1","quantized":true,"numel":1000,"sparsity":0.4,"alpha":0.1,)"
      R"("delta":0.05,"cos_wt":0.9,"flips":100,"flips_per_step":10}]})",
      {});
  ASSERT_TRUE(p.event.has_epoch_end());
  const v1::EpochMetrics& m = p.event.epoch_end().metrics();
  EXPECT_EQ(m.epoch(), 2);
  EXPECT_EQ(m.eval_split(), "test");
  EXPECT_DOUBLE_EQ(m.fp_top1(), 0.9);
  EXPECT_DOUBLE_EQ(m.ternary_top1(), 0.88);
  EXPECT_DOUBLE_EQ(m.ternary_top5(), 0.98);
  EXPECT_DOUBLE_EQ(m.eval_loss(), 0.45);
  EXPECT_DOUBLE_EQ(m.epoch_seconds(), 12.5);
  ASSERT_EQ(p.event.epoch_end().layers_size(), 1);
  const v1::LayerStats& l = p.event.epoch_end().layers(0);
  EXPECT_EQ(l.name(), "layer1.0.conv1");
  EXPECT_DOUBLE_EQ(l.flips(), 0.01);  // 10 flips per step of 1000 weights
  EXPECT_DOUBLE_EQ(l.sparsity(), 0.4);
}

TEST(TrainerEventParserTest, FullPrecisionMethodHasNoTernaryMetrics) {
  TrainerEventParser parser(Spec(v1::METHOD_FP), 1);
  ParsedLine p = parser.ParseStdoutLine(
      R"({"event":"epoch_end","epoch":1,"fp":{"loss":0.4,"top1":0.9},"ternary":{"loss":0.4,"top1":0.9}})",
      {});
  const v1::EpochMetrics& m = p.event.epoch_end().metrics();
  EXPECT_TRUE(m.has_fp_top1());
  EXPECT_FALSE(m.has_ternary_top1());
  EXPECT_DOUBLE_EQ(m.eval_loss(), 0.4);
}

TEST(TrainerEventParserTest, FinishedTakesTernaryAccuracyFromTheArtifact) {
  TrainerEventParser parser(Spec(v1::METHOD_HLA, 5), 1);
  ParsedLine p = parser.ParseStdoutLine(
      R"({"event":"finished","fp":{"top1":0.9,"top5":0.99},"ternary":{"top1":0.80},)"
      R"("artifact":{"top1":0.87,"top5":0.97},"artifact_path":"/a/model.tern","artifact_bytes":1234,)"
      R"("bits_per_weight":1.7,"steps":500,"wall_seconds":60,"images_per_second":800,"layers":[]})",
      {});
  ASSERT_TRUE(p.event.has_finished());
  const v1::JobResult& r = p.event.finished();
  EXPECT_EQ(r.artifact_path(), "/a/model.tern");
  EXPECT_EQ(r.artifact_bytes(), 1234);
  EXPECT_DOUBLE_EQ(r.ternary_top1(), 0.87);
  EXPECT_DOUBLE_EQ(r.ternary_top5(), 0.97);
  EXPECT_DOUBLE_EQ(r.fp_top1(), 0.9);
  EXPECT_DOUBLE_EQ(r.bits_per_weight(), 1.7);
  EXPECT_EQ(r.epochs(), 5);  // from the spec
  EXPECT_EQ(r.steps(), 500);
}

TEST(TrainerEventParserTest, DetectionMetricsMapToCocoAp) {
  TrainerEventParser parser(Spec(v1::METHOD_HLA, 2), 1);
  ParsedLine epoch = parser.ParseStdoutLine(
      R"({"event":"epoch_end","epoch":1,"eval_split":"val","train_loss":2.5,)"
      R"("fp":{"ap":0.4,"ap50":0.7,"ap75":0.3,"ap_small":0.2,"ap_medium":null,"ap_large":null,)"
      R"("ar1":0.25,"ar10":0.45,"ar100":0.5,"ar_small":0.3,"ar_medium":null,"ar_large":null,"images":8},)"
      R"("ternary":{"ap":0.35,"ap50":0.6,"ap75":0.25,"ap_small":0.1,"ap_medium":null,"ap_large":null},)"
      R"("layers":[]})",
      {});
  ASSERT_TRUE(epoch.event.has_epoch_end());
  const v1::EpochMetrics& m = epoch.event.epoch_end().metrics();
  EXPECT_FALSE(m.has_fp_top1());
  ASSERT_TRUE(m.has_fp_detection());
  EXPECT_DOUBLE_EQ(m.fp_detection().ap50(), 0.7);
  EXPECT_DOUBLE_EQ(m.ternary_detection().ap(), 0.35);
  EXPECT_DOUBLE_EQ(m.ternary_detection().ap_small(), 0.1);
  EXPECT_FALSE(m.ternary_detection().has_ap_medium());  // null: no such objects
  EXPECT_DOUBLE_EQ(m.fp_detection().ar1(), 0.25);
  EXPECT_DOUBLE_EQ(m.fp_detection().ar10(), 0.45);
  EXPECT_DOUBLE_EQ(m.fp_detection().ar100(), 0.5);
  EXPECT_DOUBLE_EQ(m.fp_detection().ar_small(), 0.3);
  EXPECT_FALSE(m.fp_detection().has_ar_medium());
  EXPECT_FALSE(m.ternary_detection().has_ar100());  // not in the line
  ParsedLine done = parser.ParseStdoutLine(
      R"({"event":"finished","fp":{"ap":0.4,"ap50":0.7},"ternary":{"ap":0.3},)"
      R"("artifact":{"ap":0.33,"ap50":0.61},"detections_path":"/w/model.detections.json",)"
      R"("artifact_path":"/w/model.tern","steps":10,"layers":[]})",
      {});
  ASSERT_TRUE(done.event.has_finished());
  const v1::JobResult& r = done.event.finished();
  EXPECT_DOUBLE_EQ(r.ternary_detection().ap(), 0.33);  // the re-loaded artifact's
  EXPECT_DOUBLE_EQ(r.ternary_detection().ap50(), 0.61);
  EXPECT_DOUBLE_EQ(r.fp_detection().ap50(), 0.7);
  EXPECT_EQ(r.detections_path(), "/w/model.detections.json");
  // Classification results carry no detection metrics.
  ParsedLine cls = parser.ParseStdoutLine(
      R"({"event":"finished","fp":{"top1":0.9},"artifact":{"top1":0.8},"layers":[]})", {});
  EXPECT_FALSE(cls.event.finished().has_fp_detection());
  EXPECT_FALSE(cls.event.finished().has_ternary_detection());
}

TEST(TrainerEventParserTest, CheckpointEpochFollowsStepsPerEpoch) {
  TrainerEventParser parser(Spec(), 1);
  parser.ParseStdoutLine(R"({"event":"started","steps_per_epoch":100})", {});
  ParsedLine mid = parser.ParseStdoutLine(
      R"({"event":"checkpoint","step":150,"epoch":1,"path":"/c/step-150","seconds":0.25})", {});
  ASSERT_TRUE(mid.event.has_checkpoint_committed());
  EXPECT_EQ(mid.event.checkpoint_committed().epoch(), 2);
  EXPECT_EQ(mid.event.checkpoint_committed().path(), "/c/step-150");
  EXPECT_DOUBLE_EQ(mid.checkpoint_seconds, 0.25);
  ParsedLine end = parser.ParseStdoutLine(R"({"event":"checkpoint","step":200,"epoch":2})", {});
  EXPECT_EQ(end.event.checkpoint_committed().epoch(), 2);
}

TEST(TrainerEventParserTest, FailedBecomesStateReason) {
  TrainerEventParser parser(Spec(), 1);
  ParsedLine p = parser.ParseStdoutLine(
      R"({"event":"failed","code":"COLLECTIVE_TIMEOUT","reason":"allreduce timed out"})", {});
  ASSERT_TRUE(p.event.has_failed());
  EXPECT_EQ(p.event.failed().code(), "COLLECTIVE_TIMEOUT");
  EXPECT_EQ(p.event.failed().message(), "allreduce timed out");
}

TEST(TrainerEventParserTest, UnrecognisedLinesKeepTheTextOnly) {
  TrainerEventParser parser(Spec(), 1);
  for (const char* line : {"not json at all", "[1,2]", R"({"event":"mystery"})"}) {
    ParsedLine p = parser.ParseStdoutLine(line, {});
    EXPECT_EQ(p.kind, "") << line;
    EXPECT_EQ(p.event.parsed_case(), v1::TrainerEvent::PARSED_NOT_SET) << line;
    EXPECT_EQ(p.event.json_line(), line);
  }
}

TEST(TrainerEventParserTest, LogEventsAreCut) {
  const std::string long_line(10000, 'x');
  v1::TrainerEvent e = TrainerEventParser::LogEvent(3, long_line, {});
  ASSERT_TRUE(e.has_log());
  EXPECT_EQ(e.log().rank(), 3);
  EXPECT_EQ(e.log().text().size(), kMaxLogLineBytes);
  EXPECT_TRUE(e.json_line().empty());
}

// proto3 strings must be valid UTF-8, or ternd fails to parse the whole
// ReportProgress request (and the agent drops the batch): stray bytes from a
// trainer's output become U+FFFD, cuts keep characters whole.
TEST(TrainerEventParserTest, TrainerOutputBecomesValidUtf8) {
  auto round_trips = [](const v1::TrainerEvent& e) {
    v1::TrainerEvent back;
    return back.ParseFromString(e.SerializeAsString());
  };
  const std::string cut_char = std::string(kMaxLogLineBytes - 1, 'x') + "\xc3\xa9";
  v1::TrainerEvent log = TrainerEventParser::LogEvent(0, cut_char, {});
  EXPECT_EQ(log.log().text(), std::string(kMaxLogLineBytes - 1, 'x'));
  EXPECT_TRUE(round_trips(log));
  log = TrainerEventParser::LogEvent(0, "latin-1 caf\xe9", {});
  EXPECT_EQ(log.log().text(), "latin-1 caf\xef\xbf\xbd");
  EXPECT_TRUE(round_trips(log));

  v1::JobSpec spec;
  TrainerEventParser parser(spec, 1);
  ParsedLine line = parser.ParseStdoutLine("NCCL INFO \xff\xfe", {});
  EXPECT_EQ(line.event.json_line(), "NCCL INFO \xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_TRUE(round_trips(line.event));
}

}  // namespace
}  // namespace tern::trainer
