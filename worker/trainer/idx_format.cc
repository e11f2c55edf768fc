#include "worker/trainer/idx_format.h"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstdio>

#include "common/file_util.h"

namespace tern::trainer {
namespace {

uint32_t BigEndian32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(u[0]) << 24 | static_cast<uint32_t>(u[1]) << 16 |
         static_cast<uint32_t>(u[2]) << 8 | static_cast<uint32_t>(u[3]);
}

std::string Hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08X", v);
  return buf;
}

std::string Dims(int64_t h, int64_t w) { return std::to_string(h) + "x" + std::to_string(w); }

// Inflates up to `limit` bytes; past it, DATA_LOSS, or (`quiet`) the first
// `limit` bytes.
StatusOr<std::string> Inflate(std::string_view raw, const std::string& path, size_t limit,
                              bool quiet);

// The size the IDX header at the start of `head` declares (header plus data),
// or SIZE_MAX when `head` does not hold a whole header or the size overflows
// (ParseIdx then words the error).
// Not inlined: GCC 12 then warns that a short string's bytes "may be used
// uninitialized" (a false positive of -Wmaybe-uninitialized).
[[gnu::noinline]] size_t IdxDeclaredSize(const std::string& head) {
  if (head.size() < 4) return SIZE_MAX;
  const size_t ndims = static_cast<unsigned char>(head.at(3));
  const size_t header = 4 + 4 * ndims;
  if (head.size() < header) return SIZE_MAX;
  uint64_t size = header;
  uint64_t data = 1;
  for (size_t d = 0; d < ndims; ++d) {
    if (__builtin_mul_overflow(data, uint64_t{BigEndian32(head.data() + 4 + 4 * d)}, &data)) {
      return SIZE_MAX;
    }
  }
  if (__builtin_add_overflow(size, data, &size) || size >= SIZE_MAX) return SIZE_MAX;
  return static_cast<size_t>(size);
}

}  // namespace

StatusOr<std::string> Gunzip(std::string_view raw, const std::string& path, size_t max_output) {
  return Inflate(raw, path, max_output, /*quiet=*/false);
}

StatusOr<std::string> GunzipIdx(std::string_view raw, const std::string& path) {
  constexpr size_t kLongestIdxHeader = 4 + 4 * 255;
  TERN_ASSIGN_OR_RETURN(const std::string head,
                        Inflate(raw, path, kLongestIdxHeader, /*quiet=*/true));
  return Gunzip(raw, path, IdxDeclaredSize(head));
}

namespace {

StatusOr<std::string> Inflate(std::string_view raw, const std::string& path, size_t limit,
                              bool quiet) {
  std::string out;
  if (raw.size() >= 18) {  // ISIZE trailer: uncompressed size mod 2^32
    const auto* t =
        reinterpret_cast<const unsigned char*>(raw.data()) + raw.size() - 4;
    const uint32_t isize =
        static_cast<uint32_t>(t[0]) | static_cast<uint32_t>(t[1]) << 8 |
        static_cast<uint32_t>(t[2]) << 16 | static_cast<uint32_t>(t[3]) << 24;
    // Only a hint: a corrupt trailer must not reserve gigabytes. Deflate
    // expands at most ~1032:1.
    out.reserve(std::min<size_t>({isize, raw.size() * 1032, size_t{1} << 31, limit}));
  }
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 16) != Z_OK) {
    return InternalError("inflateInit2 failed for " + path);
  }
  struct Ender {
    z_stream* zs;
    ~Ender() { inflateEnd(zs); }
  } ender{&zs};
  size_t in_pos = 0;
  char buf[1 << 16];
  while (true) {
    if (zs.avail_in == 0 && in_pos < raw.size()) {
      const size_t n = std::min<size_t>(raw.size() - in_pos, UINT_MAX);
      zs.next_in =
          reinterpret_cast<Bytef*>(const_cast<char*>(raw.data())) + in_pos;
      zs.avail_in = static_cast<uInt>(n);
      in_pos += n;
    }
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    const int ret = inflate(&zs, Z_NO_FLUSH);
    const size_t produced = sizeof(buf) - zs.avail_out;
    if (produced > limit - out.size()) {
      if (quiet) {
        out.append(buf, limit - out.size());
        return out;
      }
      return DataLossError(path + ": inflates to more than " + std::to_string(limit) +
                           " bytes" +
                           (limit == SIZE_MAX ? "" : " (the size its IDX header declares)"));
    }
    out.append(buf, produced);
    if (ret == Z_STREAM_END) {
      const size_t rest = zs.avail_in + (raw.size() - in_pos);
      const size_t at = raw.size() - rest;
      // Another gzip member follows (concatenated .gz files)?
      if (rest >= 2 && static_cast<unsigned char>(raw[at]) == 0x1f &&
          static_cast<unsigned char>(raw[at + 1]) == 0x8b) {
        inflateReset(&zs);
        continue;
      }
      return out;  // trailing garbage is ignored, as gzip -d does
    }
    if (ret == Z_OK) continue;
    if (ret == Z_BUF_ERROR && zs.avail_in == 0 && in_pos == raw.size()) {
      if (quiet) return out;
      return DataLossError(path + ": truncated gzip stream (ends after " +
                           std::to_string(out.size()) + " uncompressed bytes)");
    }
    return DataLossError(
        path + ": corrupt gzip data: " +
        (zs.msg != nullptr ? zs.msg : "inflate error " + std::to_string(ret)));
  }
}

}  // namespace

