// Line-oriented configuration files read by the daemons (ternd's token and
// quota tables): one record per line, words separated by spaces or tabs,
// "#" to the line's end a comment, CRLF accepted, blank lines skipped.
//
// Also the one rule for identity names (job owners, token names, client
// certificate names): 1..128 printable ASCII characters without spaces.
#ifndef TERN_COMMON_CONFIG_TEXT_H_
#define TERN_COMMON_CONFIG_TEXT_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace tern {

inline constexpr size_t kMaxIdentityNameLength = 128;

struct ConfigLine {
  size_t number = 0;               // 1-based, for "<path>:<number>: ..." errors
  std::vector<std::string> words;  // never empty
};

// The non-blank lines of `text`, comments removed.
std::vector<ConfigLine> SplitConfigLines(std::string_view text);

// 1..128 printable ASCII characters, none of them a space.
bool IsIdentityName(std::string_view name);

}  // namespace tern

#endif  // TERN_COMMON_CONFIG_TEXT_H_
