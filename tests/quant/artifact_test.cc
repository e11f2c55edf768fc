#include "quant/artifact.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "common/file_util.h"

namespace tern::quant {
namespace {

Artifact MakeArtifact(Packing packing) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> code(-1, 1);
  std::normal_distribution<float> normal;
  Artifact a;
  a.architecture = R"({"arch":"tiny","num_classes":3})";
  a.metadata = R"({"method":"hla"})";
  a.packing = packing;
  ArtifactTensor conv;
  conv.name = "conv.weight";
  conv.shape = {3, 2, 3, 3};
  conv.kind = ArtifactTensor::Kind::kTernary;
  conv.granularity = Granularity::kChannel;
  for (int i = 0; i < 54; ++i) conv.codes.push_back(static_cast<int8_t>(code(rng)));
  conv.pos_scale = {0.5f, 0.25f, 0.125f};
  conv.neg_scale = {0.5f, 0.3f, 0.1f};
  ArtifactTensor fc;
  fc.name = "fc.weight";
  fc.shape = {7, 5};
  fc.kind = ArtifactTensor::Kind::kTernary;
  for (int i = 0; i < 35; ++i) fc.codes.push_back(static_cast<int8_t>(code(rng)));
  fc.pos_scale = {0.75f};
  fc.neg_scale = {0.75f};
  ArtifactTensor bias;
  bias.name = "fc.bias";
  bias.shape = {7};
  for (int i = 0; i < 7; ++i) bias.values.push_back(normal(rng));
  a.tensors = {conv, fc, bias};
  return a;
}

void ExpectSame(const Artifact& a, const Artifact& b) {
  EXPECT_EQ(a.packing, b.packing);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const auto& x = a.tensors[i];
    const auto& y = b.tensors[i];
    EXPECT_EQ(x.name, y.name);
    EXPECT_EQ(x.shape, y.shape);
    EXPECT_EQ(x.kind, y.kind);
    EXPECT_EQ(x.codes, y.codes);
    EXPECT_EQ(x.values, y.values);
    EXPECT_EQ(x.pos_scale, y.pos_scale);
    EXPECT_EQ(x.neg_scale, y.neg_scale);
    EXPECT_EQ(x.granularity, y.granularity);
  }
}

TEST(ArtifactTest, RoundTripsBothPackings) {
  for (Packing packing : {Packing::kTwoBit, Packing::kBase3}) {
    const Artifact a = MakeArtifact(packing);
    auto parsed = ParseArtifact(SerializeArtifact(a));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    ExpectSame(a, *parsed);
    EXPECT_NE(parsed->architecture.find("tiny"), std::string::npos);
  }
}

TEST(ArtifactTest, ReportsBitsPerWeight) {
  EXPECT_NEAR(MakeArtifact(Packing::kTwoBit).BitsPerTernaryWeight(), 2.0, 0.2);
  EXPECT_LE(MakeArtifact(Packing::kBase3).BitsPerTernaryWeight(), 1.7);
}

TEST(ArtifactTest, RejectsEveryTruncation) {
  const std::string bytes = SerializeArtifact(MakeArtifact(Packing::kBase3));
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto r = ParseArtifact(std::string_view(bytes).substr(0, n));
    ASSERT_FALSE(r.ok()) << "accepted a file truncated to " << n << " bytes";
  }
}

TEST(ArtifactTest, RejectsEveryFlippedByte) {
  const std::string bytes = SerializeArtifact(MakeArtifact(Packing::kTwoBit));
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string corrupt = bytes;
    corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5a);
    auto r = ParseArtifact(corrupt);
    ASSERT_FALSE(r.ok()) << "accepted a flip at byte " << i;
  }
}

TEST(ArtifactTest, RejectsFutureVersionWithClearMessage) {
  std::string bytes = SerializeArtifact(MakeArtifact(Packing::kTwoBit));
  bytes[4] = 2;  // major version 2
  auto r = ParseArtifact(bytes);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("version 2"), std::string::npos);
}

TEST(ArtifactTest, RejectsGarbageAndWrongMagic) {
  EXPECT_FALSE(ParseArtifact("").ok());
  EXPECT_FALSE(ParseArtifact(std::string(100, 'x')).ok());
  std::string bytes = SerializeArtifact(MakeArtifact(Packing::kTwoBit));
  bytes[0] = 'X';
  auto r = ParseArtifact(bytes);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("magic"), std::string::npos);
}

TEST(ArtifactTest, FileRoundTripAndMissingFile) {
  const std::string dir = testing::TempDir() + "/artifact_test_" + std::to_string(::getpid());
  ASSERT_TRUE(MakeDirectories(dir).ok());
  const std::string path = dir + "/model.tern";
  const Artifact a = MakeArtifact(Packing::kBase3);
  ASSERT_TRUE(WriteArtifactFile(a, path).ok());
  auto read = ReadArtifactFile(path);
  ASSERT_TRUE(read.ok()) << read.status();
  ExpectSame(a, *read);
  auto missing = ReadArtifactFile(dir + "/nope.tern");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tern::quant
