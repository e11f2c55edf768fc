// TrainerStopper: a stop before the start keeps the trainer from starting; a
// stop after it signals the process group, SIGKILL once the grace is over.
#include "worker/agent/trainer_stopper.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <thread>

namespace tern::agent {
namespace {

using std::chrono::milliseconds;

ChildProcess::Options Shell(const std::string& script) {
  ChildProcess::Options o;
  o.argv = {"/bin/sh", "-c", script};
  o.env = {"PATH=/usr/bin:/bin"};
  return o;
}

ExitStatus WaitFor(ChildProcess& child, TrainerStopper& stopper) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < give_up) {
    stopper.EscalateIfDue();
    if (std::optional<ExitStatus> ended = child.TryWait()) return *ended;
    std::this_thread::sleep_for(milliseconds(10));
  }
  ADD_FAILURE() << "the process did not end";
  return {};
}

TEST(TrainerStopperTest, AStopBeforeTheStartKeepsTheTrainerFromStarting) {
  TrainerStopper killed("[test] ");
  killed.Request(SIGTERM, milliseconds(100), "kill order");
  bool drained = true;
  auto child = killed.Start(Shell("exit 0"), /*shutting_down=*/false, &drained);
  EXPECT_EQ(child.status().code(), StatusCode::kCancelled);
  EXPECT_FALSE(drained);
  EXPECT_TRUE(killed.requested());
  EXPECT_EQ(killed.reason(), "kill order");

  TrainerStopper drain("[test] ");
  drain.Request(SIGUSR1, milliseconds(100), "agent shutting down");
  drained = false;
  EXPECT_EQ(drain.Start(Shell("exit 0"), false, &drained).status().code(), StatusCode::kCancelled);
  EXPECT_TRUE(drained);

  TrainerStopper shutting_down("[test] ");
  drained = false;
  EXPECT_EQ(shutting_down.Start(Shell("exit 0"), true, &drained).status().code(),
            StatusCode::kCancelled);
  EXPECT_TRUE(drained);
  EXPECT_FALSE(shutting_down.requested());
}

TEST(TrainerStopperTest, TheFirstSignalThenSigkillAfterTheGrace) {
  TrainerStopper stopper("[test] ");
  bool drained = false;
  // Ignores SIGTERM: only the SIGKILL after the grace ends it.
  auto child = stopper.Start(Shell("trap '' TERM; sleep 30"), false, &drained);
  ASSERT_TRUE(child.ok()) << child.status();
  std::this_thread::sleep_for(milliseconds(200));
  stopper.Request(SIGTERM, milliseconds(300), "kill order");
  stopper.Request(SIGTERM, milliseconds(60000), "again");  // keeps the earlier deadline
  EXPECT_EQ(stopper.reason(), "kill order");
  const ExitStatus ended = WaitFor(**child, stopper);
  EXPECT_EQ(ended.signal, SIGKILL) << ended.ToString();
  stopper.Detach();
}

}  // namespace
}  // namespace tern::agent
