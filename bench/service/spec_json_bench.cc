// tern_spec_json_bench: what checking one JobSpec costs SubmitJob, with the
// spec's JSON built by reflection (server/proto_json.h, what ternd does) and
// printed by protobuf and parsed again (what it did), in one run.
//
//   tern_spec_json_bench [--iterations 20000]
//
// Prints the microseconds per spec of each conversion and of the whole check
// (ValidateJobSpec). The spec is a typical small one (tern_service_load_bench's,
// with two labels and an explicit optimizer).
#include <google/protobuf/util/json_util.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "server/proto_json.h"
#include "server/spec_validation.h"
#include "tern/v1/job.pb.h"

namespace {

using Clock = std::chrono::steady_clock;

tern::v1::JobSpec TypicalSpec() {
  tern::v1::JobSpec spec;
  spec.set_name("sweep-lambda-0.1-seed-3");
  spec.set_owner("bench");
  (*spec.mutable_labels())["sweep"] = "hla-lambda";
  (*spec.mutable_labels())["seed"] = "3";
  spec.mutable_model()->set_arch("resnet20");
  spec.mutable_model()->set_width_multiplier(0.5);
  spec.mutable_dataset()->set_kind(tern::v1::DATASET_IDX);
  spec.mutable_dataset()->set_path("/usr/share/datasets/fashion-mnist");
  spec.mutable_dataset()->set_max_train_examples(4096);
  spec.mutable_quantization()->set_method(tern::v1::METHOD_HLA);
  spec.mutable_quantization()->set_lambda_max(0.1);
  spec.mutable_optimization()->set_epochs(15);
  spec.mutable_optimization()->set_batch_size(128);
  spec.mutable_optimization()->set_lr(0.1);
  spec.mutable_optimization()->set_seed(3);
  spec.mutable_resources()->set_ranks(2);
  spec.mutable_resources()->set_device_kind(tern::v1::DEVICE_CPU);
  return spec;
}

template <typename F>
double MicrosPer(int iterations, F&& body) {
  const auto start = Clock::now();
  for (int i = 0; i < iterations; ++i) body();
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count() / iterations;
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 20000;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
      iterations = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: tern_spec_json_bench [--iterations N]\n");
      return 2;
    }
  }
  if (iterations <= 0) {
    std::fprintf(stderr, "--iterations: want a positive number\n");
    return 2;
  }
  const tern::v1::JobSpec spec = TypicalSpec();
  if (!tern::server::ValidateJobSpec(spec).ok()) {
    std::fprintf(stderr, "the typical spec is invalid: %s\n",
                 tern::server::ValidateJobSpec(spec).ToString().c_str());
    return 1;
  }
  size_t sink = 0;
  const double reflection =
      MicrosPer(iterations, [&] { sink += tern::server::ProtoToJson(spec)->size(); });
  const double printed = MicrosPer(iterations, [&] {
    google::protobuf::util::JsonPrintOptions print;
    print.preserve_proto_field_names = true;
    std::string text;
    (void)google::protobuf::util::MessageToJsonString(spec, &text, print);
    sink += nlohmann::json::parse(text).size();
  });
  const double check =
      MicrosPer(iterations, [&] { sink += tern::server::ValidateJobSpec(spec).ok() ? 1 : 0; });
  std::printf("| conversion | us per spec |\n|---|---:|\n");
  std::printf("| reflection (ProtoToJson) | %.2f |\n", reflection);
  std::printf("| protobuf print + parse | %.2f |\n", printed);
  std::printf("| whole check (ValidateJobSpec) | %.2f |\n", check);
  std::printf("(%d iterations each; checksum %zu)\n", iterations, sink);
  return 0;
}
