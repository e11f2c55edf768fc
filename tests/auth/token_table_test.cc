#include "auth/token_table.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "auth/bearer_token.h"
#include "tests/common/scoped_temp_dir.h"

namespace tern::server {
namespace {

const std::string kAliceToken = "tern_alice-token-0123456789";
const std::string kOpsToken = "tern_ops-token-0123456789";

TEST(TokenTableTest, ParsesHashesNamesAndRoles) {
  const std::string text = "# tern tokens\n\n" + tls::TokenHash(kAliceToken) + " alice\n" +
                           tls::TokenHash(kOpsToken) + "\tops-1 admin agent  # both roles\r\n";
  StatusOr<std::map<std::string, TokenEntry>> entries = TokenTable::Parse(text, "tokens");
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 2u);
  const TokenEntry& alice = entries->at(tls::TokenHash(kAliceToken));
  EXPECT_EQ(alice.name, "alice");
  EXPECT_FALSE(alice.admin);
  EXPECT_FALSE(alice.agent);
  const TokenEntry& ops = entries->at(tls::TokenHash(kOpsToken));
  EXPECT_EQ(ops.name, "ops-1");
  EXPECT_TRUE(ops.admin);
  EXPECT_TRUE(ops.agent);
  EXPECT_EQ(alice.expires_unix_s, 0);

  const std::string expiring = tls::TokenHash(kAliceToken) + " alice expires=2027-01-31T00:00:00Z";
  StatusOr<std::map<std::string, TokenEntry>> with_expiry = TokenTable::Parse(expiring, "t");
  ASSERT_TRUE(with_expiry.ok()) << with_expiry.status();
  EXPECT_EQ(with_expiry->begin()->second.expires_unix_s, 1801353600);
}

TEST(TokenTableTest, BadLinesAreErrorsNamingTheLine) {
  const std::string hash = tls::TokenHash(kAliceToken);
  const std::pair<std::string, std::string> cases[] = {
      {kAliceToken + " alice\n", "tokens:1: must start with sha256:"},
      {"\n" + hash + "\n", "tokens:2: needs a name after the hash"},
      {hash + " alice root\n",
       "tokens:1: unknown word \"root\" (roles: admin, agent; expires=<time>)"},
      {hash + " alice expires=tomorrow\n", "tokens:1: \"expires=tomorrow\": expected expires="},
      {hash + " alice\n" + hash + " bob\n", "tokens:2: this hash is listed twice"},
      {"sha256:ABCD alice\n", "tokens:1: must start with sha256:"},
  };
  for (const auto& [text, message] : cases) {
    const Status status = TokenTable::Parse(text, "tokens").status();
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << text;
    EXPECT_EQ(status.message().rfind(message, 0), 0u) << status.message();
  }
}

TEST(TokenTableTest, FindsTokensAndFollowsTheFileKeepingTheLastGoodTable) {
  testing_util::ScopedTempDir dir("tern_token_table_test");
  const std::string path = dir.Path("tokens");
  auto write = [&](const std::string& text) {
    { std::ofstream(path + ".new") << text; }
    std::filesystem::rename(path + ".new", path);
  };
  write(tls::TokenHash(kAliceToken) + " alice\n");
  StatusOr<std::unique_ptr<TokenTable>> table = TokenTable::Load(path);
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_TRUE((*table)->Find(kAliceToken).has_value());
  EXPECT_EQ((*table)->Find(kAliceToken)->name, "alice");
  EXPECT_FALSE((*table)->Find(kOpsToken).has_value());

  // Revoke alice, add ops: seen within a second or so.
  write(tls::TokenHash(kOpsToken) + " ops-1 admin\n");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while ((*table)->Find(kAliceToken).has_value() &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_FALSE((*table)->Find(kAliceToken).has_value());
  ASSERT_TRUE((*table)->Find(kOpsToken).has_value());
  EXPECT_TRUE((*table)->Find(kOpsToken)->admin);

  // A broken file keeps the last good table.
  write("not a token line\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_TRUE((*table)->Find(kOpsToken).has_value());
  EXPECT_EQ((*table)->size(), 1u);

  EXPECT_EQ(TokenTable::Load(dir.Path("missing")).status().code(), StatusCode::kNotFound);

  // A file others may write is refused, at start-up and on a change.
  write(tls::TokenHash(kAliceToken) + " alice\n");
  std::filesystem::permissions(path, std::filesystem::perms::group_write,
                               std::filesystem::perm_options::add);
  const Status open = TokenTable::Load(path).status();
  EXPECT_EQ(open.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(open.message().find("is writable by its group or others"), std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_FALSE((*table)->Find(kAliceToken).has_value());  // the last good table stays
  EXPECT_TRUE((*table)->Find(kOpsToken).has_value());
}

}  // namespace
}  // namespace tern::server
