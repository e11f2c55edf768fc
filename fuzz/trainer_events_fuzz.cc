// Fuzz target: the trainer's JSON event lines (trainer_protocol/), as the
// agent relays them from the trainer's stdout (trainer::TrainerEventParser)
// and as ternd parses the stored lines again (trainer::ParseTrainerLine), plus
// the stderr-line wrappers of both (TrainerEventParser::LogEvent, LogPayload).
// Properties: nothing throws or crashes; every message made from a line
// survives the protobuf wire format (proto3 strings must be valid UTF-8, or
// the gRPC call that carries them fails); a stderr line of any bytes becomes
// a `log` event that ternd parses back with its rank.
#include <google/protobuf/timestamp.pb.h>

#include <string>
#include <vector>

#include "common/check.h"
#include "fuzz/fuzz_target.h"
#include "trainer_protocol/trainer_events.h"

namespace {

template <typename Message>
void CheckWireRoundTrip(const Message& m) {
  std::string bytes;
  TERN_CHECK(m.SerializeToString(&bytes)) << m.DebugString();
  Message back;
  TERN_CHECK(back.ParseFromString(bytes)) << "does not parse back: " << m.DebugString();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view line = tern::fuzz::AsText(data, size);
  google::protobuf::Timestamp now;
  now.set_seconds(1700000000);

  tern::v1::JobSpec spec;
  spec.mutable_optimization()->set_epochs(3);
  tern::trainer::TrainerEventParser parser(spec, 4242);
  const tern::trainer::ParsedLine parsed = parser.ParseStdoutLine(line, now);
  CheckWireRoundTrip(parsed.event);
  // A second line after the first (the parser keeps steps_per_epoch).
  CheckWireRoundTrip(parser.ParseStdoutLine(line, now).event);

  const tern::v1::TrainerEvent log = tern::trainer::TrainerEventParser::LogEvent(1, line, now);
  CheckWireRoundTrip(log);

  // As ternd reads it, and as the agent does for a METHOD_FP job.
  for (const tern::trainer::ParseOptions& options :
       {tern::trainer::ParseOptions{}, tern::trainer::ParseOptions{true, 3}}) {
    tern::StatusOr<tern::trainer::TrainerLine> stored =
        tern::trainer::ParseTrainerLine(line, options);
    if (!stored.ok()) continue;
    CheckWireRoundTrip(stored->started);
    CheckWireRoundTrip(stored->progress);
    CheckWireRoundTrip(stored->epoch_end);
    CheckWireRoundTrip(stored->checkpoint);
    CheckWireRoundTrip(stored->result);
    CheckWireRoundTrip(stored->failure);
    CheckWireRoundTrip(stored->log);
  }

  const std::string payload = tern::trainer::LogPayload(3, line);
  tern::StatusOr<tern::trainer::TrainerLine> wrapped = tern::trainer::ParseTrainerLine(payload);
  TERN_CHECK(wrapped.ok()) << wrapped.status() << ": " << payload;
  TERN_CHECK(wrapped->kind == tern::trainer::TrainerEventKind::kLog) << payload;
  TERN_CHECK(wrapped->log.rank() == 3) << payload;
  CheckWireRoundTrip(wrapped->log);
  return 0;
}

std::vector<std::string> TernFuzzSeeds() {
  return {
      R"({"event":"started","job":"j","rank":0,"world_size":2,"time":1.5,"pid":7,)"
      R"("steps_per_epoch":100,"device":"cpu"})",
      R"({"event":"progress","job":"j","rank":0,"world_size":2,"time":1.7e9,)"
      R"("epoch":1,"epochs":3,"step":40,"total_steps":120,"loss":null,"lr":0.05,)"
      R"("images_per_second":512.5,"eta_seconds":9,"reg_lambda":0.002,"kappa":7.5,)"
      R"("phase":2,"step_seconds":0.125,"allreduce_seconds":0.03,"data_wait_seconds":0.004,)"
      R"("gpu_memory_bytes":1073741824,"gpu_peak_memory_bytes":6442450944})",
      R"({"event":"epoch_end","rank":0,"epoch":2,"eval_split":"val","train_loss":0.7,)"
      R"("fp":{"loss":0.5,"top1":0.9,"top5":1,"examples":10},)"
      R"("ternary":{"loss":0.6,"top1":0.85,"top5":0.99,"examples":10},"epoch_seconds":3.5,)"
      R"("layers":[{"name":"a","quantized":true,"numel":200,"sparsity":0.3,"alpha":0.1,)"
      R"("alpha_negative":0.09,"delta":0.05,"cos_wt":0.8,"flips":10,"flips_per_step":2},)"
      R"({"name":"fc","quantized":false}]})",
      R"({"event":"epoch_end","epoch":1,"eval_split":"val","train_loss":2.5,)"
      R"("fp":{"ap":0.4,"ap50":0.7,"ap75":0.3,"ap_small":0.1,"ap_medium":0.4,"ap_large":0.6},)"
      R"("ternary":{"ap":0.3}})",
      R"({"event":"checkpoint","rank":0,"step":50,"epoch":1,"path":"/c/s","seconds":0.25})",
      R"({"event":"finished","rank":0,"fp":{"top1":0.9,"top5":1},"ternary":{"top1":0.8},)"
      R"("artifact":{"top1":0.79,"top5":0.98},"artifact_path":"/a/m.tern",)"
      R"("artifact_bytes":12345,"bits_per_weight":1.7,"steps":99,"wall_seconds":12.5,)"
      R"("images_per_second":100,"layers":[{"name":"b","numel":4,"flips_per_step":1}]})",
      R"({"event":"failed","rank":1,"code":"UNAVAILABLE","reason":"gradient all-reduce failed"})",
      R"({"event":"log","rank":0,"text":"W1127 warning: \u00e9t\u00e9"})",
      "plain stderr text \xc3\xa9 and a broken byte \xff",
  };
}
