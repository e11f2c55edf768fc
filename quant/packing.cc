#include "quant/packing.h"

#include <string>

namespace tern::quant {
namespace {

constexpr int kBase3PerByte = 5;
constexpr int kTwoBitPerByte = 4;
constexpr uint8_t kMaxBase3Byte = 242;  // 3^5 - 1

}  // namespace

uint64_t PackedSize(uint64_t count, Packing packing) {
  const uint64_t per = packing == Packing::kTwoBit ? kTwoBitPerByte : kBase3PerByte;
  return (count + per - 1) / per;
}

std::vector<uint8_t> PackCodes(const std::vector<int8_t>& codes,
                               Packing packing) {
  std::vector<uint8_t> out(PackedSize(codes.size(), packing), 0);
  if (packing == Packing::kTwoBit) {
    for (size_t i = 0; i < codes.size(); ++i) {
      const int8_t c = codes[i];
      TERN_CHECK(c >= -1 && c <= 1) << "code " << int{c} << " at " << i;
      const uint8_t bits = c == 0 ? 0 : (c > 0 ? 1 : 2);
      out[i / 4] |= static_cast<uint8_t>(bits << (2 * (i % 4)));
    }
    return out;
  }
  for (size_t byte = 0; byte < out.size(); ++byte) {
    unsigned value = 0;
    for (int k = kBase3PerByte - 1; k >= 0; --k) {
      const size_t i = byte * kBase3PerByte + k;
      int digit = 1;  // code 0 pads the last byte
      if (i < codes.size()) {
        TERN_CHECK(codes[i] >= -1 && codes[i] <= 1) << "code at " << i;
        digit = codes[i] + 1;
      }
      value = value * 3 + static_cast<unsigned>(digit);
    }
    out[byte] = static_cast<uint8_t>(value);
  }
  return out;
}

StatusOr<std::vector<int8_t>> UnpackCodes(std::string_view bytes,
                                          uint64_t count, Packing packing) {
  if (bytes.size() != PackedSize(count, packing)) {
    return DataLossError("packed codes: " + std::to_string(bytes.size()) +
                         " bytes for " + std::to_string(count) +
                         " weights, expected " +
                         std::to_string(PackedSize(count, packing)));
  }
  std::vector<int8_t> codes(count);
  if (packing == Packing::kTwoBit) {
    for (uint64_t i = 0; i < bytes.size() * 4; ++i) {
      const unsigned bits =
          (static_cast<uint8_t>(bytes[i / 4]) >> (2 * (i % 4))) & 3u;
      if (bits == 3 || (i >= count && bits != 0)) {
        return DataLossError("packed codes: invalid 2-bit code at byte " +
                             std::to_string(i / 4));
      }
      if (i < count) codes[i] = bits == 0 ? 0 : (bits == 1 ? 1 : -1);
    }
    return codes;
  }
  for (uint64_t byte = 0; byte < bytes.size(); ++byte) {
    unsigned value = static_cast<uint8_t>(bytes[byte]);
    if (value > kMaxBase3Byte) {
      return DataLossError("packed codes: invalid base-3 byte " +
                           std::to_string(value) + " at " +
                           std::to_string(byte));
    }
    for (int k = 0; k < kBase3PerByte; ++k) {
      const uint64_t i = byte * kBase3PerByte + k;
      const int digit = static_cast<int>(value % 3);
      value /= 3;
      if (i < count) {
        codes[i] = static_cast<int8_t>(digit - 1);
      } else if (digit != 1) {
        return DataLossError("packed codes: non-zero padding in byte " +
                             std::to_string(byte));
      }
    }
  }
  return codes;
}

}  // namespace tern::quant