StatusOr<std::string> ReadMaybeGzip(const std::string& path) {
  StatusOr<std::string> raw = ReadFileToString(path);
  if (raw.ok() && raw->size() >= 2 && static_cast<unsigned char>((*raw)[0]) == 0x1f &&
      static_cast<unsigned char>((*raw)[1]) == 0x8b) {
    return GunzipIdx(*raw, path);
  }
  return raw;
}

StatusOr<IdxArray> ParseIdx(std::string_view bytes, const std::string& path, int want_dims,
                            const char* what) {
  if (bytes.size() < 4) {
    return DataLossError(
        path + ": truncated IDX file: " + std::to_string(bytes.size()) +
        " bytes, shorter than the 4-byte magic number");
  }
  const uint32_t magic = BigEndian32(bytes.data());
  const uint32_t want_magic = 0x800u | static_cast<uint32_t>(want_dims);
  if (bytes[0] != 0 || bytes[1] != 0) {
    return InvalidArgumentError(path + ": bad magic number " + Hex32(magic) +
                                ", not an IDX file (" + what +
                                " files start with " + Hex32(want_magic) + ")");
  }
  const int type = static_cast<unsigned char>(bytes[2]);
  const int ndims = static_cast<unsigned char>(bytes[3]);
  if (type != 0x08) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "0x%02X", type);
    return InvalidArgumentError(path + ": unsupported IDX element type " + buf +
                                " in magic number " + Hex32(magic) +
                                " (only 0x08, unsigned byte)");
  }
  if (ndims != want_dims) {
    return InvalidArgumentError(
        path + ": wrong dimensions: magic number " + Hex32(magic) + " says " +
        std::to_string(ndims) + ", " + what + " need " +
        std::to_string(want_dims) + " (magic " + Hex32(want_magic) + ")");
  }
  const size_t header = 4 + 4 * static_cast<size_t>(ndims);
  if (bytes.size() < header) {
    return DataLossError(
        path + ": truncated IDX header: " + std::to_string(bytes.size()) +
        " bytes, need " + std::to_string(header));
  }
  IdxArray array;
  uint64_t expected = 1;
  bool overflow = false;
  for (int d = 0; d < ndims; ++d) {
    const uint32_t n = BigEndian32(bytes.data() + 4 + 4 * d);
    array.dims.push_back(n);
    overflow = overflow || __builtin_mul_overflow(expected, n, &expected);
  }
  for (int d = 1; d < ndims; ++d) {
    if (array.dims[d] == 0) {
      return InvalidArgumentError(path + ": wrong dimensions: image size " +
                                  Dims(array.dims[1], array.dims[2]));
    }
  }
  const uint64_t available = bytes.size() - header;
  std::string described = std::to_string(array.dims[0]) + " " + what;
  if (ndims == 3) {
    described += " of " + Dims(array.dims[1], array.dims[2]);
  }
  if (overflow || expected > available) {
    return DataLossError(
        path + ": truncated: the header says " + described + " (" +
        (overflow ? std::string("more than 2^64") : std::to_string(expected)) +
        " bytes) but only " + std::to_string(available) + " bytes follow");
  }
  if (expected < available) {
    return DataLossError(path + ": " + std::to_string(available - expected) +
                         " unexpected bytes after the " + described +
                         " that the header describes");
  }
  array.data = bytes.data() + header;
  return array;
}

}  // namespace tern::trainer
