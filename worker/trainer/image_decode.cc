#include "worker/trainer/image_decode.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

// libjpeg, libpng and libwebp are C libraries; jpeglib.h needs <cstdio> first.
#include <csetjmp>
#include <jerror.h>
#include <jpeglib.h>
#include <png.h>
#include <webp/decode.h>

#include "common/file_util.h"

// JPEG, PNG and WebP, the formats of real data sets, go to libjpeg-turbo,
// libpng and libwebp (fuzzed upstream, patched by Debian): stb_image 2.27, the version
// Debian 12 ships, writes out of bounds on a JPEG with a bad Huffman table
// (found by fuzz/image_fuzz). stb keeps the rarer BMP, GIF, TGA and binary
// PNM, with the PNM header checked here first.
// The one definition of stb's decoders and resizer in the program; static, so
// they cannot clash with another copy linked in by a dependency.
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_ONLY_TGA
#define STBI_ONLY_PNM
#define STBI_NO_LINEAR
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>
#define STB_IMAGE_RESIZE_STATIC
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#include <stb/stb_image_resize.h>

namespace tern::trainer {
namespace {

// ResizeAndCenterCrop scales the whole image up to this aspect ratio (every
// ordinary photo), else crops first: stb's resizer costs microseconds per
// row, so a 5 x 4M image took minutes (found by fuzz/image_fuzz).
constexpr int kMaxScaledAspectRatio = 4;

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

Status CheckHeader(const std::string& source, const ImageHeader& header,
                   int64_t max_pixels = kMaxImagePixels) {
  if (header.width <= 0 || header.height <= 0 || header.channels < 1 ||
      header.channels > 4) {
    return DataLossError("cannot decode " + source + ": bad image header");
  }
  if (int64_t{header.width} * header.height > max_pixels) {
    return DataLossError("cannot decode " + source + ": " +
                         std::to_string(header.width) + "x" +
                         std::to_string(header.height) +
                         " pixels is more than the " +
                         std::to_string(max_pixels) + " this reader accepts");
  }
  return OkStatus();
}

// "truncated <format> image, <have> of its <need> pixel bytes present".
std::string Truncated(const char* format, int64_t have, int64_t need) {
  return "truncated " + std::string(format) + " image, " +
         std::to_string(std::max<int64_t>(have, 0)) + " of its " + std::to_string(need) +
         " pixel bytes present";
}

bool IsPnm(std::string_view bytes) {  // what stb takes for binary PGM or PPM
  return bytes.size() >= 2 && bytes[0] == 'P' && (bytes[1] == '5' || bytes[1] == '6');
}

// Binary PGM and PPM headers are checked here before stb sees them: stb
// 2.27 overflows an int on a long number in one, writes out of bounds when
// it converts a 16-bit one to 8 bits, and decodes a file that is cut short
// with zeros for the missing pixels (all found by fuzz/image_fuzz). Only
// 8-bit files (maxval <= 255) are accepted. Sets the size it reads.
Status CheckPnm(std::string_view bytes, const std::string& source, int64_t max_pixels,
                ImageHeader* header) {
  const auto bad = [&](const std::string& why) {
    return DataLossError("cannot decode " + source + ": " + why);
  };
  size_t pos = 2;
  int64_t fields[3] = {0, 0, 0};  // width, height, maxval
  for (int64_t& field : fields) {
    while (pos < bytes.size()) {  // whitespace and # comments, as stb skips them
      if (std::isspace(static_cast<unsigned char>(bytes[pos]))) {
        ++pos;
      } else if (bytes[pos] == '#') {
        while (pos < bytes.size() && bytes[pos] != '\n' && bytes[pos] != '\r') ++pos;
      } else {
        break;
      }
    }
    if (pos == bytes.size() || !std::isdigit(static_cast<unsigned char>(bytes[pos]))) {
      return bad("bad PNM header");
    }
    while (pos < bytes.size() && std::isdigit(static_cast<unsigned char>(bytes[pos]))) {
      field = field * 10 + (bytes[pos++] - '0');
      if (field > (int64_t{1} << 24)) return bad("bad PNM header: a number above 16777216");
    }
  }
  if (fields[0] == 0 || fields[1] == 0 || fields[2] == 0) return bad("bad PNM header");
  if (fields[2] > 255) return bad("16-bit PNM (maxval above 255) is not supported");
  ++pos;  // the one whitespace byte before the pixels
  header->width = static_cast<int>(fields[0]);
  header->height = static_cast<int>(fields[1]);
  header->channels = bytes[1] == '6' ? 3 : 1;
  TERN_RETURN_IF_ERROR(CheckHeader(source, *header, max_pixels));
  const int64_t need = fields[0] * fields[1] * header->channels;
  const int64_t have = pos < bytes.size() ? static_cast<int64_t>(bytes.size() - pos) : 0;
  if (have < need) {
    return bad(Truncated("PNM", have, need));
  }
  return OkStatus();
}

// Little-endian fields; the caller has checked that they are in `bytes`.
uint32_t Le16(std::string_view bytes, size_t pos) {
  return static_cast<uint32_t>(static_cast<uint8_t>(bytes[pos])) |
         static_cast<uint32_t>(static_cast<uint8_t>(bytes[pos + 1])) << 8;
}
uint32_t Le32(std::string_view bytes, size_t pos) {
  return Le16(bytes, pos) | Le16(bytes, pos + 2) << 16;
}

bool IsBmp(std::string_view bytes) { return bytes.size() >= 2 && bytes.substr(0, 2) == "BM"; }
bool IsGif(std::string_view bytes) { return bytes.size() >= 4 && bytes.substr(0, 4) == "GIF8"; }

// The BMP header, read here because stb 2.27 returns a top-down file's
// height negative from its header reader, takes abs() of INT_MIN, and
// decodes a file that is cut short (or a 54-byte file claiming 2^27 pixels)
// with zeros. Uncompressed and bit-field BMPs only, as stb. The last row
// may lack its padding. Sets the size.
Status CheckBmp(std::string_view bytes, const std::string& source, int64_t max_pixels,
                ImageHeader* header) {
  const auto bad = [&](const std::string& why) {
    return DataLossError("cannot decode " + source + ": " + why);
  };
  if (bytes.size() < 18) return bad("truncated BMP header");
  const uint32_t offset = Le32(bytes, 10), header_size = Le32(bytes, 14);
  if (header_size != 12 && header_size != 40 && header_size != 56 && header_size != 108 &&
      header_size != 124) {
    return bad("BMP header of " + std::to_string(header_size) + " bytes is not supported");
  }
  if (bytes.size() < 14 + size_t{header_size}) return bad("truncated BMP header");
  int64_t width = 0, height = 0;
  uint32_t planes = 0, bits = 0, compression = 0;
  if (header_size == 12) {
    width = Le16(bytes, 18);
    height = Le16(bytes, 20);
    planes = Le16(bytes, 22);
    bits = Le16(bytes, 24);
  } else {
    width = static_cast<int32_t>(Le32(bytes, 18));
    height = static_cast<int32_t>(Le32(bytes, 22));  // negative: rows stored top-down
    planes = Le16(bytes, 26);
    bits = Le16(bytes, 28);
    compression = Le32(bytes, 30);
  }
  if (planes != 1) return bad("bad BMP header (" + std::to_string(planes) + " planes)");
  if (bits != 1 && bits != 4 && bits != 8 && bits != 16 && bits != 24 && bits != 32) {
    return bad("BMP of " + std::to_string(bits) + " bits per pixel is not supported");
  }
  if (compression == 1 || compression == 2) return bad("run-length encoded BMP is not supported");
  if (compression != 0 && compression != 3) {
    return bad("BMP compression " + std::to_string(compression) + " is not supported");
  }
  if (width <= 0 || height == 0 || height == INT32_MIN) {
    return bad("bad BMP size " + std::to_string(width) + "x" + std::to_string(height));
  }
  header->width = static_cast<int>(width);
  header->height = static_cast<int>(std::abs(height));
  TERN_RETURN_IF_ERROR(CheckHeader(source, *header, max_pixels));
  if (offset < 14 + header_size) return bad("bad BMP pixel data offset " + std::to_string(offset));
  const int64_t stride = (width * bits + 31) / 32 * 4;
  const int64_t need = stride * (header->height - 1) + (width * bits + 7) / 8;
  const int64_t have = static_cast<int64_t>(bytes.size()) - offset;
  if (have < need) return bad(Truncated("BMP", have, need));
  return OkStatus();
}

// TGA has no magic number: stb's header reader has accepted the file. Stb
// decodes a file that is cut short with zeros; this walks the pixel data
// (run-length packets included) to check that every pixel is there.
Status CheckTga(std::string_view bytes, const std::string& source, const ImageHeader& header) {
  const auto bad = [&](const std::string& why) {
    return DataLossError("cannot decode " + source + ": " + why);
  };
  if (bytes.size() < 18) return bad("truncated TGA header");
  const int id_length = static_cast<uint8_t>(bytes[0]);
  const bool indexed = bytes[1] == 1;
  const int type = static_cast<uint8_t>(bytes[2]);
  const int64_t palette_first = Le16(bytes, 3), palette_entries = Le16(bytes, 5);
  const int palette_bits = static_cast<uint8_t>(bytes[7]);
  const int pixel_bytes = (static_cast<uint8_t>(bytes[16]) + 7) / 8;
  // stb skips `palette_first` bytes before the palette (an stb quirk; the
  // first entry's index is 0 in the files seen in practice).
  int64_t pos = 18 + id_length;
  if (indexed) pos += palette_first + palette_entries * ((palette_bits + 7) / 8);
  const int64_t pixels = int64_t{header.width} * header.height;
  const int64_t size = static_cast<int64_t>(bytes.size());
  if (type < 8) {  // uncompressed
    const int64_t need = pixels * pixel_bytes;
    if (size - pos < need) return bad(Truncated("TGA", size - pos, need));
    return OkStatus();
  }
  for (int64_t covered = 0; covered < pixels;) {  // packets: a count byte, then pixels
    if (pos >= size) {
      return bad("truncated TGA image, run-length data ends after " + std::to_string(covered) +
                 " of its " + std::to_string(pixels) + " pixels");
    }
    const uint8_t packet = static_cast<uint8_t>(bytes[pos++]);
    const int count = (packet & 0x7f) + 1;
    pos += int64_t{(packet & 0x80) != 0 ? 1 : count} * pixel_bytes;
    covered += count;
    if (pos > size) {
      return bad("truncated TGA image, run-length data ends inside a packet");
    }
  }
  return OkStatus();
}

// stb decodes the first image of a GIF and fills whatever its data does not
// reach with zeros; this walks the blocks up to the end of that image's
// data to check that the file is not cut short.
Status CheckGif(std::string_view bytes, const std::string& source) {
  const auto bad = [&](const std::string& why) {
    return DataLossError("cannot decode " + source + ": " + why);
  };
  const size_t size = bytes.size();
  const auto truncated = [&] { return bad("truncated GIF image"); };
  if (size < 13) return truncated();
  size_t pos = 13;
  const auto skip_palette = [&](uint8_t flags) {
    if ((flags & 0x80) != 0) pos += size_t{3} << ((flags & 7) + 1);
  };
  const auto skip_sub_blocks = [&]() -> bool {  // false if the file ends first
    while (pos < size) {
      const size_t length = static_cast<uint8_t>(bytes[pos++]);
      if (length == 0) return true;
      pos += length;
    }
    return false;
  };
  skip_palette(static_cast<uint8_t>(bytes[10]));
  while (true) {
    if (pos >= size) return truncated();
    const uint8_t block = static_cast<uint8_t>(bytes[pos++]);
    if (block == 0x21) {  // extension: a label, then sub-blocks
      ++pos;
      if (!skip_sub_blocks()) return truncated();
    } else if (block == 0x2c) {  // image: descriptor, palette, code size, data
      if (pos + 9 > size) return truncated();
      skip_palette(static_cast<uint8_t>(bytes[pos + 8]));
      pos += 9 + 1;
      if (pos > size || !skip_sub_blocks()) return truncated();
      return OkStatus();
    } else if (block == 0x3b) {
      return bad("GIF holds no image");
    } else {
      return bad("bad GIF block type " + std::to_string(block));
    }
  }
}

bool IsPng(std::string_view bytes) {
  return bytes.size() >= 8 && bytes.substr(0, 8) == std::string_view("\x89PNG\r\n\x1a\n", 8);
}

bool IsJpeg(std::string_view bytes) {
  return bytes.size() >= 3 && bytes.substr(0, 3) == "\xff\xd8\xff";
}

// Interleaved [h][w][n] bytes to planar [c][h][w] with `channels` (1 or 3)
// out of n (1 to 4: grey, grey+alpha, RGB, RGBA): alpha is dropped, grey is
// repeated, and colour becomes grey with stb's weights (77 R + 150 G + 29 B)
// / 256.
std::vector<uint8_t> ToPlanar(const uint8_t* src, int w, int h, int n, int channels) {
  const size_t plane = static_cast<size_t>(w) * static_cast<size_t>(h);
  std::vector<uint8_t> out(plane * static_cast<size_t>(channels));
  for (size_t i = 0; i < plane; ++i) {
    const uint8_t* p = src + i * static_cast<size_t>(n);
    if (channels == 3 && n >= 3) {
      for (int c = 0; c < 3; ++c) out[c * plane + i] = p[c];
    } else if (channels == 3) {
      for (int c = 0; c < 3; ++c) out[c * plane + i] = p[0];
    } else if (n >= 3) {
      out[i] = static_cast<uint8_t>((p[0] * 77 + p[1] * 150 + p[2] * 29) >> 8);
    } else {
      out[i] = p[0];
    }
  }
  return out;
}

// --- PNG (libpng's simplified API) ---

struct PngImage {
  png_image image;
  PngImage() {
    std::memset(&image, 0, sizeof(image));
    image.version = PNG_IMAGE_VERSION;
  }
  ~PngImage() { png_image_free(&image); }
};

void PngHeader(const png_image& image, ImageHeader* header) {
  header->width = static_cast<int>(std::min<png_uint_32>(image.width, INT_MAX));
  header->height = static_cast<int>(std::min<png_uint_32>(image.height, INT_MAX));
  header->channels = static_cast<int>(PNG_IMAGE_SAMPLE_CHANNELS(image.format));
}

StatusOr<std::vector<uint8_t>> DecodePng(std::string_view bytes, const std::string& source,
                                         int channels, int64_t max_pixels,
                                         ImageHeader* header) {
  PngImage png;
  if (!png_image_begin_read_from_memory(&png.image, bytes.data(), bytes.size())) {
    return DataLossError("cannot decode " + source + ": " + png.image.message);
  }
  PngHeader(png.image, header);
  TERN_RETURN_IF_ERROR(CheckHeader(source, *header, max_pixels));
  // RGBA, not premultiplied (8-bit sRGB), so dropping alpha keeps the colour.
  png.image.format = PNG_FORMAT_RGBA;
  std::vector<uint8_t> rgba(PNG_IMAGE_SIZE(png.image));
  if (!png_image_finish_read(&png.image, nullptr, rgba.data(), 0, nullptr)) {
    return DataLossError("cannot decode " + source + ": " + png.image.message);
  }
  return ToPlanar(rgba.data(), header->width, header->height, 4, channels);
}

// --- JPEG (libjpeg-turbo) ---

// libjpeg reports errors through a callback that must not return: it jumps
// back to the setjmp in the function that called into the library. Those
// functions hold no C++ objects with destructors (RunJpeg below).
struct JpegErrors {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated;  // "Premature end of JPEG file": a cut file is an error
};

void JpegErrorExit(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, errors->message);
  std::longjmp(errors->jump, 1);
}

void JpegEmitMessage(j_common_ptr cinfo, int level) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  // Other warnings ("extraneous bytes before marker") are common in real
  // photos and harmless, as in PIL.
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF && !errors->truncated) {
    errors->truncated = true;
    (*cinfo->err->format_message)(cinfo, errors->message);
  }
}

