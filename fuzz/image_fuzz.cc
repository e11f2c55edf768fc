// Fuzz target: the image decoders of the image-folder and COCO readers
// (trainer::DecodeImageBytes: libjpeg-turbo, libpng, libwebp, and stb_image's
// BMP, GIF, TGA and PNM decoders behind tern's header and length checks) and
// the resize-and-crop that follows. The first byte picks grey or RGB and the
// crop size (1 to 64).
// Properties: nothing crashes or reads out of bounds; a decoded image has
// width x height x channels bytes and at most the pixels asked for.
#include <cstdint>
#include <string>
#include <vector>

#include "common/check.h"
#include "fuzz/fuzz_target.h"
#include "worker/trainer/image_decode.h"

namespace tern::fuzz {
// image_seeds.cc: small PNG, BMP, TGA, JPEG and WebP files.
std::vector<std::string> EncodedSeedImages();
}  // namespace tern::fuzz

// Images up to 1M pixels: larger ones exercise no other code, only take
// seconds each (a 50-byte GIF may claim 2^27 pixels, which stb fills in).
constexpr int64_t kMaxFuzzPixels = int64_t{1} << 20;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int channels = (data[0] & 1) != 0 ? 3 : 1;
  const int crop = 1 + ((data[0] >> 1) & 63);
  tern::trainer::ImageHeader header;
  tern::StatusOr<std::vector<uint8_t>> pixels = tern::trainer::DecodeImageBytes(
      tern::fuzz::AsText(data + 1, size - 1), "fuzz", channels, &header, kMaxFuzzPixels);
  if (!pixels.ok()) return 0;
  const int64_t plane = int64_t{header.width} * header.height;
  TERN_CHECK(header.width > 0 && header.height > 0);
  TERN_CHECK(plane <= kMaxFuzzPixels);
  TERN_CHECK(static_cast<int64_t>(pixels->size()) == plane * channels);
  std::vector<uint8_t> out(static_cast<size_t>(channels) * crop * crop);
  tern::trainer::ResizeAndCenterCrop(pixels->data(), channels, header.width, header.height,
                                     crop, out.data());
  return 0;
}

std::vector<std::string> TernFuzzSeeds() {
  std::vector<std::string> images = tern::fuzz::EncodedSeedImages();
  std::string pixels(60, '\0');
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<char>(i * 37 + 11);
  // Binary PGM and PPM, 5 x 4.
  images.push_back("P5\n5 4\n255\n" + pixels.substr(0, 20));
  images.push_back("P6\n# a comment\n5 4\n255\n" + pixels);
  // A 2x2 GIF87a with a two-colour global palette.
  images.push_back(std::string(
      "GIF87a\x02\x00\x02\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
      ",\x00\x00\x00\x00\x02\x00\x02\x00\x00\x02\x02\x84\x51\x00;",
      35));
  std::vector<std::string> seeds;
  for (const std::string& image : images) {
    seeds.push_back(std::string(1, '\x0f') + image);  // RGB, crop 8
    seeds.push_back(std::string(1, '\x06') + image);  // grey, crop 4
  }
  return seeds;
}
