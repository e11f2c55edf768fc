// PostgresJobStore's own behaviour, on a real server (the ctest fixture
// "postgres"): Open's errors, the schema bootstrap, and reconnecting after
// the connection is lost. The JobStore contract is job_store_test.cc.
#include "scheduler/postgres_job_store.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "scheduler/open_job_store.h"
#include "scheduler/sqlite_job_store.h"
#include "tests/scheduler/postgres_test_util.h"
#include "tests/scheduler/test_util.h"

namespace tern::scheduler {
namespace {

using ::tern::scheduler::testing::PostgresTestDatabase;

Job SampleJob(JobId id) {
  Job job;
  job.id = id;
  job.owner = "alice";
  job.world_size = 1;
  job.device_kind = kDeviceCpu;
  job.spec = "spec";
  return job;
}

Status OpenError(const std::string& url) {
  StatusOr<std::unique_ptr<PostgresJobStore>> store = PostgresJobStore::Open(url, {});
  return store.ok() ? OkStatus() : store.status();
}

TEST(PostgresJobStoreTest, RecognizesPostgresUrls) {
  EXPECT_TRUE(IsPostgresUrl("postgresql://db/tern"));
  EXPECT_TRUE(IsPostgresUrl("postgres:///tern?host=/tmp"));
  EXPECT_FALSE(IsPostgresUrl("./ternd.db"));
  EXPECT_FALSE(IsPostgresUrl("/var/lib/postgresql://x"));
  EXPECT_FALSE(IsPostgresUrl("mysql://db/tern"));
}

TEST(PostgresJobStoreTest, MalformedUrlIsInvalidArgument) {
  Status status = OpenError("postgresql:///tern?no_such_option=1");
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("no_such_option"), std::string::npos) << status;
  status = OpenError("postgresql://[::1/tern");
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status;
  status = OpenError("mysql://db/tern");
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status;
}

TEST(PostgresJobStoreTest, NothingListeningIsUnavailableNamingTheHostNotThePassword) {
  Status status = OpenError("postgresql:///tern?host=/nonexistent/tern-socket-dir&user=tern");
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status;
  EXPECT_NE(status.message().find("/nonexistent/tern-socket-dir"), std::string::npos) << status;

  status = OpenError("postgresql://tern:s3cret-pw@127.0.0.1:1/tern");
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status;
  EXPECT_NE(status.message().find("127.0.0.1"), std::string::npos) << status;
  EXPECT_EQ(status.message().find("s3cret-pw"), std::string::npos) << status;
  EXPECT_NE(status.message().find("tern:***@"), std::string::npos) << status;
  status = OpenError("postgresql://127.0.0.1:1/tern?password=s3cret-pw&user=tern");
  EXPECT_EQ(status.message().find("s3cret-pw"), std::string::npos) << status;
}

// A server that accepts the TCP connection and then never answers: Open
// gives up after the default connect_timeout (10 s) instead of hanging.
TEST(PostgresJobStoreTest, SilentServerTimesOut) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string url =
      "postgresql://tern@127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/tern";
  const auto start = std::chrono::steady_clock::now();
  Status status = OpenError(url);
  const auto took = std::chrono::steady_clock::now() - start;
  ::close(fd);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status;
  EXPECT_NE(status.message().find("127.0.0.1"), std::string::npos) << status;
  EXPECT_LT(took, std::chrono::seconds(30));
}

TEST(PostgresJobStoreTest, NewerSchemaVersionIsRejected) {
  PostgresTestDatabase db;
  ASSERT_TRUE(db.ok());
  ASSERT_TRUE(PostgresJobStore::Open(db.url(), {}).ok());
  EXPECT_EQ(db.Query("SELECT version FROM tern_schema"), "2");
  db.Query("UPDATE tern_schema SET version = 99");
  Status status = OpenError(db.url());
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition) << status;
  EXPECT_NE(status.message().find("99"), std::string::npos) << status;
  EXPECT_NE(status.message().find(db.url()), std::string::npos) << status;
}

TEST(PostgresJobStoreTest, ForeignTablesAreRejected) {
  PostgresTestDatabase db;
  ASSERT_TRUE(db.ok());
  db.Query("CREATE TABLE jobs (id INTEGER PRIMARY KEY, path TEXT)");
  Status status = OpenError(db.url());
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition) << status;
  EXPECT_NE(status.message().find("not a tern job store"), std::string::npos) << status;
  EXPECT_EQ(db.Query("SELECT to_regclass('tern_schema') IS NULL"), "t") << "nothing created";
}

TEST(PostgresJobStoreTest, ManyOpenAtOnceCreateTheSchemaOnce) {
  PostgresTestDatabase db;
  ASSERT_TRUE(db.ok());
  std::vector<std::thread> threads;
  std::vector<Status> results(6);
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = OpenError(db.url()); });
  }
  for (std::thread& t : threads) t.join();
  for (const Status& s : results) EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(db.Query("SELECT count(*) FROM tern_schema"), "1");
  EXPECT_EQ(db.Query("SELECT count(*) FROM leader_lease"), "1");
}

TEST(PostgresJobStoreTest, ReconnectsAfterTheConnectionIsTerminated) {
  PostgresTestDatabase db;
  ASSERT_TRUE(db.ok());
  auto store = PostgresJobStore::Open(db.url(), {});
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->CreateJob(SampleJob(1), {}).ok());

  EXPECT_EQ(db.Query("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()"),
            "1");
  // The call that finds the connection gone fails, saying so; the next one
  // connects again.
  StatusOr<std::vector<Job>> lost = (*store)->LoadJobs();
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.status().code(), StatusCode::kUnavailable) << lost.status();
  EXPECT_NE(lost.status().message().find("connection"), std::string::npos) << lost.status();
  ASSERT_TRUE((*store)->CreateJob(SampleJob(2), {}).ok());
  StatusOr<std::vector<Job>> loaded = (*store)->LoadJobs();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->size(), 2u);

  // A write that finds it gone is UNAVAILABLE, stores nothing, and the
  // store goes on.
  db.Query(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
      "WHERE datname = current_database() AND pid <> pg_backend_pid()");
  Status write = (*store)->CreateJob(SampleJob(3), {});
  EXPECT_EQ(write.code(), StatusCode::kUnavailable) << write;
  EXPECT_EQ(db.Query("SELECT count(*) FROM jobs WHERE id = 3"), "0");
  EXPECT_TRUE((*store)->CreateJob(SampleJob(3), {}).ok());
}

TEST(PostgresJobStoreTest, OpenJobStoreChoosesByTheName) {
  PostgresTestDatabase db;
  ASSERT_TRUE(db.ok());
  StatusOr<std::unique_ptr<JobStore>> pg = OpenJobStore(db.url(), 0, nullptr);
  ASSERT_TRUE(pg.ok()) << pg.status();
  EXPECT_NE(dynamic_cast<PostgresJobStore*>(pg->get()), nullptr);
  testing::TempDir dir;
  const std::string path = (dir.path() / "jobs.db").string();
  StatusOr<std::unique_ptr<JobStore>> sqlite = OpenJobStore(path, 0, nullptr);
  ASSERT_TRUE(sqlite.ok()) << sqlite.status();
  EXPECT_NE(dynamic_cast<SqliteJobStore*>(sqlite->get()), nullptr);
  EXPECT_EQ(OpenJobStore(path, 3, nullptr).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(JobStoreDisplayName("postgresql://u:pw@h/d"), "postgresql://u:***@h/d");
  EXPECT_EQ(JobStoreDisplayName(path), path);
}

}  // namespace
}  // namespace tern::scheduler