// Reads the header of the source set on `cinfo`; with `out`, also the
// pixels (unless there are more than max_pixels), as interleaved bytes
// of out_color_space: grey, RGB, or CMYK for a CMYK file (the caller
// converts it). False on a libjpeg error.
bool RunJpeg(jpeg_decompress_struct* cinfo, JpegErrors* errors, int channels,
             int64_t max_pixels, std::vector<uint8_t>* out) {
  if (setjmp(errors->jump) != 0) return false;
  jpeg_read_header(cinfo, TRUE);
  if (out == nullptr) return true;
  if (int64_t{cinfo->image_width} * cinfo->image_height > max_pixels) return true;
  const bool cmyk = cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK;
  cinfo->out_color_space = cmyk ? JCS_CMYK : channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(cinfo);
  const size_t row = static_cast<size_t>(cinfo->output_width) * cinfo->output_components;
  out->resize(row * cinfo->output_height);
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW rows[1] = {out->data() + row * cinfo->output_scanline};
    jpeg_read_scanlines(cinfo, rows, 1);
  }
  jpeg_finish_decompress(cinfo);
  return true;
}

struct JpegDecompress {
  jpeg_decompress_struct cinfo;
  JpegErrors errors;
  JpegDecompress() {
    std::memset(&errors, 0, sizeof(errors));
    cinfo.err = jpeg_std_error(&errors.mgr);
    errors.mgr.error_exit = JpegErrorExit;
    errors.mgr.emit_message = JpegEmitMessage;
    jpeg_create_decompress(&cinfo);
  }
  ~JpegDecompress() { jpeg_destroy_decompress(&cinfo); }

