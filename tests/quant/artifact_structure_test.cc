// The `.tern` reader's structural checks after the checksum
// (quant/artifact.cc): each test builds a file whose lengths and CRC-32 are
// valid, so that only the one structural fault it plants can stop the
// reader, and expects DATA_LOSS naming that fault. (Truncations and flipped
// bytes, in artifact_test.cc, all stop at the length or CRC check.)
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstring>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "quant/artifact.h"
#include "quant/packing.h"

namespace tern::quant {
namespace {

using json = nlohmann::json;

constexpr size_t kPrefix = 20;  // magic, version, header length, payload length

// conv.weight: ternary per channel; fc.weight: ternary per tensor, 35 codes
// (the last packed byte has padding); fc.bias: float32.
Artifact MakeArtifact(Packing packing) {
  Artifact a;
  a.architecture = R"({"arch":"tiny"})";
  a.metadata = R"({"method":"hla"})";
  a.packing = packing;
  ArtifactTensor conv;
  conv.name = "conv.weight";
  conv.shape = {3, 2, 1, 1};
  conv.kind = ArtifactTensor::Kind::kTernary;
  conv.granularity = Granularity::kChannel;
  conv.codes = {1, 0, -1, 1, 0, -1};
  conv.pos_scale = {0.5f, 0.25f, 0.125f};
  conv.neg_scale = {0.5f, 0.3f, 0.1f};
  ArtifactTensor fc;
  fc.name = "fc.weight";
  fc.shape = {7, 5};
  fc.kind = ArtifactTensor::Kind::kTernary;
  for (int i = 0; i < 35; ++i) fc.codes.push_back(static_cast<int8_t>(i % 3 - 1));
  fc.pos_scale = {0.75f};
  fc.neg_scale = {0.5f};
  ArtifactTensor bias;
  bias.name = "fc.bias";
  bias.shape = {7};
  bias.values = {1, 2, 3, 4, 5, 6, 7};
  a.tensors = {conv, fc, bias};
  return a;
}

// A valid file taken apart: its header (parsed) and payload.
struct Parts {
  json header;
  std::string payload;
};

Parts Split(const std::string& file) {
  uint32_t header_len = 0;
  std::memcpy(&header_len, file.data() + 8, 4);  // little-endian hosts only
  Parts p;
  p.header = json::parse(file.substr(kPrefix, header_len));
  p.payload = file.substr(kPrefix + header_len, file.size() - kPrefix - header_len - 4);
  return p;
}

template <typename T>
void PutLittleEndian(std::string& out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) {
    out.push_back(static_cast<char>((static_cast<uint64_t>(value) >> (8 * i)) & 0xff));
  }
}

// A file with these exact header bytes and payload, correct lengths and a
// correct CRC-32.
std::string Assemble(const std::string& header_text, const std::string& payload) {
  std::string out = "TERN";
  PutLittleEndian<uint16_t>(out, kArtifactMajorVersion);
  PutLittleEndian<uint16_t>(out, kArtifactMinorVersion);
  PutLittleEndian<uint32_t>(out, static_cast<uint32_t>(header_text.size()));
  PutLittleEndian<uint64_t>(out, payload.size());
  out += header_text;
  out += payload;
  const uLong crc = crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(out.data()),
                          static_cast<uInt>(out.size()));
  PutLittleEndian<uint32_t>(out, static_cast<uint32_t>(crc));
  return out;
}

// The valid file of `packing` with `mutate` applied to its parts.
std::string Faulty(const std::function<void(Parts&)>& mutate,
                   Packing packing = Packing::kTwoBit) {
  Parts p = Split(SerializeArtifact(MakeArtifact(packing)));
  mutate(p);
  return Assemble(p.header.dump(), p.payload);
}

json& Tensor(Parts& p, const std::string& name) {
  for (json& t : p.header["tensors"]) {
    if (t["name"] == name) return t;
  }
  ADD_FAILURE() << "no tensor " << name;
  return p.header;
}

