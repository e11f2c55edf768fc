// TerndOptions and flag parsing (the daemon itself runs in the service and
// main tests).
#include "server/ternd.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

namespace tern::server {
namespace {

TEST(TerndOptionsTest, ParsesDurations) {
  EXPECT_EQ(*ParseDuration("250ms"), std::chrono::milliseconds(250));
  EXPECT_EQ(*ParseDuration("15s"), std::chrono::seconds(15));
  EXPECT_EQ(*ParseDuration("5m"), std::chrono::minutes(5));
  EXPECT_EQ(*ParseDuration("1h"), std::chrono::hours(1));
  EXPECT_EQ(*ParseDuration("0"), std::chrono::milliseconds(0));
  for (const char* bad : {"", "15", "s", "-1s", "1.5s", "3d", "10 s"}) {
    EXPECT_FALSE(ParseDuration(bad).ok()) << bad;
  }
  TerndOptions options;
  EXPECT_TRUE(options.Validate().ok());
  options.scheduler.agent_lease_ttl = std::chrono::milliseconds(0);
  EXPECT_EQ(options.Validate().code(), StatusCode::kInvalidArgument);
}

TEST(TerndOptionsTest, FormatsDurationsAsParsed) {
  EXPECT_EQ(FormatDuration(std::chrono::seconds(15)), "15s");
  EXPECT_EQ(FormatDuration(std::chrono::minutes(5)), "5m");
  EXPECT_EQ(FormatDuration(std::chrono::hours(2)), "2h");
  EXPECT_EQ(FormatDuration(std::chrono::milliseconds(1500)), "1500ms");
  EXPECT_EQ(FormatDuration(std::chrono::milliseconds(0)), "0");
  for (std::chrono::milliseconds d :
       {std::chrono::milliseconds(250), std::chrono::milliseconds(90000)}) {
    EXPECT_EQ(*ParseDuration(FormatDuration(d)), d);
  }
}

// The scheduler's options are embedded, with its defaults and its checks.
TEST(TerndOptionsTest, EmbedsTheSchedulersOptions) {
  TerndOptions options;
  const scheduler::SchedulerOptions defaults;
  EXPECT_EQ(options.scheduler.agent_lease_ttl, defaults.agent_lease_ttl);
  EXPECT_EQ(options.scheduler.rendezvous_port_min, defaults.rendezvous_port_min);
  options.scheduler.rendezvous_port_min = options.scheduler.rendezvous_port_max + 1;
  EXPECT_EQ(options.Validate().code(), StatusCode::kInvalidArgument);
}

TEST(TerndStartTest, ReportsABadDatabaseAndABusyPort) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      ("tern-ternd-start-test-" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  TerndOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.artifact_root = (dir / "artifacts").string();
  options.checkpoint_root = (dir / "checkpoints").string();
  options.db_path = (dir / "garbage.db").string();
  {
    std::ofstream out(options.db_path);
    out << std::string(4096, 'x');
  }
  auto bad_db = Ternd::Start(options);
  EXPECT_EQ(bad_db.status().code(), StatusCode::kDataLoss) << bad_db.status();

  options.db_path = (dir / "first.db").string();
  auto first = Ternd::Start(options);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ((*first)->address(),
            "127.0.0.1:" + std::to_string((*first)->port()));
  EXPECT_EQ((*first)->metrics_port(), 0);  // disabled
  options.listen = (*first)->address();
  options.db_path = (dir / "second.db").string();
  auto second = Ternd::Start(options);
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable)
      << second.status();
  (*first)->Shutdown();
  (*first)->Shutdown();  // idempotent

  // A PostgreSQL URL is no file name to put the rendezvous key beside.
  options.listen = "127.0.0.1:0";
  options.db_path = "postgresql://tern:pw@127.0.0.1:1/tern";
  auto no_key_file = Ternd::Start(options);
  EXPECT_EQ(no_key_file.status().code(), StatusCode::kInvalidArgument) << no_key_file.status();
  EXPECT_NE(no_key_file.status().message().find("rendezvous_key_file"), std::string::npos)
      << no_key_file.status();
  options.rendezvous_key_file = (dir / "rendezvous.key").string();
  auto unreachable = Ternd::Start(options);
  EXPECT_EQ(unreachable.status().code(), StatusCode::kUnavailable) << unreachable.status();
  EXPECT_EQ(unreachable.status().message().find(":pw@"), std::string::npos) << unreachable.status();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tern::server
