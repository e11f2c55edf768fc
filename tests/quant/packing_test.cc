#include "quant/packing.h"

#include <gtest/gtest.h>

#include <random>

namespace tern::quant {
namespace {

std::vector<int8_t> RandomCodes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(-1, 1);
  std::vector<int8_t> codes(n);
  for (auto& c : codes) c = static_cast<int8_t>(d(rng));
  return codes;
}

std::string_view View(const std::vector<uint8_t>& bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

TEST(PackingTest, RoundTripsOddSizesBothPackings) {
  for (Packing packing : {Packing::kTwoBit, Packing::kBase3}) {
    for (size_t n : {0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 31, 97, 1001, 4099}) {
      const auto codes = RandomCodes(n, static_cast<uint32_t>(n));
      const auto packed = PackCodes(codes, packing);
      EXPECT_EQ(packed.size(), PackedSize(n, packing));
      auto unpacked = UnpackCodes(View(packed), n, packing);
      ASSERT_TRUE(unpacked.ok()) << unpacked.status();
      EXPECT_EQ(*unpacked, codes) << PackingName(packing) << " n=" << n;
    }
  }
}

TEST(PackingTest, Base3UsesAtMostOnePointSixBitsPerWeight) {
  EXPECT_EQ(PackedSize(1000, Packing::kBase3), 200u);
  EXPECT_EQ(PackedSize(1000, Packing::kTwoBit), 250u);
  EXPECT_EQ(PackedSize(6, Packing::kBase3), 2u);
}

TEST(PackingTest, RejectsInvalidTwoBitCode) {
  std::vector<uint8_t> bytes = {0b11000000};
  auto r = UnpackCodes(View(bytes), 4, Packing::kTwoBit);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
}

TEST(PackingTest, RejectsNonZeroPadding) {
  std::vector<uint8_t> two_bit = {0b01000000};  // slot 3 set, only 3 codes
  EXPECT_FALSE(UnpackCodes(View(two_bit), 3, Packing::kTwoBit).ok());
  std::vector<uint8_t> base3 = PackCodes({1, 1, 1, 1, 1}, Packing::kBase3);
  EXPECT_FALSE(UnpackCodes(View(base3), 3, Packing::kBase3).ok());
}

TEST(PackingTest, RejectsBase3ByteAbove242AndWrongLength) {
  std::vector<uint8_t> bytes = {243};
  EXPECT_FALSE(UnpackCodes(View(bytes), 5, Packing::kBase3).ok());
  std::vector<uint8_t> two = {0, 0};
  EXPECT_FALSE(UnpackCodes(View(two), 5, Packing::kBase3).ok());
}

}  // namespace
}  // namespace tern::quant