  void Header(ImageHeader* header) const {
    header->width = static_cast<int>(std::min<JDIMENSION>(cinfo.image_width, INT_MAX));
    header->height = static_cast<int>(std::min<JDIMENSION>(cinfo.image_height, INT_MAX));
    header->channels = cinfo.num_components;
  }
  Status Error(const std::string& source) const {
    return DataLossError("cannot decode " + source + ": " + errors.message);
  }
};

StatusOr<std::vector<uint8_t>> DecodeJpeg(std::string_view bytes, const std::string& source,
                                          int channels, int64_t max_pixels,
                                          ImageHeader* header) {
  JpegDecompress jpeg;
  jpeg_mem_src(&jpeg.cinfo, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  std::vector<uint8_t> pixels;
  const bool ok = RunJpeg(&jpeg.cinfo, &jpeg.errors, channels, max_pixels, &pixels);
  jpeg.Header(header);
  if (!ok) return jpeg.Error(source);
  TERN_RETURN_IF_ERROR(CheckHeader(source, *header, max_pixels));
  if (jpeg.errors.truncated) return jpeg.Error(source);
  const int w = header->width, h = header->height;
  if (jpeg.cinfo.out_color_space != JCS_CMYK) {
    return ToPlanar(pixels.data(), w, h, jpeg.cinfo.output_components, channels);
  }
  // CMYK to RGB; Adobe's files store the inks inverted.
  const bool inverted = jpeg.cinfo.saw_Adobe_marker;
  std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
  for (size_t i = 0; i < rgb.size() / 3; ++i) {
    const uint8_t* p = pixels.data() + 4 * i;
    const int k = inverted ? p[3] : 255 - p[3];
    for (int c = 0; c < 3; ++c) {
      const int ink = inverted ? p[c] : 255 - p[c];
      rgb[3 * i + c] = static_cast<uint8_t>(ink * k / 255);
    }
  }
  return ToPlanar(rgb.data(), w, h, 3, channels);
}

// --- WebP (libwebp; the first frame's decoder, no animation) ---

bool IsWebp(std::string_view bytes) {
  return bytes.size() >= 12 && bytes.substr(0, 4) == "RIFF" && bytes.substr(8, 4) == "WEBP";
}

std::string WebpStatusText(VP8StatusCode status) {
  switch (status) {
    case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
    case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR: return "bad WebP data";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "WebP feature not supported";
    case VP8_STATUS_NOT_ENOUGH_DATA: return "truncated WebP image";
    default: return "WebP decoder status " + std::to_string(static_cast<int>(status));
  }
}

// The header from the bitstream's features; an animation is refused (its
// frames need the demuxer, and a data set of stills has no use for them).
Status WebpHeader(std::string_view bytes, const std::string& source, int64_t max_pixels,
                  WebPBitstreamFeatures* features, ImageHeader* header) {
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  const VP8StatusCode status = WebPGetFeatures(data, bytes.size(), features);
  if (status != VP8_STATUS_OK) {
    return DataLossError("cannot decode " + source + ": " + WebpStatusText(status));
  }
  if (features->has_animation) {
    return DataLossError("cannot decode " + source + ": animated WebP is not supported");
  }
  *header = ImageHeader{features->width, features->height, features->has_alpha ? 4 : 3};
  return CheckHeader(source, *header, max_pixels);
}

StatusOr<std::vector<uint8_t>> DecodeWebp(std::string_view bytes, const std::string& source,
                                          int channels, int64_t max_pixels,
                                          ImageHeader* header) {
  WebPDecoderConfig config;
  if (!WebPInitDecoderConfig(&config)) {
    return InternalError("cannot decode " + source + ": libwebp version mismatch");
  }
  TERN_RETURN_IF_ERROR(WebpHeader(bytes, source, max_pixels, &config.input, header));
  // RGB into memory owned here (alpha is dropped, as for PNG).
  std::vector<uint8_t> rgb(static_cast<size_t>(header->width) * header->height * 3);
  config.output.colorspace = MODE_RGB;
  config.output.is_external_memory = 1;
  config.output.u.RGBA.rgba = rgb.data();
  config.output.u.RGBA.stride = header->width * 3;
  config.output.u.RGBA.size = rgb.size();
  const VP8StatusCode status =
      WebPDecode(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), &config);
  WebPFreeDecBuffer(&config.output);  // frees nothing of `rgb`; required by the API
  if (status != VP8_STATUS_OK) {
    return DataLossError("cannot decode " + source + ": " + WebpStatusText(status));
  }
  return ToPlanar(rgb.data(), header->width, header->height, 3, channels);
}

