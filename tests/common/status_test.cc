#include "common/status.h"

#include <gtest/gtest.h>

namespace tern {
namespace {

StatusOr<int> ParsePositive(int x) {
  if (x <= 0) return InvalidArgumentError("x: must be > 0");
  return x;
}

Status UsesMacros(int x, int* out) {
  TERN_ASSIGN_OR_RETURN(int v, ParsePositive(x));
  *out = v * 2;
  return OkStatus();
}

TEST(StatusTest, ToStringNamesCodeAndMessage) {
  EXPECT_EQ(OkStatus().ToString(), "OK");
  EXPECT_EQ(InvalidArgumentError("epochs: must be > 0").ToString(),
            "INVALID_ARGUMENT: epochs: must be > 0");
  EXPECT_EQ(NotFoundError("x").WithContext("loading a.tern").message(),
            "loading a.tern: x");
}

TEST(StatusTest, DetailsAreCopiedOnWriteAndKeptByContext) {
  EXPECT_EQ(OkStatus().details(), nullptr);
  EXPECT_EQ(OkStatus().WithReason("X").details(), nullptr);  // OK carries no details
  const Status plain = NotFoundError("job 4 not found");
  EXPECT_EQ(plain.details(), nullptr);
  EXPECT_EQ(plain.reason(), "");
  const Status with = plain.WithReason("JOB_NOT_FOUND").WithMetadata("job_id", "4");
  EXPECT_EQ(plain.details(), nullptr);  // the original is unchanged
  const Status more = with.WithFieldViolation("job_id", "no such job")
                          .WithQuotaViolation("owner:a", "q")
                          .WithRetryDelay(std::chrono::milliseconds(1500));
  EXPECT_TRUE(with.details()->field_violations.empty());
  ASSERT_NE(more.details(), nullptr);
  EXPECT_EQ(more.reason(), "JOB_NOT_FOUND");
  EXPECT_EQ(more.details()->metadata.at("job_id"), "4");
  EXPECT_EQ(more.details()->field_violations.at(0).field, "job_id");
  EXPECT_EQ(more.details()->quota_violations.at(0).subject, "owner:a");
  EXPECT_EQ(more.details()->retry_delay, std::chrono::milliseconds(1500));
  const Status context = more.WithContext("GetJob");
  EXPECT_EQ(context.message(), "GetJob: job 4 not found");
  EXPECT_EQ(context.details(), more.details());
}

TEST(StatusTest, AssignOrReturnPropagates) {
  int out = 0;
  EXPECT_TRUE(UsesMacros(3, &out).ok());
  EXPECT_EQ(out, 6);
  const Status s = UsesMacros(-1, &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(out, 6);
}

TEST(StatusDeathTest, ValueOfErrorAborts) {
  StatusOr<int> bad = NotFoundError("nope");
  EXPECT_DEATH((void)bad.value(), "TERN_CHECK failed");
}

}  // namespace
}  // namespace tern
