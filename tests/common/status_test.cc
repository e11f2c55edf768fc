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
