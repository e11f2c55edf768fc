#include "worker/trainer/image_decode.h"

#include <gtest/gtest.h>
#include <webp/encode.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
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

// Little-endian fields for hand-made headers.
void Put16(std::string* out, uint32_t v) {
  for (int i = 0; i < 2; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void Put32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// A 24-bit BMP (BITMAPINFOHEADER) whose pixel (x, y) is (x, y, 7) in RGB,
// rows padded to 4 bytes; `top_down` stores a negative height, as many
// writers do.
std::string MakeBmp(int w, int h, bool top_down) {
  const int stride = (3 * w + 3) / 4 * 4;
  std::string bmp = "BM";
  Put32(&bmp, static_cast<uint32_t>(54 + stride * h));
  Put32(&bmp, 0);
  Put32(&bmp, 54);  // pixel offset
  Put32(&bmp, 40);  // header size
  Put32(&bmp, static_cast<uint32_t>(w));
  Put32(&bmp, static_cast<uint32_t>(top_down ? -h : h));
  Put16(&bmp, 1);   // planes
  Put16(&bmp, 24);  // bits per pixel
  for (int i = 0; i < 6; ++i) Put32(&bmp, 0);  // compression, sizes, palette
  for (int row = 0; row < h; ++row) {
    const int y = top_down ? row : h - 1 - row;  // bottom-up stores the last row first
    for (int x = 0; x < w; ++x) {
      bmp += static_cast<char>(7);  // B, G, R
      bmp += static_cast<char>(y);
      bmp += static_cast<char>(x);
    }
    bmp.append(static_cast<size_t>(stride - 3 * w), '\0');
  }
  return bmp;
}

std::vector<uint8_t> ExpectedBmpPixels(int w, int h) {
  std::vector<uint8_t> planar(static_cast<size_t>(3) * w * h);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      planar[static_cast<size_t>(y) * w + x] = static_cast<uint8_t>(x);
      planar[static_cast<size_t>(w) * h + y * w + x] = static_cast<uint8_t>(y);
      planar[static_cast<size_t>(2) * w * h + y * w + x] = 7;
    }
  }
  return planar;
}

void ExpectDataLoss(const StatusOr<std::vector<uint8_t>>& pixels, const std::string& message) {
  ASSERT_FALSE(pixels.ok()) << "expected: " << message;
  EXPECT_EQ(pixels.status().code(), StatusCode::kDataLoss) << pixels.status();
  EXPECT_NE(pixels.status().message().find(message), std::string::npos) << pixels.status();
}

TEST(ImageDecodeTest, DecodesBottomUpAndTopDownBmp) {
  for (const bool top_down : {false, true}) {
    ImageHeader header;
    StatusOr<std::vector<uint8_t>> pixels =
        DecodeImageBytes(MakeBmp(5, 3, top_down), "a.bmp", 3, &header);
    ASSERT_TRUE(pixels.ok()) << "top_down=" << top_down << ": " << pixels.status();
    EXPECT_EQ(header.width, 5);
    EXPECT_EQ(header.height, 3);  // not -3: stb's header reader returns it signed
    EXPECT_EQ(header.channels, 3);
    EXPECT_EQ(*pixels, ExpectedBmpPixels(5, 3)) << "top_down=" << top_down;
  }
}

// Writes `bytes` to a file of the test's temporary directory; its path.
std::string WriteTempFile(const std::string& name, const std::string& bytes) {
  const std::string path = testing::TempDir() + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return path;
}

TEST(ImageDecodeTest, ReadImageHeaderOfATopDownBmpFile) {
  const std::string path = WriteTempFile("top_down.bmp", MakeBmp(4, 2, true));
  StatusOr<ImageHeader> header = ReadImageHeader(path);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->width, 4);
  EXPECT_EQ(header->height, 2);
  // A file cut short is found from its header too (the data set check).
  StatusOr<ImageHeader> cut =
      ReadImageHeader(WriteTempFile("top_down.bmp", MakeBmp(4, 2, true).substr(0, 60)));
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(cut.status().message().find("truncated BMP image, 6 of its 24 pixel bytes present"),
            std::string::npos)
      << cut.status();
}