// The header of a BMP, GIF, TGA or binary PNM (the formats left to stb),
// after checking that the file holds all of its first image.
StatusOr<ImageHeader> CheckStbImage(std::string_view bytes, const std::string& source,
                                    int64_t max_pixels) {
  ImageHeader header;
  if (bytes.size() > static_cast<size_t>(INT_MAX)) {
    return DataLossError("cannot decode " + source + ": file larger than 2 GiB");
  }
  if (IsPnm(bytes)) {
    TERN_RETURN_IF_ERROR(CheckPnm(bytes, source, max_pixels, &header));
    return header;
  }
  if (!stbi_info_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()),
                             static_cast<int>(bytes.size()), &header.width, &header.height,
                             &header.channels)) {
    return CannotDecode(source);
  }
  if (IsBmp(bytes)) {  // channels from stb (alpha or not), the size from here
    TERN_RETURN_IF_ERROR(CheckBmp(bytes, source, max_pixels, &header));
    return header;
  }
  TERN_RETURN_IF_ERROR(CheckHeader(source, header, max_pixels));
  if (IsGif(bytes)) {
    TERN_RETURN_IF_ERROR(CheckGif(bytes, source));
  } else {
    TERN_RETURN_IF_ERROR(CheckTga(bytes, source, header));
  }
  return header;
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
  char magic_bytes[12] = {0};  // enough for PNG, JPEG and WebP ("RIFF" size "WEBP")
  const std::string_view magic(magic_bytes,
                               std::fread(magic_bytes, 1, sizeof(magic_bytes), file.get()));
  std::rewind(file.get());
  if (IsPng(magic)) {
    PngImage png;
    if (!png_image_begin_read_from_stdio(&png.image, file.get())) {
      return DataLossError("cannot decode " + path + ": " + png.image.message);
    }
    PngHeader(png.image, &header);
    TERN_RETURN_IF_ERROR(CheckHeader(path, header));
    return header;
  }
  if (IsWebp(magic)) {
    file.reset();  // the features may sit after other chunks: the whole file
    TERN_ASSIGN_OR_RETURN(const std::string bytes, ReadFileToString(path));
    WebPBitstreamFeatures features;
    TERN_RETURN_IF_ERROR(WebpHeader(bytes, path, kMaxImagePixels, &features, &header));
    return header;
  }
  if (IsJpeg(magic)) {
    JpegDecompress jpeg;
    jpeg_stdio_src(&jpeg.cinfo, file.get());
    if (!RunJpeg(&jpeg.cinfo, &jpeg.errors, 3, kMaxImagePixels, nullptr)) {
      return jpeg.Error(path);
    }
    jpeg.Header(&header);
    TERN_RETURN_IF_ERROR(CheckHeader(path, header));
    return header;
  }
  // BMP, GIF, TGA, PNM: the whole file, to check that it holds all its
  // pixels (these formats are rare in data sets, and the bytes are read to
  // decode them anyway).
  file.reset();
  TERN_ASSIGN_OR_RETURN(const std::string bytes, ReadFileToString(path));
  return CheckStbImage(bytes, path, kMaxImagePixels);
}

