// Fuzz target: the job spec a tern-trainer reads (trainer::ParseTrainerSpec,
// the proto3 JSON of tern.v1.JobSpec parsed with nlohmann::json).
// Property: nothing throws or crashes; bad specs are a Status naming the
// field.
#include <string>
#include <vector>

#include "fuzz/fuzz_target.h"
#include "worker/trainer/spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)tern::trainer::ParseTrainerSpec(std::string(tern::fuzz::AsText(data, size)));
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
