#include "server/caller.h"

#include <gtest/gtest.h>

namespace tern::server {
namespace {

// CallerFromContext needs a live call (tests/e2e/tls_e2e.sh covers it over
// mutual TLS, tests/server/job_service_test.cc without TLS); the policy is
// plain.
TEST(AuthorizeTest, AnAuthenticatedCallerCancelsOnlyItsOwnJobsAndReadsAll) {
  scheduler::Job job;
  job.id = 7;
  job.owner = "alice";
  const Caller alice{"alice", true}, bob{"bob", true}, claims_bob{"bob", false};
  EXPECT_TRUE(Authorize(alice, job, Action::kCancel).ok());
  const Status denied = Authorize(bob, job, Action::kCancel);
  EXPECT_EQ(denied.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.message(), "job 7 belongs to \"alice\": only its owner can cancel it");
  EXPECT_TRUE(Authorize(bob, job, Action::kRead).ok());
  // Without TLS the owner is a claim, and the network is trusted.
  EXPECT_TRUE(Authorize(claims_bob, job, Action::kCancel).ok());
}

}  // namespace
}  // namespace tern::server
