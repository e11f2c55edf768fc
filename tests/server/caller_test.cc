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
  EXPECT_TRUE(MayAccess(alice, job, ""));
  EXPECT_TRUE(MayAccess(ops, job, "ops-*"));
  EXPECT_FALSE(MayAccess(ops, job, ""));
  EXPECT_FALSE(MayAccess(bob, job, "ops-*"));
  // Without TLS the owner is a claim, and the network is trusted.
  const Caller claims_bob{"bob", false};
  EXPECT_TRUE(MayAccess(claims_bob, job, ""));
}

TEST(AuthorizeTest, ListingIsScopedToTheCallerUnlessAdmin) {
  const Caller bob{"bob", true}, ops{"ops-1", true}, claims_bob{"bob", false};
  EXPECT_EQ(*ListableOwner(bob, "", "ops-*"), "bob");
  EXPECT_EQ(*ListableOwner(bob, "bob", "ops-*"), "bob");
  EXPECT_EQ(ListableOwner(bob, "alice", "ops-*").status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(ListableOwner(bob, "alice", "ops-*").status().reason(), "LIST_OTHER_OWNER");
  EXPECT_EQ(*ListableOwner(ops, "", "ops-*"), "");
  EXPECT_EQ(*ListableOwner(ops, "alice", "ops-*"), "alice");
  EXPECT_EQ(*ListableOwner(claims_bob, "", ""), "");
  EXPECT_EQ(*ListableOwner(claims_bob, "alice", ""), "alice");
}

TEST(AuthorizeTest, AnAdminTokenSeesEveryJobWithoutTheGlob) {
  scheduler::Job job;
  job.id = 9;
  job.owner = "alice";
  const Caller token_admin{"ops-2", true, /*admin=*/true, "bearer token"};
  const Caller token_user{"bob", true, false, "bearer token"};
  EXPECT_TRUE(MayAccess(token_admin, job, ""));
  EXPECT_FALSE(MayAccess(token_user, job, ""));
  EXPECT_TRUE(SeesEveryJob(token_admin, ""));
  EXPECT_FALSE(SeesEveryJob(token_user, ""));
  EXPECT_TRUE(SeesEveryJob(token_user, "b*"));
  EXPECT_TRUE(SeesEveryJob(Caller{"anyone", false}, ""));  // nothing is scoped without auth
  EXPECT_EQ(*ListableOwner(token_admin, "", ""), "");
}

}  // namespace
}  // namespace tern::server
