// Fuzz target: the `.tern` artifact reader (quant::ParseArtifact).
// Each input is parsed twice: as is, and with its last four bytes replaced
// by the right CRC-32, so that mutations get past the checksum into the
// header JSON and the payload checks.
// Properties: nothing throws or crashes; an artifact the reader accepts is
// well-formed for the writer (SerializeArtifact TERN_CHECKs its invariants);
// writing it and reading it back gives the artifact that was read from the
// input (every field, float bits included) and the same bytes again; and a
// file assembled here byte by byte, independently of the writer, reads as
// the artifact it spells and is re-written as exactly its input (a writer
// and reader wrong the same way would pass the round trips above).
#include <zlib.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/check.h"
#include "fuzz/fuzz_target.h"
#include "quant/artifact.h"

namespace {

using tern::quant::Artifact;
using tern::quant::ArtifactTensor;

// Bitwise: NaN scales or values compare equal to themselves, -0 differs
// from +0.
bool SameFloats(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Every field of the two artifacts is the same.
void CheckSame(const Artifact& read, const Artifact& again) {
  TERN_CHECK(again.architecture == read.architecture) << again.architecture;
  TERN_CHECK(again.metadata == read.metadata) << again.metadata;
  TERN_CHECK(again.packing == read.packing);
  TERN_CHECK(again.tensors.size() == read.tensors.size());
  for (size_t i = 0; i < read.tensors.size(); ++i) {
    const ArtifactTensor& x = read.tensors[i];
    const ArtifactTensor& y = again.tensors[i];
    TERN_CHECK(y.name == x.name) << y.name << " vs " << x.name;
    TERN_CHECK(y.shape == x.shape) << x.name;
    TERN_CHECK(y.kind == x.kind) << x.name;
    TERN_CHECK(y.granularity == x.granularity || x.kind == ArtifactTensor::Kind::kFloat32)
        << x.name;
    TERN_CHECK(y.codes == x.codes) << x.name;
    TERN_CHECK(SameFloats(y.values, x.values)) << x.name;
    TERN_CHECK(SameFloats(y.pos_scale, x.pos_scale)) << x.name;
    TERN_CHECK(SameFloats(y.neg_scale, x.neg_scale)) << x.name;
  }
}

template <typename T>
void PutLittleEndian(std::string& out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) {
    out.push_back(static_cast<char>((static_cast<uint64_t>(value) >> (8 * i)) & 0xff));
  }
}

// A 2-bit file spelled out: "w" [2, 2] ternary per tensor, codes
// {+1, 0, -1, +1} (2-bit codes 01 00 10 01, low bits first: byte 0x61),
// scales Wp 0.5 and Wn 0.25; then "b" [2] float32 {1, -2}. The header is in the
// writer's form (keys sorted, no spaces), so re-writing gives these bytes.
std::string HandBuiltFile() {
  const std::string header =
      R"({"architecture":{"arch":"tiny"},"metadata":{"method":"hla"},"packing":"2bit",)"
      R"("tensors":[{"codes_length":1,"codes_offset":0,"granularity":"tensor","kind":"ternary",)"
      R"("name":"w","scales_length":8,"scales_offset":1,"shape":[2,2]},)"
      R"({"kind":"float32","length":8,"name":"b","offset":9,"shape":[2]}]})";
  const std::string payload("\x61"                   // codes
                            "\x00\x00\x00\x3f"       // +0.5
                            "\x00\x00\x80\x3e"       // 0.25
                            "\x00\x00\x80\x3f"       // 1
                            "\x00\x00\x00\xc0",      // -2
                            17);
  std::string out = "TERN";
  PutLittleEndian<uint16_t>(out, 1);
  PutLittleEndian<uint16_t>(out, 0);
  PutLittleEndian<uint32_t>(out, static_cast<uint32_t>(header.size()));
  PutLittleEndian<uint64_t>(out, payload.size());
  out += header;
  out += payload;
  PutLittleEndian<uint32_t>(
      out, static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(out.data()),
                                       static_cast<uInt>(out.size()))));
  return out;
}

// What HandBuiltFile() holds.
Artifact HandBuiltArtifact() {
  Artifact a;
  a.architecture = R"({"arch":"tiny"})";
  a.metadata = R"({"method":"hla"})";
  a.packing = tern::quant::Packing::kTwoBit;
  ArtifactTensor w;
  w.name = "w";
  w.shape = {2, 2};
  w.kind = ArtifactTensor::Kind::kTernary;
  w.granularity = tern::quant::Granularity::kTensor;
  w.codes = {1, 0, -1, 1};
  w.pos_scale = {0.5f};
  w.neg_scale = {0.25f};
  ArtifactTensor b;
  b.name = "b";
  b.shape = {2};
  b.values = {1.0f, -2.0f};
  a.tensors = {w, b};
  return a;
}

void CheckHandBuiltFileOnce() {
  static const bool checked = [] {
    const std::string file = HandBuiltFile();
    tern::StatusOr<Artifact> read = tern::quant::ParseArtifact(file);
    TERN_CHECK(read.ok()) << read.status();
    CheckSame(HandBuiltArtifact(), *read);
    TERN_CHECK(tern::quant::SerializeArtifact(*read) == file) << "re-written differently";
    TERN_CHECK(tern::quant::SerializeArtifact(HandBuiltArtifact()) == file)
        << "written differently";
    return true;
  }();
  (void)checked;
}

void ParseAndCheck(std::string_view bytes) {
  CheckHandBuiltFileOnce();
  tern::StatusOr<Artifact> artifact = tern::quant::ParseArtifact(bytes);
  if (!artifact.ok()) return;
  const std::string written = tern::quant::SerializeArtifact(*artifact);
  tern::StatusOr<Artifact> again = tern::quant::ParseArtifact(written);
  TERN_CHECK(again.ok()) << again.status();
  CheckSame(*artifact, *again);
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
      HandBuiltFile(),
  };
}