// Rejected as DATA_LOSS, the message containing every one of `fragments`.
void ExpectRejected(const std::string& file, std::initializer_list<std::string> fragments) {
  const StatusOr<Artifact> parsed = ParseArtifact(file);
  ASSERT_FALSE(parsed.ok()) << "accepted; expected an error with '" << *fragments.begin() << "'";
  EXPECT_EQ(parsed.status().code(), StatusCode::kDataLoss) << parsed.status();
  for (const std::string& f : fragments) {
    EXPECT_NE(parsed.status().message().find(f), std::string::npos)
        << "'" << f << "' not in: " << parsed.status().message();
  }
  EXPECT_NE(parsed.status().message().find("corrupt .tern artifact"), std::string::npos)
      << parsed.status();
}

// The helpers themselves: re-assembling an untouched file gives one the
// reader accepts (so every rejection below comes from the planted fault).
TEST(ArtifactStructureTest, ReassembledValidFilesAreAccepted) {
  for (Packing packing : {Packing::kTwoBit, Packing::kBase3}) {
    const std::string file = SerializeArtifact(MakeArtifact(packing));
    EXPECT_EQ(Faulty([](Parts&) {}, packing), file);
    const auto parsed = ParseArtifact(Faulty([](Parts&) {}, packing));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(parsed->tensors.size(), 3u);
  }
}

TEST(ArtifactStructureTest, HeaderThatIsNotAJsonObject) {
  const std::string payload = Split(SerializeArtifact(MakeArtifact(Packing::kTwoBit))).payload;
  ExpectRejected(Assemble("{\"architecture\": {", payload), {"header is not a JSON object"});
  ExpectRejected(Assemble("[1, 2]", payload), {"header is not a JSON object"});
  ExpectRejected(Assemble("\"text\"", payload), {"header is not a JSON object"});
  ExpectRejected(Assemble("", payload), {"header is not a JSON object"});
}

TEST(ArtifactStructureTest, HeaderLackingOrMistypingAField) {
  for (const char* field : {"architecture", "metadata", "packing", "tensors"}) {
    ExpectRejected(Faulty([&](Parts& p) { p.header.erase(field); }),
                   {"header lacks architecture, metadata, packing or tensors"});
    // Each with a value of the wrong type.
    ExpectRejected(Faulty([&](Parts& p) { p.header[field] = 7; }),
                   {"header lacks architecture, metadata, packing or tensors"});
  }
  ExpectRejected(Faulty([](Parts& p) { p.header["architecture"] = "resnet20"; }),
                 {"header lacks"});
  ExpectRejected(Faulty([](Parts& p) { p.header["tensors"] = json::object(); }),
                 {"header lacks"});
}

TEST(ArtifactStructureTest, UnknownPacking) {
  ExpectRejected(Faulty([](Parts& p) { p.header["packing"] = "3bit"; }), {"unknown packing"});
  ExpectRejected(Faulty([](Parts& p) { p.header["packing"] = ""; }), {"unknown packing"});
}

TEST(ArtifactStructureTest, TensorEntryWithoutAName) {
  ExpectRejected(Faulty([](Parts& p) { p.header["tensors"][0].erase("name"); }),
                 {"tensor entry without a name"});
  ExpectRejected(Faulty([](Parts& p) { p.header["tensors"][1]["name"] = 12; }),
                 {"tensor entry without a name"});
  ExpectRejected(Faulty([](Parts& p) { p.header["tensors"].push_back(5); }),
                 {"tensor entry without a name"});
}

TEST(ArtifactStructureTest, MissingOrOverlongShape) {
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias").erase("shape"); }),
                 {"tensor 'fc.bias' has no valid shape"});
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias")["shape"] = 7; }),
                 {"tensor 'fc.bias' has no valid shape"});
  ExpectRejected(Faulty([](Parts& p) {
                   Tensor(p, "fc.bias")["shape"] = {7, 1, 1, 1, 1, 1, 1, 1, 1};  // 9 dims
                 }),
                 {"tensor 'fc.bias' has no valid shape"});
}

