#include "worker/trainer/image_decode.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common/file_util.h"

// The one definition of stb's decoders and resizer in the program; static, so
// they cannot clash with another copy linked in by a dependency.
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>
#define STB_IMAGE_RESIZE_STATIC
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#include <stb/stb_image_resize.h>

namespace tern::trainer {
namespace {

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
struct StbiFree {
  void operator()(unsigned char* p) const { stbi_image_free(p); }
};

Status CannotDecode(const std::string& path) {
  const char* reason = stbi_failure_reason();
  return DataLossError("cannot decode " + path + ": " +
                       (reason != nullptr ? reason : "unknown error"));
}

}  // namespace

StatusOr<ImageHeader> ReadImageHeader(const std::string& path) {
  std::unique_ptr<FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (file == nullptr) {
    const int err = errno;
    const std::string msg = "cannot open " + path + ": " + std::strerror(err);
    if (err == ENOENT) return NotFoundError(msg);
    return UnavailableError(msg);
  }
  ImageHeader header;
  if (!stbi_info_from_file(file.get(), &header.width, &header.height,
                           &header.channels)) {
    return CannotDecode(path);
  }
  if (header.width <= 0 || header.height <= 0 || header.channels < 1 ||
      header.channels > 4) {
    return DataLossError("cannot decode " + path + ": bad image header");
  }
  return header;
}

StatusOr<std::vector<uint8_t>> DecodeImage(const std::string& path,
                                           int channels, ImageHeader* header) {
  TERN_CHECK(channels == 1 || channels == 3) << "channels=" << channels;
  TERN_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  if (bytes.size() > static_cast<size_t>(INT_MAX)) {
    return DataLossError("cannot decode " + path + ": file larger than 2 GiB");
  }
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int len = static_cast<int>(bytes.size());
  int w = 0, h = 0, stored = 0;
  std::unique_ptr<unsigned char, StbiFree> pixels(
      stbi_load_from_memory(data, len, &w, &h, &stored, channels));
  if (pixels == nullptr) return CannotDecode(path);
  if (w <= 0 || h <= 0) {
    return DataLossError("cannot decode " + path + ": empty image");
  }
  if (header != nullptr) *header = ImageHeader{w, h, stored};
  // Interleaved [h][w][c] -> planar [c][h][w].
  const size_t plane = static_cast<size_t>(w) * static_cast<size_t>(h);
  std::vector<uint8_t> out(plane * static_cast<size_t>(channels));
  const unsigned char* src = pixels.get();
  for (size_t i = 0; i < plane; ++i) {
    for (int c = 0; c < channels; ++c) {
      out[static_cast<size_t>(c) * plane + i] = src[i * channels + c];
    }
  }
  return out;
}

void ResizePlanes(const uint8_t* src, int channels, int w, int h, uint8_t* dst,
                  int dw, int dh) {
  const size_t src_plane = static_cast<size_t>(w) * h;
  const size_t dst_plane = static_cast<size_t>(dw) * dh;
  for (int c = 0; c < channels; ++c) {
    if (w == dw && h == dh) {
      std::memcpy(dst + c * dst_plane, src + c * src_plane, src_plane);
      continue;
    }
    const int ok = stbir_resize_uint8(src + c * src_plane, w, h, 0,
                                      dst + c * dst_plane, dw, dh, 0, 1);
    TERN_CHECK(ok) << "stbir_resize_uint8 " << w << "x" << h << " -> " << dw
                   << "x" << dh;
  }
}

void ResizeAndCenterCrop(const uint8_t* src, int channels, int w, int h,
                         int size, uint8_t* dst) {
  TERN_CHECK(size > 0 && w > 0 && h > 0);
  int nw = size, nh = size;
  if (w < h) {
    nh = static_cast<int>((static_cast<int64_t>(h) * size + w / 2) / w);
  } else if (h < w) {
    nw = static_cast<int>((static_cast<int64_t>(w) * size + h / 2) / h);
  }
  nw = std::max(nw, size);
  nh = std::max(nh, size);
  std::vector<uint8_t> scaled(static_cast<size_t>(channels) * nw * nh);
  ResizePlanes(src, channels, w, h, scaled.data(), nw, nh);
  const int x0 = (nw - size) / 2;
  const int y0 = (nh - size) / 2;
  for (int c = 0; c < channels; ++c) {
    for (int y = 0; y < size; ++y) {
      const uint8_t* row =
          scaled.data() + (static_cast<size_t>(c) * nh + y0 + y) * nw + x0;
      std::memcpy(dst + (static_cast<size_t>(c) * size + y) * size, row,
                  static_cast<size_t>(size));
    }
  }
}

}  // namespace tern::trainer
