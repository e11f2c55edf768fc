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

}  // namespace tern

#endif  // TERN_COMMON_UTF8_H_
