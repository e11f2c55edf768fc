// Scheduler <-> tern.v1 conversions that need no server.
#include "server/job_convert.h"

#include <gtest/gtest.h>

namespace tern::server {
namespace {

TEST(JobConvertTest, JobIdsRoundTripAndRejectOthers) {
  EXPECT_EQ(FormatJobId(42), "42");
  EXPECT_EQ(*ParseJobId("42"), 42);
  EXPECT_EQ(ParseJobId("").status().code(), StatusCode::kInvalidArgument);
  for (const char* bad :
       {"0", "-1", "042", "+4", "4x", "99999999999999999999"}) {
    EXPECT_EQ(ParseJobId(bad).status().code(), StatusCode::kNotFound) << bad;
  }
}

TEST(JobConvertTest, AttemptsCountRequeues) {
  using scheduler::JobState;
  scheduler::Job job;
  auto add = [&](int64_t seq, JobState from, JobState to) {
    scheduler::JobEvent e;
    e.seq = seq;
    e.from = from;
    e.to = to;
    job.history.push_back(e);
  };
  add(1, JobState::kUnspecified, JobState::kQueued);
  add(2, JobState::kQueued, JobState::kAdmitted);
  add(4, JobState::kAdmitted, JobState::kRestarting);
  add(5, JobState::kRestarting, JobState::kQueued);
  add(6, JobState::kQueued, JobState::kAdmitted);
  EXPECT_EQ(AttemptAt(job, 1), 1);
  EXPECT_EQ(AttemptAt(job, 3), 1);  // a progress event of attempt 1
  EXPECT_EQ(AttemptAt(job, 4), 1);  // attempt 1 was lost
  EXPECT_EQ(AttemptAt(job, 5), 2);
  EXPECT_EQ(AttemptAt(job, 7), 2);
}

TEST(JobConvertTest, SpecSerializationIsDeterministic) {
  v1::JobSpec a;
  v1::JobSpec b;
  for (const char* key : {"zeta", "alpha", "mid", "beta"}) {
    (*a.mutable_labels())[key] = "v";
  }
  for (const char* key : {"beta", "mid", "alpha", "zeta"}) {
    (*b.mutable_labels())[key] = "v";
  }
  EXPECT_EQ(SerializeSpec(a), SerializeSpec(b));
}

}  // namespace
}  // namespace tern::server