TEST(ImageDecodeTest, TruncatedOrOversizedBmpIsAnErrorNotZeros) {
  const std::string bmp = MakeBmp(5, 3, false);  // rows of 16 bytes, 48 in all
  ExpectDataLoss(DecodeImageBytes(bmp.substr(0, bmp.size() - 17), "cut.bmp", 3, nullptr),
                 "cannot decode cut.bmp: truncated BMP image, 31 of its 47 pixel bytes present");
  // The last row may lack its padding (some writers leave it out).
  EXPECT_TRUE(DecodeImageBytes(bmp.substr(0, bmp.size() - 1), "unpadded.bmp", 3, nullptr).ok());
  // A 54-byte file claiming 16384 x 8192 pixels: refused before any pixel
  // memory is allocated (stb allocated and decoded 384 MiB of zeros).
  std::string huge = MakeBmp(1, 1, false).substr(0, 54);
  huge.replace(18, 8, std::string("\x00\x40\x00\x00\x00\x20\x00\x00", 8));
  ExpectDataLoss(DecodeImageBytes(huge, "huge.bmp", 3, nullptr),
                 "cannot decode huge.bmp: truncated BMP image, 0 of its 402653184 pixel bytes");
  // A height of INT_MIN (top-down of 2^31 rows) is a bad header, not UB.
  std::string min_height = bmp;
  min_height.replace(22, 4, std::string("\x00\x00\x00\x80", 4));
  ExpectDataLoss(DecodeImageBytes(min_height, "min.bmp", 3, nullptr), "cannot decode min.bmp: ");
  std::string rle = bmp;
  rle[30] = 1;  // BI_RLE8
  ExpectDataLoss(DecodeImageBytes(rle, "rle.bmp", 3, nullptr), "cannot decode rle.bmp: ");
}

// An uncompressed (type 2) or run-length encoded (type 10) 24-bit TGA of
// w x h pixels, every pixel (B, G, R) = (1, 2, 3); the RLE one is one
// repeat packet per 128 pixels.
std::string MakeTga(int w, int h, bool rle) {
  std::string tga;
  tga += '\0';                          // no image id
  tga += '\0';                          // no colour map
  tga += static_cast<char>(rle ? 10 : 2);
  tga.append(9, '\0');                  // colour map spec, origin
  Put16(&tga, static_cast<uint32_t>(w));
  Put16(&tga, static_cast<uint32_t>(h));
  tga += static_cast<char>(24);
  tga += static_cast<char>(0x20);       // top-left origin
  for (int left = w * h; left > 0;) {
    const int n = rle ? std::min(left, 128) : 1;
    if (rle) tga += static_cast<char>(0x80 | (n - 1));
    tga += "\x01\x02\x03";
    left -= n;
  }
  return tga;
}

TEST(ImageDecodeTest, TruncatedTgaIsAnErrorNotZeros) {
  for (const bool rle : {false, true}) {
    const std::string tga = MakeTga(20, 10, rle);
    StatusOr<std::vector<uint8_t>> whole = DecodeImageBytes(tga, "a.tga", 3, nullptr);
    ASSERT_TRUE(whole.ok()) << "rle=" << rle << ": " << whole.status();
    EXPECT_EQ((*whole)[0], 3);
    EXPECT_EQ((*whole)[200], 2);
    EXPECT_EQ((*whole)[599], 1);
    ExpectDataLoss(DecodeImageBytes(tga.substr(0, tga.size() - 2), "cut.tga", 3, nullptr),
                   rle ? "cannot decode cut.tga: truncated TGA image"
                       : "cannot decode cut.tga: truncated TGA image, 598 of its 600 pixel bytes");
  }
  // 18 bytes claiming 65535 x 2048 pixels of uncompressed data.
  std::string huge = MakeTga(1, 1, false).substr(0, 18);
  huge.replace(12, 4, std::string("\xff\xff\x00\x08", 4));
  ExpectDataLoss(DecodeImageBytes(huge, "huge.tga", 3, nullptr),
                 "cannot decode huge.tga: truncated TGA image, 0 of its");
}

// A 2 x 2 GIF with a 2-colour global palette (black, white) and the LZW
// stream of pixels 0, 1, 1, 0 (min code size 2: clear=4, end=5).
std::string MakeGif() {
  std::string gif = "GIF89a";
  Put16(&gif, 2);
  Put16(&gif, 2);
  gif += static_cast<char>(0x80);  // global colour table of 2 entries
  gif += '\0';
  gif += '\0';
  gif += std::string("\x00\x00\x00\xff\xff\xff", 6);
  gif += ',';
  Put16(&gif, 0);
  Put16(&gif, 0);
  Put16(&gif, 2);
  Put16(&gif, 2);
  gif += '\0';
  // Codes, LSB first: clear 4, 0, 1, 1 in 3 bits; then the table holds 8
  // entries, so 0 and end 5 take 4 bits.
  uint32_t bits = 0;
  int nbits = 0;
  std::string data;
  const std::pair<uint32_t, int> codes[] = {{4, 3}, {0, 3}, {1, 3}, {1, 3}, {0, 4}, {5, 4}};
  for (const auto& [code, width] : codes) {
    bits |= code << nbits;
    nbits += width;
    while (nbits >= 8) {
      data += static_cast<char>(bits & 0xff);
      bits >>= 8;
      nbits -= 8;
    }
  }
  if (nbits > 0) data += static_cast<char>(bits & 0xff);
  gif += static_cast<char>(2);  // LZW minimum code size
  gif += static_cast<char>(data.size());
  gif += data;
  gif += '\0';
  gif += ';';
  return gif;
}

