// Fuzz target: the job spec a tern-trainer reads (trainer::ParseTrainerSpec,
// the proto3 JSON of tern.v1.JobSpec parsed with nlohmann::json).
// Properties: nothing throws or crashes; a bad spec is INVALID_ARGUMENT
// whose message starts with what it is about: "job spec: " when the text is
// not a JSON object, else the field's path and ": " ("optimization.lr: must
// be in (0, 10], got 20"), the path starting with a top-level field of
// JobSpec or with a key of the input (an unknown field); an accepted spec
// passes Validate() (spec/'s rules, the ones ternd applies).
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common/check.h"
#include "fuzz/fuzz_target.h"
#include "worker/trainer/spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(tern::fuzz::AsText(data, size));
  const tern::StatusOr<tern::trainer::TrainerSpec> spec = tern::trainer::ParseTrainerSpec(text);
  if (spec.ok()) {
    TERN_CHECK(spec->Validate().ok()) << spec->Validate();
    return 0;
  }
  const tern::Status& status = spec.status();
  TERN_CHECK(status.code() == tern::StatusCode::kInvalidArgument) << status;
  const std::string& message = status.message();
  const nlohmann::json root = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    TERN_CHECK(message.rfind("job spec: ", 0) == 0) << message;
    return 0;
  }
  // The field: top-level names (both JSON spellings where they differ) and
  // the input's own keys.
  static const std::set<std::string> kTopLevel = {
      "name",         "task",      "collective_timeout_seconds", "collectiveTimeoutSeconds",
      "owner",        "labels",    "priority",                   "max_restarts",
      "maxRestarts",  "model",     "dataset",                    "quantization",
      "optimization", "resources", "checkpoint",                 "events"};
  bool named = false;
  const auto names = [&](const std::string& first) {
    return message.size() > first.size() && message.compare(0, first.size(), first) == 0 &&
           (message[first.size()] == '.' || message[first.size()] == '[' ||
            message.compare(first.size(), 2, ": ") == 0);
  };
  for (const std::string& field : kTopLevel) named = named || names(field);
  for (const auto& item : root.items()) named = named || names(item.key());
  TERN_CHECK(named) << "no field named: " << message;
  return 0;
}

std::vector<std::string> TernFuzzSeeds() {
  return {
      R"({"name":"fmnist-hla","model":{"arch":"resnet20","widthMultiplier":0.5},)"
      R"("dataset":{"kind":"DATASET_IDX","path":"/usr/share/datasets/fashion-mnist",)"
      R"("maxTrainExamples":8000,"valFraction":0.1,"augment":true},)"
      R"("quantization":{"method":"METHOD_HLA","granularity":"GRANULARITY_CHANNEL",)"
      R"("lambdaMax":0.002,"kappaStart":1,"kappaEnd":16,"keepFirstFp":true},)"
      R"("optimization":{"epochs":15,"batchSize":256,"lr":0.1,"lrSchedule":"SCHEDULE_STEP",)"
      R"("stepMilestones":[5,10],"microBatches":2,"bf16":false,"seed":3},)"
      R"("resources":{"ranks":2,"deviceKind":"DEVICE_CPU","threadsPerRank":1},)"
      R"("checkpoint":{"everySteps":100},"events":{"progressEverySteps":10}})",
      R"({"task":"TASK_DETECTION","model":{"arch":"resnet18","maxDetections":50},)"
      R"("dataset":{"kind":"DATASET_COCO","path":"/data/coco","inputSize":64},)"
      R"("optimization":{"epochs":1,"optimizer":"OPTIMIZER_ADAMW","lr":0.001}})",
  };
}
