#include "common/utf8.h"

#include <gtest/gtest.h>

#include <string>

namespace tern {
namespace {

TEST(Utf8Test, AcceptsValidTextAndRejectsEachKindOfBadSequence) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ASCII\n"));
  EXPECT_TRUE(IsValidUtf8("\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));  // été € 😀
  EXPECT_TRUE(IsValidUtf8(std::string("nul \0 inside", 12)));
  EXPECT_TRUE(IsValidUtf8("\xf4\x8f\xbf\xbf"));  // U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xff"));
  EXPECT_FALSE(IsValidUtf8("\x80"));                  // a lone continuation byte
  EXPECT_FALSE(IsValidUtf8("\xc3"));                  // cut after the lead byte
  EXPECT_FALSE(IsValidUtf8("\xe2\x82"));              // cut in the middle
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf"));              // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xe0\x80\xaf"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));          // surrogate U+D800
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));      // above U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xf5\x80\x80\x80"));
  EXPECT_FALSE(IsValidUtf8("ok\xc3("));               // bad continuation
}

TEST(Utf8Test, ReplacesEachBadByteAndKeepsValidText) {
  EXPECT_EQ(ToValidUtf8("caf\xc3\xa9"), "caf\xc3\xa9");
  EXPECT_EQ(ToValidUtf8("a\xffz"), "a\xef\xbf\xbdz");
  EXPECT_EQ(ToValidUtf8("\xe2\x82"), "\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(ToValidUtf8("\xed\xa0\x80!"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd!");
  EXPECT_TRUE(IsValidUtf8(ToValidUtf8("\xc0\xaf\xf4\x90\x80\x80\x80\xc3")));
}

TEST(Utf8Test, CutsAtACharacterBoundary) {
  EXPECT_EQ(ToValidUtf8("abc\xc3\xa9", 4), "abc");  // é does not fit whole
  EXPECT_EQ(ToValidUtf8("abc\xc3\xa9", 5), "abc\xc3\xa9");
  EXPECT_EQ(ToValidUtf8("ab\xff", 4), "ab");        // neither does U+FFFD
  EXPECT_EQ(ToValidUtf8("abcdef", 3), "abc");
  EXPECT_EQ(ToValidUtf8("abc", 0), "");
}

TEST(QuotedTest, ShortValuesWholeLongOnesCutWithTheirLength) {
  EXPECT_EQ(Quoted("resnet20"), "\"resnet20\"");
  EXPECT_EQ(Quoted(""), "\"\"");
  EXPECT_EQ(Quoted(std::string(64, 'a')), "\"" + std::string(64, 'a') + "\"");
  EXPECT_EQ(Quoted(std::string(65, 'a')),
            "\"" + std::string(64, 'a') + "\xe2\x80\xa6\" (65 bytes)");
  EXPECT_EQ(Quoted("abcdef", 3), "\"abc\xe2\x80\xa6\" (6 bytes)");
  // Escapes: quotes, backslashes, control characters; invalid UTF-8 replaced.
  EXPECT_EQ(Quoted("a\"b\\c\n\x7f"), "\"a\\\"b\\\\c\\x0a\\x7f\"");
  EXPECT_EQ(Quoted("\xff"), "\"\xef\xbf\xbd\"");
  EXPECT_TRUE(IsValidUtf8(Quoted("\xc0\xaf/etc\xe2\x82")));
  // A multi-byte character is never split.
  EXPECT_EQ(Quoted("\xc3\xa9\xc3\xa9", 3), "\"\xc3\xa9\xe2\x80\xa6\" (4 bytes)");
}

TEST(CapMessageTest, CutsLongMessagesSayingSo) {
  EXPECT_EQ(CapMessage("short", 100), "short");
  const std::string cut = CapMessage(std::string(10000, 'm'), 200);
  EXPECT_LE(cut.size(), 200u);
  EXPECT_NE(cut.find("(message cut: 10000 bytes in all)"), std::string::npos) << cut;
  EXPECT_EQ(cut.rfind(std::string(100, 'm'), 0), 0u);
  EXPECT_EQ(CapMessage("ab\xff", 100), "ab\xef\xbf\xbd");  // repaired, not cut
  EXPECT_TRUE(IsValidUtf8(CapMessage(std::string(300, '\xff'), 100)));
}

}  // namespace
}  // namespace tern