TEST(ImageDecodeTest, TruncatedGifIsAnErrorNotZeros) {
  const std::string gif = MakeGif();
  StatusOr<std::vector<uint8_t>> whole = DecodeImageBytes(gif, "a.gif", 1, nullptr);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(*whole, (std::vector<uint8_t>{0, 255, 255, 0}));
  // Cut inside the image data, and just before the data's terminating block.
  ExpectDataLoss(DecodeImageBytes(gif.substr(0, gif.size() - 4), "cut.gif", 1, nullptr),
                 "cannot decode cut.gif: truncated GIF image");
  ExpectDataLoss(DecodeImageBytes(gif.substr(0, gif.size() - 2), "cut.gif", 1, nullptr),
                 "cannot decode cut.gif: truncated GIF image");
  // Up to the trailer is all that is needed.
  EXPECT_TRUE(DecodeImageBytes(gif.substr(0, gif.size() - 1), "notrailer.gif", 1, nullptr).ok());
  // A header and palette but no image.
  ExpectDataLoss(DecodeImageBytes(gif.substr(0, 19) + ";", "empty.gif", 1, nullptr),
                 "cannot decode empty.gif: ");
}

// Lossless WebP of the MakeBmp pattern, with an alpha channel if `alpha`.
std::string MakeWebp(int w, int h, bool alpha) {
  const int n = alpha ? 4 : 3;
  std::vector<uint8_t> interleaved(static_cast<size_t>(n) * w * h);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      uint8_t* p = &interleaved[(static_cast<size_t>(y) * w + x) * n];
      p[0] = static_cast<uint8_t>(x);
      p[1] = static_cast<uint8_t>(y);
      p[2] = 7;
      if (alpha) p[3] = 128;
    }
  }
  uint8_t* out = nullptr;
  const size_t size = alpha ? WebPEncodeLosslessRGBA(interleaved.data(), w, h, w * n, &out)
                            : WebPEncodeLosslessRGB(interleaved.data(), w, h, w * n, &out);
  std::string webp(reinterpret_cast<const char*>(out), size);
  WebPFree(out);
  return webp;
}

TEST(ImageDecodeTest, DecodesLosslessWebpAndRefusesACutOne) {
  for (const bool alpha : {false, true}) {
    const std::string webp = MakeWebp(5, 3, alpha);
    ASSERT_GT(webp.size(), 20u);
    ImageHeader header;
    StatusOr<std::vector<uint8_t>> pixels = DecodeImageBytes(webp, "a.webp", 3, &header);
    ASSERT_TRUE(pixels.ok()) << "alpha=" << alpha << ": " << pixels.status();
    EXPECT_EQ(header.width, 5);
    EXPECT_EQ(header.height, 3);
    EXPECT_EQ(header.channels, alpha ? 4 : 3);
    EXPECT_EQ(*pixels, ExpectedBmpPixels(5, 3)) << "alpha=" << alpha;
    StatusOr<std::vector<uint8_t>> grey = DecodeImageBytes(webp, "a.webp", 1, &header);
    ASSERT_TRUE(grey.ok()) << grey.status();
    EXPECT_EQ((*grey)[0], (0 * 77 + 0 * 150 + 7 * 29) >> 8);

    ExpectDataLoss(DecodeImageBytes(webp.substr(0, webp.size() - 3), "cut.webp", 3, nullptr),
                   "cannot decode cut.webp: ");
    ExpectDataLoss(DecodeImageBytes(webp.substr(0, 16), "head.webp", 3, nullptr),
                   "cannot decode head.webp: ");
  }
  StatusOr<ImageHeader> header = ReadImageHeader(WriteTempFile("a.webp", MakeWebp(4, 2, true)));
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->width, 4);
  EXPECT_EQ(header->height, 2);
  EXPECT_EQ(header->channels, 4);
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
