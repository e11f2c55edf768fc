// Fuzz target: the `.tern` artifact reader (quant::ParseArtifact).
// Each input is parsed twice: as is, and with its last four bytes replaced
// by the right CRC-32, so that mutations get past the checksum into the
// header JSON and the payload checks.
// Properties: nothing throws or crashes; an artifact the reader accepts is
// well-formed for the writer (SerializeArtifact TERN_CHECKs its invariants),
// and writing it and reading it back gives the same bytes again.
#include <zlib.h>

#include <random>
#include <string>
#include <vector>

#include "common/check.h"
#include "fuzz/fuzz_target.h"
#include "quant/artifact.h"

namespace {

using tern::quant::Artifact;
using tern::quant::ArtifactTensor;

void ParseAndCheck(std::string_view bytes) {
  tern::StatusOr<Artifact> artifact = tern::quant::ParseArtifact(bytes);
  if (!artifact.ok()) return;
  const std::string written = tern::quant::SerializeArtifact(*artifact);
  tern::StatusOr<Artifact> again = tern::quant::ParseArtifact(written);
  TERN_CHECK(again.ok()) << again.status();
  TERN_CHECK(tern::quant::SerializeArtifact(*again) == written);
}

Artifact SeedArtifact(tern::quant::Packing packing, bool empty) {
  std::mt19937 rng(7);
  Artifact a;
  a.architecture = R"({"arch":"tiny","num_classes":3})";
  a.metadata = R"({"method":"hla","top1":0.9})";
  a.packing = packing;
  if (empty) return a;
  ArtifactTensor conv;
  conv.name = "conv.weight";
  conv.shape = {3, 2, 3, 3};
  conv.kind = ArtifactTensor::Kind::kTernary;
  conv.granularity = tern::quant::Granularity::kChannel;
  for (int i = 0; i < 54; ++i) conv.codes.push_back(static_cast<int8_t>(rng() % 3) - 1);
  conv.pos_scale = {0.5f, 0.25f, 0.125f};
  conv.neg_scale = {0.5f, 0.3f, 0.1f};
  ArtifactTensor fc;
  fc.name = "fc.weight";
  fc.shape = {7, 5};
  fc.kind = ArtifactTensor::Kind::kTernary;
  for (int i = 0; i < 35; ++i) fc.codes.push_back(static_cast<int8_t>(rng() % 3) - 1);
  fc.pos_scale = {0.75f};
  fc.neg_scale = {0.75f};
  ArtifactTensor bias;
  bias.name = "fc.bias";
  bias.shape = {7};
  for (int i = 0; i < 7; ++i) bias.values.push_back(0.125f * static_cast<float>(i) - 0.5f);
  a.tensors = {conv, fc, bias};
  return a;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes = tern::fuzz::AsText(data, size);
  ParseAndCheck(bytes);
  if (size >= 24) {
    std::string fixed(bytes);
    const uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(fixed.data()),
                            static_cast<uInt>(fixed.size() - 4));
    for (int i = 0; i < 4; ++i) {
      fixed[fixed.size() - 4 + i] = static_cast<char>((crc >> (8 * i)) & 0xff);
    }
    ParseAndCheck(fixed);
  }
  return 0;
}

std::vector<std::string> TernFuzzSeeds() {
  return {
      tern::quant::SerializeArtifact(SeedArtifact(tern::quant::Packing::kTwoBit, false)),
      tern::quant::SerializeArtifact(SeedArtifact(tern::quant::Packing::kBase3, false)),
      tern::quant::SerializeArtifact(SeedArtifact(tern::quant::Packing::kBase3, true)),
  };
}
