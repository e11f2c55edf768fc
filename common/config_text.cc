#include "common/config_text.h"

#include <algorithm>

namespace tern {
namespace {

bool IsBlank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

}  // namespace

std::vector<ConfigLine> SplitConfigLines(std::string_view text) {
  std::vector<ConfigLine> lines;
  size_t number = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    ++number;
    const size_t comment = line.find('#');
    if (comment != std::string_view::npos) line = line.substr(0, comment);
    ConfigLine parsed;
    parsed.number = number;
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && IsBlank(line[i])) ++i;
      const size_t word_start = i;
      while (i < line.size() && !IsBlank(line[i])) ++i;
      if (i > word_start) parsed.words.emplace_back(line.substr(word_start, i - word_start));
    }
    if (!parsed.words.empty()) lines.push_back(std::move(parsed));
  }
  return lines;
}

bool IsIdentityName(std::string_view name) {
  return !name.empty() && name.size() <= kMaxIdentityNameLength &&
         std::all_of(name.begin(), name.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

}  // namespace tern
