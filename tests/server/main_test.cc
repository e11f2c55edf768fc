// The ternd executable: flags, the "listening on" line, gRPC, health, and a
// graceful SIGTERM shutdown that keeps every acknowledged job.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/common/signal_disposition.h"
#include "tests/server/test_util.h"

namespace tern::server {
namespace {

using testing::SetDeadline;
using testing::ValidSpec;

// A ternd child process whose stdout is read line by line.
class TerndProcess {
 public:
  explicit TerndProcess(const std::vector<std::string>& args) {
    int out[2];
    if (pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      close(out[1]);
      std::vector<char*> argv;
      static std::string binary = TERND_PATH;
      argv.push_back(binary.data());
      std::vector<std::string> copy = args;
      for (std::string& a : copy) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
    close(out[1]);
    stdout_ = fdopen(out[0], "r");
  }
  ~TerndProcess() {
    if (pid_ > 0 && !waited_) {
      kill(pid_, SIGKILL);
      Wait();
    }
    if (stdout_ != nullptr) fclose(stdout_);
  }

  // The next stdout line without the newline; "" at EOF.
  std::string ReadLine() {
    char buffer[1024];
    if (stdout_ == nullptr ||
        fgets(buffer, sizeof(buffer), stdout_) == nullptr) {
      return "";
    }
    std::string line(buffer);
    if (!line.empty() && line.back() == '\n') line.pop_back();
    return line;
  }

  // Exit status (or 128 + signal).
  int Wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    waited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  FILE* stdout_ = nullptr;
  bool waited_ = false;
};

class TerndMainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tern-ternd-main-test-" + std::to_string(getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::vector<std::string> Args() const {
    return {"--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--db",
            (dir_ / "ternd.db").string(),
            "--artifact-root",
            (dir_ / "artifacts").string(),
            "--checkpoint-root",
            (dir_ / "checkpoints").string(),
            "--lease-ttl",
            "5s"};
  }

  std::filesystem::path dir_;
};

std::string AddressFrom(const std::string& line, const std::string& prefix) {
  if (line.rfind(prefix, 0) != 0) return "";
  return line.substr(prefix.size());
}

TEST_F(TerndMainTest, PrintsItsPortsServesAndShutsDownOnSigterm) {
  std::string job_id;
  {
    TerndProcess ternd(Args());
    const std::string address =
        AddressFrom(ternd.ReadLine(), "ternd listening on ");
    ASSERT_FALSE(address.empty());
    EXPECT_EQ(address.rfind("127.0.0.1:", 0), 0u);
    // A client or log reader that goes away mid-write must not end it.
    EXPECT_TRUE(testing_util::IgnoresSignal(ternd.pid(), SIGPIPE));
    const std::string metrics =
        AddressFrom(ternd.ReadLine(), "ternd metrics on ");
    ASSERT_FALSE(metrics.empty());
    const int metrics_port = std::stoi(metrics.substr(metrics.rfind(':') + 1));
    EXPECT_NE(testing::HttpGet(metrics_port, "/metrics")
                  .find("# TYPE tern_scheduler_jobs gauge"),
              std::string::npos);

    auto channel =
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
    {
      auto health = grpc::health::v1::Health::NewStub(channel);
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      grpc::health::v1::HealthCheckResponse response;
      ASSERT_TRUE(health->Check(&ctx, {}, &response).ok());
      EXPECT_EQ(response.status(),
                grpc::health::v1::HealthCheckResponse::SERVING);
    }
    auto jobs = v1::JobService::NewStub(channel);
    {
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      v1::SubmitJobRequest request;
      *request.mutable_spec() = ValidSpec();
      v1::SubmitJobResponse response;
      ASSERT_TRUE(jobs->SubmitJob(&ctx, request, &response).ok());
      job_id = response.job().id();
    }
    // A watcher is connected while ternd stops: its stream ends, and the
    // daemon exits 0 promptly.
    grpc::ClientContext watch_ctx;
    SetDeadline(&watch_ctx);
    v1::WatchJobRequest watch;
    watch.set_job_id(job_id);
    auto reader = jobs->WatchJob(&watch_ctx, watch);
    v1::JobEvent event;
    ASSERT_TRUE(reader->Read(&event));
    const auto start = std::chrono::steady_clock::now();
    ASSERT_EQ(kill(ternd.pid(), SIGTERM), 0);
    while (reader->Read(&event)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(ternd.Wait(), 0);
    EXPECT_LT(std::chrono::steady_clock::now() - start,
              std::chrono::seconds(5));
  }
  // A new process on the same database still has the job.
  TerndProcess ternd(Args());
  const std::string address =
      AddressFrom(ternd.ReadLine(), "ternd listening on ");
  ASSERT_FALSE(address.empty());
  auto jobs = v1::JobService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  v1::Job job;
  ASSERT_TRUE(jobs->GetJob(&ctx, request, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  ASSERT_EQ(kill(ternd.pid(), SIGINT), 0);
  EXPECT_EQ(ternd.Wait(), 0);
}

TEST_F(TerndMainTest, BadFlagsExitWithTwo) {
  TerndProcess bad_duration({"--lease-ttl", "soon"});
  EXPECT_EQ(bad_duration.Wait(), 2);
  TerndProcess unknown({"--no-such-flag"});
  EXPECT_EQ(unknown.Wait(), 2);
  std::vector<std::string> args = Args();
  args.push_back("--rendezvous-port-min");
  args.push_back("70000");
  TerndProcess invalid(args);
  EXPECT_EQ(invalid.Wait(), 1);  // starts, finds the options invalid
}

}  // namespace
}  // namespace tern::server
