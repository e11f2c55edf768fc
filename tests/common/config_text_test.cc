#include "common/config_text.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace tern {
namespace {

TEST(ConfigTextTest, SplitsWordsSkipsCommentsAndBlankLinesAndKeepsLineNumbers) {
  const std::vector<ConfigLine> lines = SplitConfigLines(
      "# header\r\n"
      "\r\n"
      "alice\tcuda=8  jobs=2 # trailing comment\r\n"
      "   \n"
      "  * cpu=1");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].number, 3u);
  EXPECT_EQ(lines[0].words, (std::vector<std::string>{"alice", "cuda=8", "jobs=2"}));
  EXPECT_EQ(lines[1].number, 5u);  // the last line needs no newline
  EXPECT_EQ(lines[1].words, (std::vector<std::string>{"*", "cpu=1"}));
  EXPECT_TRUE(SplitConfigLines("").empty());
  EXPECT_TRUE(SplitConfigLines("\n\n#x\n").empty());
}

TEST(ConfigTextTest, IdentityNamesArePrintableAsciiWithoutSpaces) {
  EXPECT_TRUE(IsIdentityName("alice"));
  EXPECT_TRUE(IsIdentityName("tern-agent-7@gpu.example"));
  EXPECT_TRUE(IsIdentityName(std::string(128, 'a')));
  EXPECT_FALSE(IsIdentityName(std::string(129, 'a')));
  EXPECT_FALSE(IsIdentityName(""));
  EXPECT_FALSE(IsIdentityName("alice smith"));
  EXPECT_FALSE(IsIdentityName("tab\there"));
  EXPECT_FALSE(IsIdentityName("caf\xc3\xa9"));  // non-ASCII
  EXPECT_FALSE(IsIdentityName(std::string("nul\0", 4)));
}

}  // namespace
}  // namespace tern
