// Job files (YAML/JSON to JobSpec), overrides, SHA-256 and the text output
// of ternctl.
#include "cli/job_file.h"

#include <google/protobuf/text_format.h>
#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>

#include <string>

#include "cli/render.h"

namespace tern::cli {
namespace {

using google::protobuf::util::MessageDifferencer;

v1::JobSpec FromText(const std::string& text) {
  v1::JobSpec spec;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &spec)) << text;
  return spec;
}

TEST(JobFileTest, YamlValuesTakeTheirFieldsTypes) {
  auto spec = ParseJobSpec(R"(
name: 123            # a string field keeps the text
labels: {team: vision, run: 7}
priority: -5
max_restarts: 0      # explicitly set optional
model: {arch: resnet20, width_multiplier: 0.5}
dataset:
  kind: idx
  path: /usr/share/datasets/fashion-mnist
  augment: no
  max_train_examples: 2000
quantization:
  method: hla-no-rescale
  granularity: channel
  lambda_max: 1e-2
optimization:
  optimizer: adamw
  epochs: 3
  lr_schedule: STEP
  step_milestones: [1, 2]
  seed: 7
resources: {ranks: 2, device_kind: cpu}
checkpoint: {every_steps: 100, directory: ~}
)",
                           /*yaml=*/true);
  ASSERT_TRUE(spec.ok()) << spec.status();
  const v1::JobSpec want = FromText(R"(
    name: "123" labels { key: "team" value: "vision" } labels { key: "run" value: "7" }
    priority: -5 max_restarts: 0
    model { arch: "resnet20" width_multiplier: 0.5 }
    dataset { kind: DATASET_IDX path: "/usr/share/datasets/fashion-mnist" augment: false
              max_train_examples: 2000 }
    quantization { method: METHOD_HLA_NO_RESCALE granularity: GRANULARITY_CHANNEL lambda_max: 0.01 }
    optimization { optimizer: OPTIMIZER_ADAMW epochs: 3 lr_schedule: SCHEDULE_STEP
                   step_milestones: 1 step_milestones: 2 seed: 7 }
    resources { ranks: 2 device_kind: DEVICE_CPU }
    checkpoint { every_steps: 100 })");
  EXPECT_TRUE(MessageDifferencer::Equals(*spec, want)) << spec->DebugString();
  EXPECT_TRUE(spec->has_max_restarts());  // presence survives the conversion
  EXPECT_FALSE(spec->optimization().has_lr());
}

TEST(JobFileTest, CamelCaseKeysAndFullEnumNamesWork) {
  auto spec = ParseJobSpec("optimization: {batchSize: 64, epochs: 1}\nquantization: {method: METHOD_TWN}\n", true);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->optimization().batch_size(), 64);
  EXPECT_EQ(spec->quantization().method(), v1::METHOD_TWN);
}

TEST(JobFileTest, UnknownFieldNamesThePathAndLine) {
  auto spec = ParseJobSpec("name: x\noptimization:\n  epoch: 3\n", true);
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(spec.status().message().find("optimization.epoch (line 3): unknown field"),
            std::string::npos)
      << spec.status();
}

TEST(JobFileTest, BadValuesNameTheFieldAndTheRule) {
  struct Case {
    const char* yaml;
    const char* want;
  };
  for (const Case& c : {Case{"optimization: {epochs: three}", "optimization.epochs (line 1): expected an integer"},
                        Case{"priority: 99999999999", "priority (line 1): 99999999999 is out of range"},
                        Case{"dataset: {augment: maybe}", "dataset.augment (line 1): expected true or false"},
                        Case{"quantization: {method: best}", "unknown QuantMethod 'best'"},
                        Case{"optimization: {lr: fast}", "optimization.lr (line 1): expected a number"},
                        Case{"model: resnet20", "model (line 1): expected a mapping"},
                        Case{"name: [a, b]", "name (line 1): expected a single value"},
                        Case{"name: 'unterminated", "YAML"},
                        Case{"name: caf\xe9", "name (line 1): not valid UTF-8 text"},
                        Case{"labels: {team: \"x\xff\"}", "labels.team (line 1): not valid UTF-8 text"},
                        Case{"labels: {\"\xc3\": x}", "labels (line 1): a key is not valid UTF-8 text"}}) {
    auto spec = ParseJobSpec(c.yaml, true);
    ASSERT_FALSE(spec.ok()) << c.yaml;
    EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument) << c.yaml;
    EXPECT_NE(spec.status().message().find(c.want), std::string::npos)
        << c.yaml << " -> " << spec.status();
  }
}

