// Image decoding and resizing for the image-folder and COCO readers; plain
// C++, no LibTorch. JPEG through libjpeg-turbo, PNG through libpng, BMP, GIF,
// TGA and 8-bit binary PGM/PPM through stb_image; resizing through
// stb_image_resize. Bad bytes are a DATA_LOSS status, never a crash
// (fuzz/image_fuzz checks this under ASan and UBSan); a file cut short is an
// error in every format, not an image padded with zeros, and a small file
// cannot claim a big image (BMP, TGA and PNM sizes are checked against the
// bytes present before stb allocates).
//
// Pixels are planar, [channels][height][width] uint8, as the dataset tensors
// store them. Every function is thread-safe; failures name the file.
#ifndef TERN_WORKER_TRAINER_IMAGE_DECODE_H_
#define TERN_WORKER_TRAINER_IMAGE_DECODE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace tern::trainer {

struct ImageHeader {
  int width = 0;
  int height = 0;
  int channels = 0;  // as stored: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA (or CMYK)
};

// Reads only the header of `path` (a BMP, GIF, TGA or binary PGM/PPM is read
// whole, to check that it holds all its pixels). NOT_FOUND for a missing file,
// DATA_LOSS "cannot decode <path>: <reason>" for an unknown or broken format
// or an image above kMaxImagePixels.
StatusOr<ImageHeader> ReadImageHeader(const std::string& path);

// Largest image the decoders accept (width x height); a bigger one is
// DATA_LOSS before any pixel memory is allocated, so a small crafted file
// cannot make a reader allocate gigabytes.
inline constexpr int64_t kMaxImagePixels = int64_t{1} << 27;

// Decodes `path` to `channels` (1: luminance, 3: RGB; alpha is dropped, CMYK
// JPEGs are converted) planar pixels; `header` receives the stored size and
// channel count.
StatusOr<std::vector<uint8_t>> DecodeImage(const std::string& path,
                                           int channels, ImageHeader* header);
// The same for the bytes of an image file; `source` (usually its path)
// prefixes the errors: DATA_LOSS "cannot decode <source>: <reason>".
// `max_pixels` may lower the limit (the fuzz target keeps images small).
StatusOr<std::vector<uint8_t>> DecodeImageBytes(std::string_view bytes,
                                                const std::string& source,
                                                int channels,
                                                ImageHeader* header,
                                                int64_t max_pixels = kMaxImagePixels);

// Scales the shorter side to `size` (keeping the aspect ratio), then crops
// the centre size x size square into `dst` (channels * size * size bytes),
// with stb_image_resize's default filters (Mitchell down, Catmull-Rom up;
// clamped edges). Beyond a 4:1 aspect ratio it crops the source's centre
// square first and scales that (the same pixels but for the filter's reach
// at the crop's edges), so time and memory stay bounded: a 1 x 16M-pixel
// image is fine.
void ResizeAndCenterCrop(const uint8_t* src, int channels, int w, int h,
                         int size, uint8_t* dst);

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_IMAGE_DECODE_H_
