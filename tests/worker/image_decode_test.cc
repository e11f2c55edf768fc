#include "worker/trainer/image_decode.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tern::trainer {
namespace {

TEST(ImageDecodeTest, RefusesAnImageAboveThePixelLimitBeforeDecodingIt) {
  ImageHeader header;
  StatusOr<std::vector<uint8_t>> pixels =
      DecodeImageBytes("P6\n20000 20000\n255\n\x01\x02\x03", "big.ppm", 3, &header);
  ASSERT_FALSE(pixels.ok());
  EXPECT_EQ(pixels.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(pixels.status().message().find("cannot decode big.ppm: 20000x20000 pixels is more "
                                           "than the 134217728 this reader accepts"),
            std::string::npos)
      << pixels.status();
}

TEST(ImageDecodeTest, DecodesPgmBytesAndNamesTheSourceOfBadOnes) {
  const std::string pgm =
      std::string("P5\n3 2\n255\n") + std::string("\x01\x02\x03\x04\x05\x06", 6);
  ImageHeader header;
  StatusOr<std::vector<uint8_t>> grey = DecodeImageBytes(pgm, "a.pgm", 1, &header);
  ASSERT_TRUE(grey.ok()) << grey.status();
  EXPECT_EQ(header.width, 3);
  EXPECT_EQ(header.height, 2);
  EXPECT_EQ(header.channels, 1);
  EXPECT_EQ(*grey, (std::vector<uint8_t>{1, 2, 3, 4, 5, 6}));
  StatusOr<std::vector<uint8_t>> rgb = DecodeImageBytes(pgm, "a.pgm", 3, &header);
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(*rgb, (std::vector<uint8_t>{1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6}));

  StatusOr<std::vector<uint8_t>> cut = DecodeImageBytes(pgm.substr(0, 14), "cut.pgm", 1, nullptr);
  ASSERT_FALSE(cut.ok());
  EXPECT_EQ(cut.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(cut.status().message().find(
                "cannot decode cut.pgm: truncated PNM image, 3 of its 6 pixel bytes present"),
            std::string::npos)
      << cut.status();

  // stb 2.27 writes out of bounds converting 16-bit PNM (found by libFuzzer).
  StatusOr<std::vector<uint8_t>> deep =
      DecodeImageBytes("P5\n1 1\n65535\n\x01\x02", "deep.pgm", 1, nullptr);
  ASSERT_FALSE(deep.ok());
  EXPECT_NE(deep.status().message().find("cannot decode deep.pgm: 16-bit PNM"), std::string::npos)
      << deep.status();

  // stb 2.27 would overflow an int on this width (found by fuzz/image_fuzz).
  StatusOr<std::vector<uint8_t>> wide =
      DecodeImageBytes("P5\n99999999999 1\n255\nxyz", "wide.pgm", 1, nullptr);
  ASSERT_FALSE(wide.ok());
  EXPECT_NE(wide.status().message().find("cannot decode wide.pgm: bad PNM header: a number above"),
            std::string::npos)
      << wide.status();
}

TEST(ImageDecodeTest, CropOnlyWhenTheShorterSideIsTheSizeAlready) {
  // 4 wide, 2 high, size 2: no scaling, the centre 2x2 columns 1..2.
  const std::vector<uint8_t> src = {0, 1, 2, 3, 10, 11, 12, 13};
  std::vector<uint8_t> dst(4);
  ResizeAndCenterCrop(src.data(), 1, 4, 2, 2, dst.data());
  EXPECT_EQ(dst, (std::vector<uint8_t>{1, 2, 11, 12}));
}

TEST(ImageDecodeTest, ExtremeAspectRatioCropsWithoutScalingTheWholeImage) {
  // 1 x 4M pixels: scaling the whole image to a shorter side of 224 would
  // need a 224 x ~940M intermediate (and overflows int); the crop does not.
  const int w = 1, h = 1 << 22, size = 224;
  std::vector<uint8_t> src(static_cast<size_t>(w) * h * 3);
  for (int c = 0; c < 3; ++c) {
    std::fill(src.begin() + static_cast<ptrdiff_t>(c) * h,
              src.begin() + static_cast<ptrdiff_t>(c + 1) * h, static_cast<uint8_t>(40 * (c + 1)));
  }
  std::vector<uint8_t> dst(static_cast<size_t>(size) * size * 3, 0);
  ResizeAndCenterCrop(src.data(), 3, w, h, size, dst.data());
  for (int c = 0; c < 3; ++c) {
    for (int i = 0; i < size * size; ++i) {
      ASSERT_EQ(dst[static_cast<size_t>(c) * size * size + i], 40 * (c + 1)) << c << " " << i;
    }
  }
  // Downscaling: 5 x 8M to a 4 x 4 crop. A region resample over the whole
  // height ran for minutes in stb (found by fuzz/image_fuzz); the centre
  // square is scaled instead.
  std::vector<uint8_t> tall(size_t{5} << 23, 9);
  std::vector<uint8_t> small(16, 0);
  ResizeAndCenterCrop(tall.data(), 1, 5, 1 << 23, 4, small.data());
  EXPECT_EQ(small, std::vector<uint8_t>(16, 9));
}

TEST(ImageDecodeTest, DownscaledCropKeepsAHorizontalGradientInOrder) {
  // 64 x 32, size 16: scale to 32 x 16, crop columns 8..23; a gradient along
  // x stays increasing and covers the middle of the range.
  const int w = 64, h = 32, size = 16;
  std::vector<uint8_t> src(static_cast<size_t>(w) * h);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) src[static_cast<size_t>(y) * w + x] = static_cast<uint8_t>(4 * x);
  }
  std::vector<uint8_t> dst(static_cast<size_t>(size) * size);
  ResizeAndCenterCrop(src.data(), 1, w, h, size, dst.data());
  for (int y = 0; y < size; ++y) {
    for (int x = 1; x < size; ++x) {
      EXPECT_GT(dst[static_cast<size_t>(y) * size + x], dst[static_cast<size_t>(y) * size + x - 1]);
    }
    // Column i of the crop is scaled column 8 + i, source columns 16 + 2i
    // and 17 + 2i: values near 4 * (16.5 + 2i).
    EXPECT_NEAR(dst[static_cast<size_t>(y) * size], 66, 3);
    EXPECT_NEAR(dst[static_cast<size_t>(y) * size + size - 1], 186, 3);
  }
}

}  // namespace
}  // namespace tern::trainer
