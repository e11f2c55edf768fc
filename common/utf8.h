// UTF-8 checks for text that goes into proto3 `string` fields, which must
// hold valid UTF-8: protobuf parses a message with invalid UTF-8 in one as
// an error, so one stray byte from a trainer's output or a job file would
// fail the whole RPC that carries it.
// Valid means RFC 3629: no overlong forms, no surrogates, nothing above
// U+10FFFF. Plain functions; thread-safe.
#ifndef TERN_COMMON_UTF8_H_
#define TERN_COMMON_UTF8_H_

#include <cstddef>
#include <limits>
#include <string>
#include <string_view>

namespace tern {

bool IsValidUtf8(std::string_view text);

// `text` with every byte that is not part of a valid UTF-8 sequence
// replaced by U+FFFD, cut at a character boundary to at most `max_bytes`
// bytes (a character that does not fit is left out whole).
std::string ToValidUtf8(std::string_view text,
                        size_t max_bytes = std::numeric_limits<size_t>::max());

// How error messages quote a value that came from outside (a request field,
// a file): in double quotes, at most `max_bytes` of it (cut at a character
// boundary, invalid UTF-8 replaced, control characters, quotes and
// backslashes escaped), and when cut, how long it was:
//   "resnet20"   or   "aaaa…" (1048576 bytes)
// Every error message that repeats a caller's value goes through this, so
// no value can make a message too large for gRPC's metadata limits.
inline constexpr size_t kQuotedValueMaxBytes = 64;
std::string Quoted(std::string_view value, size_t max_bytes = kQuotedValueMaxBytes);

// `message` cut to at most `max_bytes` (valid UTF-8), saying how much was
// left out. The last line of defence at an RPC boundary.
std::string CapMessage(std::string_view message, size_t max_bytes);

}  // namespace tern

#endif  // TERN_COMMON_UTF8_H_