TEST(JobFileTest, JsonIsProto3Json) {
  auto spec = ParseJobSpec(
      R"({"name": "j", "optimization": {"epochs": 2, "batch_size": 32},
          "quantization": {"method": "METHOD_TTQ"}})",
      /*yaml=*/false);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->optimization().epochs(), 2);
  EXPECT_EQ(spec->quantization().method(), v1::METHOD_TTQ);
  auto bad = ParseJobSpec(R"({"optimisation": {}})", false);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("optimisation"), std::string::npos) << bad.status();
}

TEST(JobFileTest, MissingFileIsNotFound) {
  auto spec = LoadJobSpec("/nonexistent/job.yaml");
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), StatusCode::kNotFound);
}

TEST(JobFileTest, OverridesReplaceFileValues) {
  v1::JobSpec spec = FromText(R"(name: "a" labels { key: "k" value: "1" }
      optimization { epochs: 10 batch_size: 128 } quantization { method: METHOD_HLA })");
  SpecOverrides o;
  o.name = "b";
  o.method = "twn";
  o.device = "cuda";
  o.epochs = 2;
  o.ranks = 4;
  o.batch_size = 256;
  o.priority = 10;
  o.lr = 0.05;
  o.cuda_graph = true;
  o.labels = {"k=2", "empty="};
  ASSERT_TRUE(ApplyOverrides(o, &spec).ok());
  const v1::JobSpec want = FromText(R"(name: "b" priority: 10
      labels { key: "k" value: "2" } labels { key: "empty" value: "" }
      optimization { epochs: 2 batch_size: 256 lr: 0.05 cuda_graph: true }
      quantization { method: METHOD_TWN } resources { ranks: 4 device_kind: DEVICE_CUDA })");
  EXPECT_TRUE(MessageDifferencer::Equals(spec, want)) << spec.DebugString();

  SpecOverrides bad;
  bad.labels = {"novalue"};
  EXPECT_NE(ApplyOverrides(bad, &spec).message().find("--label"), std::string::npos);
  SpecOverrides bad_method;
  bad_method.method = "quantum";
  EXPECT_NE(ApplyOverrides(bad_method, &spec).message().find("--method"), std::string::npos);
}

