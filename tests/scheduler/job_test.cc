#include "scheduler/job.h"

#include <gtest/gtest.h>

#include <set>
#include <utility>
#include <vector>

#include "tests/scheduler/test_util.h"

namespace tern::scheduler {
namespace {

const JobState kStates[] = {
    JobState::kUnspecified, JobState::kQueued,     JobState::kAdmitted,
    JobState::kRunning,     JobState::kRestarting, JobState::kSucceeded,
    JobState::kFailed,      JobState::kCancelled,  JobState::kCancelling,
};

const std::set<std::pair<JobState, JobState>> kLegal = {
    {JobState::kQueued, JobState::kAdmitted},      {JobState::kQueued, JobState::kCancelled},
    {JobState::kAdmitted, JobState::kRunning},     {JobState::kAdmitted, JobState::kRestarting},
    {JobState::kAdmitted, JobState::kCancelled},   {JobState::kRunning, JobState::kSucceeded},
    {JobState::kRunning, JobState::kRestarting},   {JobState::kRunning, JobState::kCancelled},
    {JobState::kRestarting, JobState::kQueued},    {JobState::kRestarting, JobState::kFailed},
    {JobState::kRestarting, JobState::kCancelled}, {JobState::kAdmitted, JobState::kCancelling},
    {JobState::kRunning, JobState::kCancelling},   {JobState::kCancelling, JobState::kCancelled},
};

TEST(JobStateTest, LegalTransitionsAreAccepted) {
  for (const auto& [from, to] : kLegal) {
    EXPECT_TRUE(CheckTransition(from, to).ok())
        << JobStateName(from) << " -> " << JobStateName(to);
  }
}

TEST(JobStateTest, EveryOtherTransitionIsFailedPrecondition) {
  int illegal = 0;
  for (JobState from : kStates) {
    for (JobState to : kStates) {
      if (kLegal.count({from, to}) != 0) continue;
      Status status = CheckTransition(from, to);
      EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition)
          << JobStateName(from) << " -> " << JobStateName(to);
      ++illegal;
    }
  }
  EXPECT_EQ(illegal, 81 - 14);
}

TEST(JobStateTest, TerminalStatesHaveNoWayOut) {
  for (JobState from :
       {JobState::kSucceeded, JobState::kFailed, JobState::kCancelled}) {
    EXPECT_TRUE(IsTerminal(from));
    EXPECT_FALSE(HoldsSlots(from));
    for (JobState to : kStates) EXPECT_FALSE(CheckTransition(from, to).ok());
  }
}

TEST(JobStateTest, NamesRoundTrip) {
  for (JobState state : kStates) {
    StatusOr<JobState> parsed = ParseJobState(JobStateName(state));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, state);
  }
  EXPECT_EQ(ParseJobState("queued").status().code(),
            StatusCode::kInvalidArgument);
  for (RankState state : {RankState::kAssigned, RankState::kRunning,
                          RankState::kSucceeded, RankState::kFailed}) {
    EXPECT_EQ(*ParseRankState(RankStateName(state)), state);
  }
  for (JobEventType type :
       {JobEventType::kStateChanged, JobEventType::kProgress,
        JobEventType::kCheckpoint}) {
    EXPECT_EQ(*ParseJobEventType(JobEventTypeName(type)), type);
  }
}

TEST(JobStateTest, TransitionAppendsNumberedEvents) {
  Job job;
  job.id = 7;
  job.state = JobState::kQueued;
  job.last_event_seq = 1;
  std::vector<JobEvent> events;
  const TimePoint now = FakeClock().Now();
  ASSERT_TRUE(TransitionJob(&job, JobState::kAdmitted, reason::kAdmitted,
                            "placed", now, &events)
                  .ok());
  ASSERT_TRUE(TransitionJob(&job, JobState::kRunning, reason::kAllRanksStarted,
                            "", now, &events)
                  .ok());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].seq, 2);
  EXPECT_EQ(events[1].seq, 3);
  EXPECT_EQ(events[0].from, JobState::kQueued);
  EXPECT_EQ(events[0].to, JobState::kAdmitted);
  EXPECT_EQ(events[0].reason, "ADMITTED");
  EXPECT_EQ(job.state, JobState::kRunning);
  EXPECT_EQ(job.last_event_seq, 3);
  EXPECT_EQ(job.history.size(), 2u);
}

TEST(JobStateTest, IllegalTransitionChangesNothing) {
  Job job;
  job.id = 7;
  job.state = JobState::kSucceeded;
  job.last_event_seq = 4;
  std::vector<JobEvent> events;
  Status status = TransitionJob(&job, JobState::kQueued, reason::kRequeued, "",
                                FakeClock().Now(), &events);
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("SUCCEEDED -> QUEUED"), std::string::npos)
      << status;
  EXPECT_EQ(job.state, JobState::kSucceeded);
  EXPECT_EQ(job.last_event_seq, 4);
  EXPECT_TRUE(events.empty());
  EXPECT_TRUE(job.history.empty());
}

}  // namespace
}  // namespace tern::scheduler
