// Seed images for image_fuzz, written with stb_image_write and libwebp.
// Compiled without UBSan (fuzz/CMakeLists.txt): stb's JPEG encoder
// left-shifts negative DCT coefficients, which the sanitizer reports, in this
// test-only code.
#include <cstdint>
#include <string>
#include <vector>

#include <webp/encode.h>

#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

namespace tern::fuzz {
namespace {

void Append(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data),
                                             static_cast<size_t>(size));
}

}  // namespace

std::vector<std::string> EncodedSeedImages() {
  const int w = 5, h = 4;
  std::vector<uint8_t> rgba(w * h * 4);
  for (size_t i = 0; i < rgba.size(); ++i) rgba[i] = static_cast<uint8_t>(i * 37 + 11);
  std::vector<std::string> images;
  for (int comp : {1, 3, 4}) {
    std::string png, bmp, tga, jpg;
    stbi_write_png_to_func(Append, &png, w, h, comp, rgba.data(), w * comp);
    stbi_write_bmp_to_func(Append, &bmp, w, h, comp, rgba.data());
    stbi_write_tga_to_func(Append, &tga, w, h, comp, rgba.data());
    stbi_write_jpg_to_func(Append, &jpg, w, h, comp, rgba.data(), 90);
    images.insert(images.end(), {png, bmp, tga, jpg});
  }
  for (const bool lossless : {false, true}) {
    uint8_t* webp = nullptr;
    const size_t size = lossless ? WebPEncodeLosslessRGBA(rgba.data(), w, h, w * 4, &webp)
                                 : WebPEncodeRGB(rgba.data(), w, h, w * 3, 80.0f, &webp);
    images.emplace_back(reinterpret_cast<const char*>(webp), size);
    WebPFree(webp);
  }
  return images;
}

}  // namespace tern::fuzz