TEST(ArtifactStructureTest, BadDimensions) {
  for (const json& dim : {json(-7), json(2.5), json("7"), json(nullptr),
                          json((uint64_t{1} << 31) + 1)}) {
    ExpectRejected(Faulty([&](Parts& p) { Tensor(p, "fc.bias")["shape"] = json::array({dim}); }),
                   {"tensor 'fc.bias' has a bad dimension"});
  }
}

TEST(ArtifactStructureTest, TooManyElements) {
  // Each dimension allowed; 2^48 elements are not (the limit is 2^36).
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias")["shape"] = {65536, 65536, 65536}; }),
                 {"tensor 'fc.bias' is too large"});
}

TEST(ArtifactStructureTest, UnknownKind) {
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias")["kind"] = "int8"; }),
                 {"tensor 'fc.bias' has unknown kind 'int8'"});
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias").erase("kind"); }),
                 {"tensor 'fc.bias' has unknown kind ''"});
}

TEST(ArtifactStructureTest, FloatTensorWithoutAValidRange) {
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias").erase("offset"); }),
                 {"tensor 'fc.bias' lacks offset/length"});
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias").erase("length"); }),
                 {"tensor 'fc.bias' lacks offset/length"});
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias")["offset"] = -4; }),
                 {"tensor 'fc.bias' lacks offset/length"});
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias")["length"] = "28"; }),
                 {"tensor 'fc.bias' lacks offset/length"});
}

TEST(ArtifactStructureTest, RangesOutsideThePayload) {
  // Past the end; running over the end; and offsets and lengths chosen so
  // that offset + length wraps around 2^64.
  const uint64_t huge = std::numeric_limits<uint64_t>::max();
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias")["offset"] = p.payload.size() + 1; }),
                 {"tensor 'fc.bias' range", "outside the payload"});
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias")["offset"] = p.payload.size() - 8; }),
                 {"tensor 'fc.bias' range", "outside the payload"});
  ExpectRejected(Faulty([&](Parts& p) { Tensor(p, "fc.bias")["offset"] = huge; }),
                 {"outside the payload"});
  ExpectRejected(Faulty([&](Parts& p) {
                   Tensor(p, "fc.bias")["offset"] = 4;
                   Tensor(p, "fc.bias")["length"] = huge - 2;
                 }),
                 {"tensor 'fc.bias' range", "outside the payload"});
  ExpectRejected(Faulty([&](Parts& p) { Tensor(p, "fc.weight")["codes_offset"] = huge - 1; }),
                 {"tensor 'fc.weight' range", "outside the payload"});
  ExpectRejected(Faulty([&](Parts& p) { Tensor(p, "conv.weight")["scales_length"] = 1000; }),
                 {"tensor 'conv.weight' range", "outside the payload"});
}

TEST(ArtifactStructureTest, FloatTensorWithTheWrongByteCount) {
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias")["length"] = 24; }),
                 {"tensor 'fc.bias' has 24 bytes for 7 floats"});
  // A shape that no longer matches the stored bytes, either way.
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias")["shape"] = {8}; }),
                 {"tensor 'fc.bias' has 28 bytes for 8 floats"});
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.bias")["shape"] = {6}; }),
                 {"tensor 'fc.bias' has 28 bytes for 6 floats"});
}

TEST(ArtifactStructureTest, BadGranularity) {
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.weight")["granularity"] = "row"; }),
                 {"tensor 'fc.weight' has bad granularity 'row'"});
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.weight").erase("granularity"); }),
                 {"tensor 'fc.weight' has bad granularity ''"});
  // Per channel needs a first dimension to have channels along.
  ExpectRejected(Faulty([](Parts& p) {
                   json& t = Tensor(p, "fc.weight");
                   t["granularity"] = "channel";
                   t["shape"] = json::array();
                 }),
                 {"tensor 'fc.weight' has bad granularity 'channel'"});
}

TEST(ArtifactStructureTest, TernaryTensorWithoutCodeOrScaleRanges) {
  for (const char* key : {"codes_offset", "codes_length"}) {
    ExpectRejected(Faulty([&](Parts& p) { Tensor(p, "fc.weight").erase(key); }),
                   {"tensor 'fc.weight' lacks codes_offset/codes_length"});
  }
  for (const char* key : {"scales_offset", "scales_length"}) {
    ExpectRejected(Faulty([&](Parts& p) { Tensor(p, "conv.weight").erase(key); }),
                   {"tensor 'conv.weight' lacks scales_offset/scales_length"});
  }
}

