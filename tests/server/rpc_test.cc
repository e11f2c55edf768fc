// server/rpc.h: tern::Status with ErrorDetails into google.rpc.Status.
#include "server/rpc.h"

#include <google/protobuf/any.pb.h>
#include <gtest/gtest.h>

#include <string>

#include "google/rpc/error_details.pb.h"

namespace tern::server {
namespace {

TEST(ToRpcStatusTest, EveryErrorCarriesAnErrorInfoAndTheCodesName) {
  const google::rpc::Status plain = ToRpcStatus(InternalError("disk on fire"));
  EXPECT_EQ(plain.code(), static_cast<int>(StatusCode::kInternal));
  EXPECT_EQ(plain.message(), "disk on fire");
  ASSERT_EQ(plain.details_size(), 1);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(plain.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "INTERNAL");
  EXPECT_EQ(info.domain(), "tern.v1");
  EXPECT_EQ(ToRpcStatus(OkStatus()).details_size(), 0);
}

TEST(ToRpcStatusTest, DetailsBecomeTheirGoogleRpcMessages) {
  const Status status = ShuttingDownError()
                            .WithMetadata("job_id", "7")
                            .WithQuotaViolation("owner:alice", "at most 1")
                            .WithFieldViolation("spec.priority", "at most 5");
  const google::rpc::Status out = ToRpcStatus(status);
  ASSERT_EQ(out.details_size(), 4);
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(out.details(0).UnpackTo(&retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 1);
  google::rpc::QuotaFailure quota;
  ASSERT_TRUE(out.details(1).UnpackTo(&quota));
  EXPECT_EQ(quota.violations(0).subject(), "owner:alice");
  google::rpc::BadRequest bad;
  ASSERT_TRUE(out.details(2).UnpackTo(&bad));
  EXPECT_EQ(bad.field_violations(0).field(), "spec.priority");
  EXPECT_EQ(bad.field_violations(0).description(), "at most 5");
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(out.details(3).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "SHUTTING_DOWN");
  EXPECT_EQ(info.metadata().at("job_id"), "7");
  // WithContext keeps the details.
  EXPECT_EQ(status.WithContext("GetJob").reason(), "SHUTTING_DOWN");
}

TEST(ToRpcStatusTest, TooManyFieldViolationsAreCountedNotSent) {
  ErrorDetails details;
  for (int i = 0; i < 500; ++i) {
    details.field_violations.push_back(
        {"spec.labels[\"" + std::string(300, 'k') + std::to_string(i) + "\"]", "bad"});
  }
  const google::rpc::Status out =
      ToRpcStatus(InvalidArgumentError(std::string(100000, 'm')).WithDetails(details));
  EXPECT_LE(out.message().size(), kMaxStatusMessageBytes);
  size_t detail_bytes = 0;
  for (const auto& any : out.details()) detail_bytes += any.ByteSizeLong();
  EXPECT_LE(detail_bytes, kMaxStatusDetailsBytes);
  google::rpc::BadRequest bad;
  ASSERT_TRUE(out.details(0).UnpackTo(&bad));
  ASSERT_GT(bad.field_violations_size(), 0);
  EXPECT_LE(bad.field_violations(0).field().size(), 256u);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(out.details(1).UnpackTo(&info));
  EXPECT_EQ(bad.field_violations_size() + std::stoi(info.metadata().at("field_violations_omitted")),
            500);
}

}  // namespace
}  // namespace tern::server
