// Image decoding and resizing for the image-folder reader (stb_image and
// stb_image_resize; plain C++, no LibTorch).
//
// Pixels are planar, [channels][height][width] uint8, as the dataset tensors
// store them. Every function is thread-safe; failures name the file.
#ifndef TERN_WORKER_TRAINER_IMAGE_DECODE_H_
#define TERN_WORKER_TRAINER_IMAGE_DECODE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace tern::trainer {

struct ImageHeader {
  int width = 0;
  int height = 0;
  int channels = 0;  // as stored: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA
};

// Reads only the header of `path`. NOT_FOUND for a missing file, DATA_LOSS
// "cannot decode <path>: <reason>" for an unknown or broken format.
StatusOr<ImageHeader> ReadImageHeader(const std::string& path);

// Decodes `path` to `channels` (1: luminance, 3: RGB; alpha is dropped)
// planar pixels; `header` receives the stored size and channel count.
StatusOr<std::vector<uint8_t>> DecodeImage(const std::string& path,
                                           int channels, ImageHeader* header);

// Resizes each of `channels` planes from w x h to dw x dh (stb's default
// filters: Mitchell down, Catmull-Rom up; clamped edges).
void ResizePlanes(const uint8_t* src, int channels, int w, int h, uint8_t* dst,
                  int dw, int dh);

// Scales the shorter side to `size` (keeping the aspect ratio), then crops
// the centre size x size square into `dst` (channels * size * size bytes).
void ResizeAndCenterCrop(const uint8_t* src, int channels, int w, int h,
                         int size, uint8_t* dst);

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_IMAGE_DECODE_H_
