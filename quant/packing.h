// Packing of ternary codes {-1, 0, +1} into bytes.
//
// 2-bit: four codes per byte, code i in bits 2i..2i+1 (0 → 00, +1 → 01,
// -1 → 10; 11 is invalid). Base-3: five codes per byte, byte = Σ 3^i·(c_i+1)
// (≤ 242; larger bytes are invalid), 1.6 bits per weight. Unused slots of the
// last byte hold code 0. Unpacking validates every byte, so corrupt input is
// an error, never garbage codes. Pure functions, thread-safe.
#ifndef TERN_QUANT_PACKING_H_
#define TERN_QUANT_PACKING_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "quant/options.h"

namespace tern::quant {

// Bytes needed for `count` codes.
uint64_t PackedSize(uint64_t count, Packing packing);

// Codes must be in {-1, 0, +1} (TERN_CHECK).
std::vector<uint8_t> PackCodes(const std::vector<int8_t>& codes,
                               Packing packing);

// DATA_LOSS naming the first bad byte when `bytes` is not a valid packing of
// exactly `count` codes.
StatusOr<std::vector<int8_t>> UnpackCodes(std::string_view bytes,
                                          uint64_t count, Packing packing);

}  // namespace tern::quant

#endif  // TERN_QUANT_PACKING_H_