StatusOr<std::vector<uint8_t>> DecodeImage(const std::string& path,
                                           int channels, ImageHeader* header) {
  TERN_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  return DecodeImageBytes(bytes, path, channels, header);
}

StatusOr<std::vector<uint8_t>> DecodeImageBytes(std::string_view bytes,
                                                const std::string& source,
                                                int channels,
                                                ImageHeader* header,
                                                int64_t max_pixels) {
  TERN_CHECK(channels == 1 || channels == 3) << "channels=" << channels;
  ImageHeader ignored;
  if (header == nullptr) header = &ignored;
  if (IsPng(bytes)) return DecodePng(bytes, source, channels, max_pixels, header);
  if (IsJpeg(bytes)) return DecodeJpeg(bytes, source, channels, max_pixels, header);
  if (IsWebp(bytes)) return DecodeWebp(bytes, source, channels, max_pixels, header);
  TERN_ASSIGN_OR_RETURN(const ImageHeader stored, CheckStbImage(bytes, source, max_pixels));
  int w = 0, h = 0, n = 0;
  std::unique_ptr<unsigned char, StbiFree> pixels(
      stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()),
                            static_cast<int>(bytes.size()), &w, &h, &n, channels));
  if (pixels == nullptr) return CannotDecode(source);
  if (w != stored.width || h != stored.height) {
    return DataLossError("cannot decode " + source + ": header says " +
                         std::to_string(stored.width) + "x" +
                         std::to_string(stored.height) + ", pixels are " +
                         std::to_string(w) + "x" + std::to_string(h));
  }
  *header = ImageHeader{w, h, n};
  return ToPlanar(pixels.get(), w, h, channels, channels);
}

