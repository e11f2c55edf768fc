#include "scheduler/quota.h"

#include <gtest/gtest.h>

#include <string>

namespace tern::scheduler {
namespace {

TEST(QuotaTableTest, ParsesOwnersTheDefaultLineCommentsAndBlankLines) {
  StatusOr<QuotaTable> table = QuotaTable::Parse(
      "# team quotas\r\n"
      "\n"
      "alice  cuda=8 cpu=32\tjobs=20 priority=10  # the research team\n"
      "*      cuda=2 jobs=5\n"
      "bob\n",
      "quotas.txt");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->size(), 3u);

  const OwnerQuota* alice = table->For("alice");
  ASSERT_NE(alice, nullptr);
  EXPECT_EQ(alice->line_owner, "alice");
  EXPECT_EQ(alice->SlotLimit("cuda"), 8);
  EXPECT_EQ(alice->SlotLimit("cpu"), 32);
  EXPECT_EQ(alice->max_jobs, 20);
  EXPECT_EQ(alice->max_priority, 10);

  const OwnerQuota* carol = table->For("carol");  // no line: the "*" line
  ASSERT_NE(carol, nullptr);
  EXPECT_EQ(carol->line_owner, "*");
  EXPECT_EQ(carol->SlotLimit("cuda"), 2);
  EXPECT_EQ(carol->SlotLimit("cpu"), std::nullopt);

  const OwnerQuota* bob = table->For("bob");  // a line without limits: unlimited
  ASSERT_NE(bob, nullptr);
  EXPECT_EQ(bob->SlotLimit("cuda"), std::nullopt);
  EXPECT_EQ(bob->max_jobs, std::nullopt);
  EXPECT_EQ(bob->max_priority, std::nullopt);
  StatusOr<QuotaTable> negative = QuotaTable::Parse("guest priority=-1000\n", "q");
  ASSERT_TRUE(negative.ok()) << negative.status();
  EXPECT_EQ(negative->For("guest")->max_priority, -1000);
}

TEST(QuotaTableTest, WithoutADefaultLineUnlistedOwnersAreUnlimited) {
  StatusOr<QuotaTable> table = QuotaTable::Parse("alice cuda=0\n", "q");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->For("bob"), nullptr);
  EXPECT_EQ(table->For("alice")->SlotLimit("cuda"), 0);
  EXPECT_EQ(QuotaTable().For("alice"), nullptr);
}

TEST(QuotaTableTest, BadLinesAreRefusedNamingFileAndLine) {
  struct Case {
    const char* text;
    const char* message;
  };
  const Case cases[] = {
      {"alice gpu=4\n", "q:1: \"gpu=4\": expected cpu=N, cuda=N, jobs=N or priority=P"},
      {"alice cuda\n", "q:1: \"cuda\": expected cpu=N, cuda=N, jobs=N or priority=P"},
      {"alice priority=1001\n",
       "q:1: \"priority=1001\": the priority must be a whole number in [-1000, 1000]"},
      {"alice priority=--1\n",
       "q:1: \"priority=--1\": the priority must be a whole number in [-1000, 1000]"},
      {"alice priority=-\n",
       "q:1: \"priority=-\": the priority must be a whole number in [-1000, 1000]"},
      {"alice priority=1 priority=2\n", "q:1: priority is given twice"},
      {"\nalice cuda=-1\n", "q:2: \"cuda=-1\": the limit must be a whole number in [0, 1000000]"},
      {"alice cuda=1000001\n",
       "q:1: \"cuda=1000001\": the limit must be a whole number in [0, 1000000]"},
      {"alice jobs=1e3\n", "q:1: \"jobs=1e3\": the limit must be a whole number in [0, 1000000]"},
      {"alice cuda=\n", "q:1: \"cuda=\": the limit must be a whole number in [0, 1000000]"},
      {"alice cuda=1 cuda=2\n", "q:1: cuda is given twice"},
      {"alice jobs=1 jobs=2\n", "q:1: jobs is given twice"},
      {"alice cuda=1\nalice cpu=2\n", "q:2: alice has a line already"},
      {"* jobs=1\n* jobs=2\n", "q:2: * has a line already"},
      {"cuda=8 jobs=2\n",
       "q:1: must start with an owner name or *, not \"cuda=8\" (limits follow the name: alice "
       "cuda=8 jobs=20)"},
      {"al\x01ice cuda=1\n",
       "q:1: must start with an owner name (1..128 printable characters without spaces) or *"},
  };
  for (const Case& c : cases) {
    StatusOr<QuotaTable> table = QuotaTable::Parse(c.text, "q");
    ASSERT_FALSE(table.ok()) << c.text;
    EXPECT_EQ(table.status().code(), StatusCode::kInvalidArgument) << c.text;
    EXPECT_EQ(table.status().message(), c.message) << c.text;
  }
}

}  // namespace
}  // namespace tern::scheduler
