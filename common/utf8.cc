#include "common/utf8.h"

#include <algorithm>
#include <cstdint>

namespace tern {
namespace {

// Length of the valid UTF-8 sequence at the start of `s`, or 0.
size_t ValidSequenceLength(std::string_view s) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t b0 = byte(0);
  if (b0 < 0x80) return 1;
  size_t len = 0;
  uint8_t lo = 0x80, hi = 0xbf;  // the allowed range of the second byte
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    len = 2;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    len = 3;
    if (b0 == 0xe0) lo = 0xa0;  // no overlong forms
    if (b0 == 0xed) hi = 0x9f;  // no surrogates
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    len = 4;
    if (b0 == 0xf0) lo = 0x90;  // no overlong forms
    if (b0 == 0xf4) hi = 0x8f;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (s.size() < len) return 0;
  if (byte(1) < lo || byte(1) > hi) return 0;
  for (size_t i = 2; i < len; ++i) {
    if (byte(i) < 0x80 || byte(i) > 0xbf) return 0;
  }
  return len;
}

}  // namespace

bool IsValidUtf8(std::string_view text) {
  while (!text.empty()) {
    const size_t n = ValidSequenceLength(text);
    if (n == 0) return false;
    text.remove_prefix(n);
  }
  return true;
}

std::string ToValidUtf8(std::string_view text, size_t max_bytes) {
  static constexpr std::string_view kReplacement = "\xef\xbf\xbd";  // U+FFFD
  std::string out;
  out.reserve(std::min(text.size(), max_bytes));
  while (!text.empty()) {
    const size_t n = ValidSequenceLength(text);
    const std::string_view piece = n == 0 ? kReplacement : text.substr(0, n);
    if (out.size() + piece.size() > max_bytes) break;
    out.append(piece);
    text.remove_prefix(n == 0 ? 1 : n);
  }
  return out;
}

std::string Quoted(std::string_view value, size_t max_bytes) {
  const std::string shown = ToValidUtf8(value, max_bytes);
  std::string out = "\"";
  for (unsigned char c : shown) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  // Cut when the whole value (repaired) is longer than what is shown.
  const bool cut = shown.size() < value.size() && ToValidUtf8(value).size() > shown.size();
  out += cut ? "\xe2\x80\xa6\"" : "\"";  // U+2026 HORIZONTAL ELLIPSIS
  if (cut) out += " (" + std::to_string(value.size()) + " bytes)";
  return out;
}

std::string CapMessage(std::string_view message, size_t max_bytes) {
  if (message.size() <= max_bytes && IsValidUtf8(message)) return std::string(message);
  const std::string note =
      "… (message cut: " + std::to_string(message.size()) + " bytes in all)";
  if (max_bytes <= note.size()) return ToValidUtf8(message, max_bytes);
  std::string out = ToValidUtf8(message, max_bytes - note.size());
  if (out.size() == ToValidUtf8(message).size()) return out;  // only repaired
  return out + note;
}

}  // namespace tern
