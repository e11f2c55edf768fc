// The agent-lease file's format: what tern-agent writes, tern-trainer reads.
#include "trainer_protocol/lease_file.h"

#include <gtest/gtest.h>

#include <chrono>

namespace tern::trainer {
namespace {

TEST(LeaseFileTest, DeadlineRoundTrips) {
  const auto deadline = std::chrono::steady_clock::time_point(std::chrono::seconds(1234567));
  const std::string text = FormatLeaseDeadline(deadline);
  EXPECT_EQ(text, "1234567000000000\n");
  EXPECT_EQ(ParseLeaseDeadline(text), deadline);
  EXPECT_EQ(ParseLeaseDeadline("1234567000000000"), deadline);  // no newline
}

TEST(LeaseFileTest, AnythingButOneNonNegativeIntegerIsNoDeadline) {
  for (const char* text : {"", "\n", "-5", "12x", "1.5", " 12", "12\n\n", "99999999999999999999"}) {
    EXPECT_FALSE(ParseLeaseDeadline(text).has_value()) << text;
  }
}

}  // namespace
}  // namespace tern::trainer
