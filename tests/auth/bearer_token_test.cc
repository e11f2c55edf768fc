#include "auth/bearer_token.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "tests/common/scoped_temp_dir.h"

namespace tern::tls {
namespace {

TEST(BearerTokenTest, NewTokensAreLongRandomAndWellFormed) {
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) {
    StatusOr<std::string> token = NewToken();
    ASSERT_TRUE(token.ok()) << token.status();
    EXPECT_EQ(token->rfind("tern_", 0), 0u);
    EXPECT_EQ(token->size(), 5u + 43u);  // 256 bits, base64url without padding
    EXPECT_TRUE(IsWellFormedToken(*token));
    EXPECT_EQ(token->find_first_not_of("tern_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                       "0123456789-_"),
              std::string::npos);
    seen.insert(*token);
  }
  EXPECT_EQ(seen.size(), 100u);
}

TEST(BearerTokenTest, HashIsSha256InHex) {
  // FIPS 180-2's example.
  EXPECT_EQ(TokenHash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_FALSE(IsWellFormedToken("short"));
  EXPECT_FALSE(IsWellFormedToken("has a space in the middle"));
  EXPECT_FALSE(IsWellFormedToken(std::string(513, 'x')));
}

TEST(BearerTokenTest, ReadTokenFileTrimsAndNamesTheFlag) {
  testing_util::ScopedTempDir dir("tern_bearer_token_test");
  { std::ofstream(dir.Path("ok")) << "  tern_0123456789abcdefghij \n"; }
  EXPECT_EQ(*ReadTokenFile("--token-file", dir.Path("ok")), "tern_0123456789abcdefghij");
  { std::ofstream(dir.Path("two")) << "tern_0123456789abcdefghij\ntern_0123456789abcdefghik\n"; }
  const Status two = ReadTokenFile("--token-file", dir.Path("two")).status();
  EXPECT_EQ(two.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(two.message().find("--token-file: "), std::string::npos) << two.message();
  EXPECT_EQ(ReadTokenFile("--token-file", dir.Path("missing")).status().code(),
            StatusCode::kNotFound);
}

TEST(BearerTokenTest, TokenFileFollowsTheFile) {
  testing_util::ScopedTempDir dir("tern_token_matcher_test");
  const std::string path = dir.Path("metrics.token");
  auto write = [&](const std::string& text) {
    { std::ofstream(path + ".new") << text; }
    std::filesystem::rename(path + ".new", path);
  };
  write("tern_scrape-token-0123456789\n");
  StatusOr<std::shared_ptr<TokenFile>> matcher = TokenFile::Open("--f", path);
  ASSERT_TRUE(matcher.ok()) << matcher.status();
  EXPECT_TRUE((*matcher)->Matches("tern_scrape-token-0123456789"));
  EXPECT_FALSE((*matcher)->Matches("tern_scrape-token-012345678"));
  EXPECT_FALSE((*matcher)->Matches(""));
  write("tern_rotated-token-0123456789\n");
  EXPECT_FALSE((*matcher)->Matches("tern_scrape-token-0123456789"));
  EXPECT_TRUE((*matcher)->Matches("tern_rotated-token-0123456789"));
  write("\n");  // broken: the last good token stays
  EXPECT_TRUE((*matcher)->Matches("tern_rotated-token-0123456789"));
  EXPECT_EQ(TokenFile::Open("--f", dir.Path("missing")).status().code(),
            StatusCode::kNotFound);
}

}  // namespace
}  // namespace tern::tls