void ResizeAndCenterCrop(const uint8_t* src, int channels, int w, int h,
                         int size, uint8_t* dst) {
  TERN_CHECK(size > 0 && w > 0 && h > 0);
  // The scaled image (shorter side `size`) is nw x nh, and the crop is its
  // centre square [x0, x0 + size) x [y0, y0 + size).
  int64_t nw = size, nh = size;
  if (w < h) {
    nh = (int64_t{h} * size + w / 2) / w;
  } else if (h < w) {
    nw = (int64_t{w} * size + h / 2) / h;
  }
  nw = std::max<int64_t>(nw, size);
  nh = std::max<int64_t>(nh, size);
  const size_t src_plane = static_cast<size_t>(w) * h;
  const size_t dst_plane = static_cast<size_t>(size) * size;
  if (std::max(w, h) > int64_t{kMaxScaledAspectRatio} * std::min(w, h)) {
    // An extreme aspect ratio: crop the source's centre square first, then
    // scale it (the same pixels up to the filter's reach at the crop edges).
    const int side = std::min(w, h);
    const size_t offset = static_cast<size_t>((h - side) / 2) * w + (w - side) / 2;
    for (int c = 0; c < channels; ++c) {
      const int ok = stbir_resize_uint8(src + c * src_plane + offset, side, side, w,
                                        dst + c * dst_plane, size, size, 0, 1);
      TERN_CHECK(ok) << "stbir_resize_uint8 " << side << "x" << side << " -> " << size;
    }
    return;
  }
  const int64_t x0 = (nw - size) / 2;
  const int64_t y0 = (nh - size) / 2;
  std::vector<uint8_t> scaled;
  for (int c = 0; c < channels; ++c) {
    const uint8_t* plane = src + c * src_plane;
    int64_t stride = w;
    if (nw != w || nh != h) {  // else the shorter side is `size` already
      scaled.resize(static_cast<size_t>(nw * nh));
      const int ok = stbir_resize_uint8(plane, w, h, 0, scaled.data(), static_cast<int>(nw),
                                        static_cast<int>(nh), 0, 1);
      TERN_CHECK(ok) << "stbir_resize_uint8 " << w << "x" << h << " -> " << nw << "x" << nh;
      plane = scaled.data();
      stride = nw;
    }
    for (int64_t y = 0; y < size; ++y) {
      std::memcpy(dst + c * dst_plane + y * size, plane + (y0 + y) * stride + x0,
                  static_cast<size_t>(size));
    }
  }
}

}  // namespace tern::trainer