TEST(JobFileTest, EnumNamesAreLenient) {
  const auto& states = *v1::JobState_descriptor();
  EXPECT_EQ(*ParseEnumValue(states, "running"), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(*ParseEnumValue(states, "JOB_STATE_FAILED"), v1::JOB_STATE_FAILED);
  EXPECT_EQ(*ParseEnumValue(states, "4"), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(*ParseEnumValue(*v1::Packing_descriptor(), "base3"), v1::PACKING_BASE3);
  EXPECT_FALSE(ParseEnumValue(states, "sleeping").ok());
}

TEST(RenderTest, DurationsAndPercentages) {
  EXPECT_EQ(FormatDuration(45), "45s");
  EXPECT_EQ(FormatDuration(192), "3m12s");
  EXPECT_EQ(FormatDuration(3720), "1h02m");
  EXPECT_EQ(FormatDuration(-1), "-");
  EXPECT_EQ(FormatPercent(0.8712), "87.12%");
  EXPECT_EQ(FormatPercent(std::nullopt), "-");
}

TEST(RenderTest, ProgressBarShowsEpochStepLossAccuracyAndEta) {
  v1::Progress p;
  p.set_epoch(2);
  p.set_epochs(3);
  p.set_step(50);
  p.set_total_steps(100);
  p.set_loss(0.5123);
  p.set_eta_seconds(72);
  EXPECT_EQ(FormatProgressBar(p, 0.812, 10),
            "epoch 2/3 [=====>    ] 50% step 50/100 loss 0.512 top-1 81.2% ETA 1m12s");
}

TEST(RenderTest, EventLines) {
  v1::JobEvent e;
  e.set_sequence(7);
  *e.mutable_time() = google::protobuf::util::TimeUtil::SecondsToTimestamp(1700000000);
  e.mutable_state_change()->set_from_state(v1::JOB_STATE_QUEUED);
  e.mutable_state_change()->set_to_state(v1::JOB_STATE_ADMITTED);
  e.mutable_state_change()->mutable_reason()->set_code("ADMITTED");
  EXPECT_EQ(FormatEvent(e), "2023-11-14T22:13:20Z #7 state QUEUED -> ADMITTED (ADMITTED)");

  v1::JobEvent started;
  started.set_sequence(9);
  started.set_attempt(2);
  *started.mutable_time() = e.time();
  v1::AttemptStarted* a = started.mutable_attempt_started();
  a->set_total_steps(400);
  a->set_device("cuda:0");
  a->set_process_group("nccl");
  EXPECT_EQ(FormatEvent(started),
            "2023-11-14T22:13:20Z #9 attempt 2 started on cuda:0 (nccl), fresh start, 400 steps");
  a->set_resumed_from_step(120);
  a->set_process_group("none");
  EXPECT_EQ(FormatEvent(started),
            "2023-11-14T22:13:20Z #9 attempt 2 started on cuda:0, resumed from the checkpoint at "
            "step 120/400");
}

TEST(RenderTest, UnknownAndCancellingStatesShowWithoutEndingAWatch) {
  EXPECT_EQ(StateName(v1::JOB_STATE_CANCELLING), "CANCELLING");
  EXPECT_FALSE(IsTerminal(v1::JOB_STATE_CANCELLING));
  EXPECT_TRUE(IsTerminal(v1::JOB_STATE_CANCELLED));
  // A state a newer ternd may send: named by its number, not terminal.
  const auto unknown = static_cast<v1::JobState>(9);
  EXPECT_EQ(StateName(unknown), "UNKNOWN_9");
  EXPECT_FALSE(IsTerminal(unknown));
  v1::JobEvent e;
  e.set_sequence(3);
  *e.mutable_time() = google::protobuf::util::TimeUtil::SecondsToTimestamp(1700000000);
  e.mutable_state_change()->set_from_state(v1::JOB_STATE_RUNNING);
  e.mutable_state_change()->set_to_state(unknown);
  EXPECT_EQ(FormatEvent(e), "2023-11-14T22:13:20Z #3 state RUNNING -> UNKNOWN_9");
}

TEST(RenderTest, JobDetailsShowTheLastFailureAndTheCheckpointDirectory) {
  v1::Job job;
  job.set_id("4");
  job.set_state(v1::JOB_STATE_RESTARTING);
  job.set_checkpoint_directory("/ckpt/job-4");
  v1::JobFailure* f = job.mutable_last_failure();
  f->set_attempt(2);
  f->set_rank(1);
  f->set_agent_id("gpu-3");
  f->set_exit_code(1);
  f->set_trainer_code("DATA_LOSS");
  f->set_reason("TRAINER_FAILED");
  f->set_message("corrupt shard");
  const std::string details = FormatJobDetails(job);
  EXPECT_NE(details.find("failure:    attempt 2, rank 1 on gpu-3: TRAINER_FAILED, exit code 1, "
                         "DATA_LOSS (corrupt shard)\n"),
            std::string::npos)
      << details;
  EXPECT_NE(details.find("checkpoints: /ckpt/job-4\n"), std::string::npos) << details;
}

TEST(RenderTest, ResultsShowTop1OrCocoAp) {
  v1::JobResult classification;
  classification.set_ternary_top1(0.912);
  classification.set_fp_top1(0.92);
  EXPECT_EQ(FormatResult(classification).substr(0, 39), "top-1 ternary 91.20%, latent fp 92.00%,");
  v1::JobResult detection;
  detection.mutable_ternary_detection()->set_ap(0.201);
  detection.mutable_ternary_detection()->set_ap50(0.451);
  detection.mutable_fp_detection()->set_ap(0.21);
  detection.mutable_fp_detection()->set_ap50(0.47);
  EXPECT_EQ(FormatResult(detection).substr(0, 76),
            "AP50 ternary 45.10%, latent fp 47.00% (AP ternary 20.10%, latent fp 21.00%),");
  // The validation split's figures follow when the job held one out.
  classification.set_val_ternary_top1(0.9);
  classification.set_val_fp_top1(0.91);
  EXPECT_NE(FormatResult(classification)
                .find("; validation top-1 ternary 90.00%, latent fp 91.00%, 0.00 bits/weight"),
            std::string::npos)
      << FormatResult(classification);
  v1::JobResult detection_val = detection;
  detection_val.mutable_val_ternary_detection()->set_ap(0.3);
  detection_val.mutable_val_ternary_detection()->set_ap50(0.6);
  EXPECT_NE(FormatResult(detection_val).find("; validation AP50 ternary 60.00%"), std::string::npos)
      << FormatResult(detection_val);
  EXPECT_EQ(FormatResult(detection).find("validation"), std::string::npos);
  v1::JobEvent e;
  *e.mutable_epoch_end()->mutable_metrics()->mutable_fp_detection() = detection.fp_detection();
  e.mutable_epoch_end()->mutable_metrics()->set_eval_split("val");
  EXPECT_NE(FormatEvent(e).find("epoch 0 done: val AP50 fp 47.00% (AP fp 21.00%)"),
            std::string::npos)
      << FormatEvent(e);
}

// The switch to the ternary forward: top-1 for classification, AP50 for
// detection (whose top-1 fields are unset), the re-estimated value when set.
TEST(RenderTest, PhaseSwitchShowsTop1OrAp50) {
  v1::JobEvent e;
  v1::PhaseSwitch* p = e.mutable_phase_switch();
  p->set_step(84);
  p->set_epoch(2);
  p->set_eval_split("val");
  p->set_fp_top1(0.8);
  p->set_ternary_top1(0.1);
  p->set_ternary_bn_top1(0.7);
  p->set_bn_batches(16);
  EXPECT_NE(FormatEvent(e).find("switch to ternary at step 84 (epoch 2): val top-1 FP 80.00%, "
                                "ternary 10.00%, ternary after BatchNorm re-estimation on 16 "
                                "batches 70.00%"),
            std::string::npos)
      << FormatEvent(e);
  v1::JobEvent d;
  v1::PhaseSwitch* q = d.mutable_phase_switch();
  q->set_step(10);
  q->set_epoch(1);
  q->set_eval_split("val");
  q->mutable_fp_detection()->set_ap(0.2);
  q->mutable_fp_detection()->set_ap50(0.5);
  q->mutable_ternary_detection()->set_ap(0.01);
  q->mutable_ternary_detection()->set_ap50(0.03);
  EXPECT_NE(FormatEvent(d).find("switch to ternary at step 10 (epoch 1): val AP50 FP 50.00%, "
                                "ternary 3.00%"),
            std::string::npos)
      << FormatEvent(d);
  EXPECT_EQ(FormatEvent(d).find("re-estimation"), std::string::npos) << FormatEvent(d);
  q->mutable_ternary_bn_detection()->set_ap(0.1);
  q->mutable_ternary_bn_detection()->set_ap50(0.4);
  q->set_bn_batches(4);
  q->set_bn_kept(true);
  EXPECT_NE(FormatEvent(d).find("ternary after BatchNorm re-estimation on 4 batches 40.00% (kept)"),
            std::string::npos)
      << FormatEvent(d);
}

TEST(RenderTest, DetectionResultsShowArAndNonStandardMaxDetections) {
  v1::JobResult detection;
  detection.mutable_ternary_detection()->set_ap(0.201);
  detection.mutable_ternary_detection()->set_ap50(0.451);
  detection.mutable_ternary_detection()->set_ar100(0.3);
  detection.mutable_fp_detection()->set_ap(0.21);
  detection.mutable_fp_detection()->set_ap50(0.47);
  detection.mutable_fp_detection()->set_ar100(0.32);
  EXPECT_EQ(FormatResult(detection).substr(0, 117),
            "AP50 ternary 45.10%, latent fp 47.00% (AP ternary 20.10%, latent fp 21.00%; "
            "AR@100 ternary 30.00%, latent fp 32.00%),");
  v1::Job job;
  job.set_id("j1");
  *job.mutable_result() = detection;
  EXPECT_EQ(FormatJobDetails(job).find("not the standard COCO"), std::string::npos);
  job.mutable_spec()->mutable_model()->set_max_detections(20);
  EXPECT_NE(FormatJobDetails(job).find("(model.max_detections 20: AP and AR@100 are at maxDets "
                                       "20, not the standard COCO numbers)"),
            std::string::npos)
      << FormatJobDetails(job);
}

}  // namespace
}  // namespace tern::cli