TEST(ArtifactStructureTest, PackedCodesOfTheWrongSize) {
  for (Packing packing : {Packing::kTwoBit, Packing::kBase3}) {
    // 35 codes need 9 bytes at 2 bits, 7 at base 3: one byte fewer.
    ExpectRejected(Faulty(
                       [](Parts& p) {
                         json& t = Tensor(p, "fc.weight");
                         t["codes_length"] = t["codes_length"].get<uint64_t>() - 1;
                       },
                       packing),
                   {"tensor 'fc.weight'", "packed codes:", "bytes for 35 weights"});
    // The shape says more weights than the codes hold.
    ExpectRejected(Faulty([](Parts& p) { Tensor(p, "fc.weight")["shape"] = {7, 6}; }, packing),
                   {"tensor 'fc.weight'", "bytes for 42 weights"});
  }
}

TEST(ArtifactStructureTest, InvalidPackedCodes) {
  // 2 bits: the code 0b11 does not exist.
  ExpectRejected(Faulty([](Parts& p) {
                   p.payload[Tensor(p, "fc.weight")["codes_offset"].get<size_t>()] |= 0x03;
                 }),
                 {"tensor 'fc.weight'", "invalid 2-bit code at byte 0"});
  // 2 bits: the padding after the 35th code (the last byte's top 2 bits)
  // must be zero.
  ExpectRejected(Faulty([](Parts& p) {
                   const json& t = Tensor(p, "fc.weight");
                   const size_t last = t["codes_offset"].get<size_t>() +
                                       t["codes_length"].get<size_t>() - 1;
                   p.payload[last] = static_cast<char>(p.payload[last] | 0x40);
                 }),
                 {"tensor 'fc.weight'", "invalid 2-bit code at byte 8"});
  // Base 3: a byte holds 5 digits, at most 3^5 - 1 = 242.
  ExpectRejected(Faulty(
                     [](Parts& p) {
                       p.payload[Tensor(p, "fc.weight")["codes_offset"].get<size_t>()] =
                           static_cast<char>(243);
                     },
                     Packing::kBase3),
                 {"tensor 'fc.weight'", "invalid base-3 byte 243"});
  // Base 3: padding digits (35 = 7 x 5: none for fc; conv's 6 codes leave 4)
  // must be the zero code (digit 1); digit 0 is -1.
  ExpectRejected(Faulty(
                     [](Parts& p) {
                       const size_t second = Tensor(p, "conv.weight")["codes_offset"].get<size_t>() + 1;
                       p.payload[second] = 0;  // digits 0 0 0 0 0: codes -1, padding -1 x 4
                     },
                     Packing::kBase3),
                 {"tensor 'conv.weight'", "non-zero padding in byte 1"});
}

TEST(ArtifactStructureTest, ScalesOfTheWrongCount) {
  // conv.weight has 3 channels: 3 positive and 3 negative scales, 24 bytes.
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "conv.weight")["scales_length"] = 16; }),
                 {"tensor 'conv.weight' has 16 scale bytes for 3 units"});
  // A per-tensor layer with per-channel scale bytes' worth: 8 bytes per unit.
  ExpectRejected(Faulty([](Parts& p) { Tensor(p, "conv.weight")["granularity"] = "tensor"; }),
                 {"tensor 'conv.weight' has 24 scale bytes for 1 units"});
}

TEST(ArtifactStructureTest, NonFiniteScales) {
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()}) {
    for (size_t which : {0u, 4u}) {  // a positive scale, then a negative one
      ExpectRejected(Faulty([&](Parts& p) {
                       const size_t at = Tensor(p, "fc.weight")["scales_offset"].get<size_t>() + which;
                       std::memcpy(&p.payload[at], &bad, 4);
                     }),
                     {"tensor 'fc.weight' has a non-finite scale"});
    }
  }
}

}  // namespace
}  // namespace tern::quant
