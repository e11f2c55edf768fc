#include "server/caller.h"

#include <gtest/gtest.h>

namespace tern::server {
namespace {

// CallerFromContext needs a live call (tests/e2e/tls_e2e.sh covers it over
// mutual TLS, tests/server/job_service_test.cc without TLS); the policy is
// plain.
TEST(AuthorizeTest, AnAuthenticatedCallerReadsAndCancelsOnlyItsOwnJobsUnlessAdmin) {
  scheduler::Job job;
  job.id = 7;
  job.owner = "alice";
  const Caller alice{"alice", true}, bob{"bob", true}, ops{"ops-1", true};
  for (const Action action : {Action::kRead, Action::kCancel}) {
    EXPECT_TRUE(Authorize(alice, job, action, "").ok());
    EXPECT_TRUE(Authorize(ops, job, action, "ops-*").ok());
    EXPECT_EQ(Authorize(ops, job, action, "").code(), StatusCode::kPermissionDenied);
  }
  const Status denied = Authorize(bob, job, Action::kCancel, "ops-*");
  EXPECT_EQ(denied.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.message(),
            "job 7 belongs to \"alice\": only its owner (or an admin, ternd --tls-admin-names) "
            "can cancel it");
  EXPECT_NE(Authorize(bob, job, Action::kRead, "ops-*").message().find("can read it"),
            std::string::npos);
  // Without TLS the owner is a claim, and the network is trusted.
  const Caller claims_bob{"bob", false};
  EXPECT_TRUE(Authorize(claims_bob, job, Action::kCancel, "").ok());
}

TEST(AuthorizeTest, ListingIsScopedToTheCallerUnlessAdmin) {
  const Caller bob{"bob", true}, ops{"ops-1", true}, claims_bob{"bob", false};
  EXPECT_EQ(*ListableOwner(bob, "", "ops-*"), "bob");
  EXPECT_EQ(*ListableOwner(bob, "bob", "ops-*"), "bob");
  EXPECT_EQ(ListableOwner(bob, "alice", "ops-*").status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(*ListableOwner(ops, "", "ops-*"), "");
  EXPECT_EQ(*ListableOwner(ops, "alice", "ops-*"), "alice");
  EXPECT_EQ(*ListableOwner(claims_bob, "", ""), "");
  EXPECT_EQ(*ListableOwner(claims_bob, "alice", ""), "alice");
}

}  // namespace
}  // namespace tern::server
