// Fuzz target: `ternctl submit` job files (cli::ParseJobSpec), YAML when the
// first byte is odd, proto3 JSON otherwise.
// Properties: nothing throws or crashes; a spec that parses survives the
// wire format and its own JSON form: ParseJobSpec(JSON of spec) == spec.
#include <google/protobuf/util/json_util.h>

#include <string>
#include <vector>

#include "cli/job_file.h"
#include "common/check.h"
#include "fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool yaml = (data[0] & 1) != 0;
  const std::string_view text = tern::fuzz::AsText(data + 1, size - 1);
  tern::StatusOr<tern::v1::JobSpec> spec = tern::cli::ParseJobSpec(text, yaml);
  if (!spec.ok()) return 0;

  std::string wire;
  TERN_CHECK(spec->SerializeToString(&wire));
  tern::v1::JobSpec from_wire;
  TERN_CHECK(from_wire.ParseFromString(wire)) << spec->DebugString();

  std::string json;
  TERN_CHECK(google::protobuf::util::MessageToJsonString(*spec, &json).ok());
  tern::StatusOr<tern::v1::JobSpec> again = tern::cli::ParseJobSpec(json, /*yaml=*/false);
  TERN_CHECK(again.ok()) << again.status() << ": " << json;
  std::string wire_again;
  TERN_CHECK(again->SerializeToString(&wire_again));
  // Deterministic for the same message (no unknown fields, maps aside).
  if (spec->labels().empty()) {
    TERN_CHECK(wire_again == wire) << json;
  }
  return 0;
}

std::vector<std::string> TernFuzzSeeds() {
  return {
      "\x01"  // YAML
      "name: fmnist-hla\n"
      "labels: {team: vision, run: \"7\"}\n"
      "model: {arch: resnet20, width_multiplier: 0.5}\n"
      "dataset: {kind: idx, path: /usr/share/datasets/fashion-mnist, max_train_examples: 8000}\n"
      "quantization:\n"
      "  method: hla\n"
      "  granularity: channel\n"
      "optimization: {epochs: 15, batch_size: 256, lr: 0.1, lr_schedule: cosine, bf16: false,\n"
      "               step_milestones: [5, 10]}\n"
      "resources: {ranks: 2, device_kind: cpu}\n",
      "\x01"
      "name: 123\n"
      "quantization: {method: METHOD_TWN}\n"
      "optimization:\n  epochs: 1\n  micro_batches: 2\n",
      std::string("\x00", 1) +  // JSON
          R"({"name": "fmnist-hla", "model": {"arch": "resnet20"},)"
          R"( "dataset": {"kind": "DATASET_IDX", "path": "/usr/share/datasets/fashion-mnist"},)"
          R"( "quantization": {"method": "METHOD_HLA", "granularity": "GRANULARITY_CHANNEL"},)"
          R"( "optimization": {"epochs": 15, "batchSize": 256, "lr": 0.1},)"
          R"( "resources": {"ranks": 2}, "priority": 3})",
  };
}
