// ChildProcess: fork/exec with pipes, process groups and exit statuses.
#include "worker/agent/child_process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "tests/common/scoped_temp_dir.h"
#include "worker/agent/fs_confinement.h"

namespace tern::agent {
namespace {

using std::chrono::milliseconds;

// Reads both pipes until EOF and waits for the exit.
ExitStatus Drain(ChildProcess& child, std::string* out, std::string* err) {
  while (child.stdout_fd() >= 0 || child.stderr_fd() >= 0) {
    pollfd fds[2];
    int n = 0;
    if (child.stdout_fd() >= 0) fds[n++] = {child.stdout_fd(), POLLIN, 0};
    if (child.stderr_fd() >= 0) fds[n++] = {child.stderr_fd(), POLLIN, 0};
    ::poll(fds, n, 1000);
    for (int i = 0; i < n; ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP))) continue;
      char buf[4096];
      const ssize_t r = ::read(fds[i].fd, buf, sizeof buf);
      const bool is_out = fds[i].fd == child.stdout_fd();
      if (r > 0) {
        (is_out ? out : err)->append(buf, static_cast<size_t>(r));
      } else if (r == 0) {
        is_out ? child.CloseStdout() : child.CloseStderr();
      }
    }
  }
  for (int i = 0; i < 500; ++i) {
    if (auto s = child.TryWait()) return *s;
    std::this_thread::sleep_for(milliseconds(10));
  }
  ADD_FAILURE() << "child did not exit";
  return {};
}

bool Alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] != 'Z' &&
         line[paren + 2] != 'X';
}

TEST(ChildProcessTest, CapturesOutputEnvironmentAndExitCode) {
  ChildProcess::Options o;
  o.argv = {"/bin/sh", "-c", "echo out:$GREETING; echo err >&2; pwd; exit 3"};
  o.env = {"GREETING=hello"};
  o.working_dir = "/tmp";
  auto child = ChildProcess::Start(o);
  ASSERT_TRUE(child.ok()) << child.status();
  std::string out, err;
  const ExitStatus s = Drain(**child, &out, &err);
  EXPECT_EQ(out, "out:hello\n/tmp\n");
  EXPECT_EQ(err, "err\n");
  EXPECT_EQ(s.exit_code, 3);
  EXPECT_EQ(s.signal, 0);
  EXPECT_EQ(s.ToString(), "exit code 3");
}

TEST(ChildProcessTest, PipesHoldAMegabyteSoAStalledReaderBlocksTheChildLate) {
  ChildProcess::Options o;
  o.argv = {"/bin/sh", "-c", "exit 0"};
  auto child = ChildProcess::Start(o);
  ASSERT_TRUE(child.ok()) << child.status();
  int max_bytes = 1 << 20;  // the kernel's cap for unprivileged processes
  std::ifstream("/proc/sys/fs/pipe-max-size") >> max_bytes;
  const int expected = std::min(1 << 20, max_bytes);
  EXPECT_GE(::fcntl((*child)->stdout_fd(), F_GETPIPE_SZ), expected);
  EXPECT_GE(::fcntl((*child)->stderr_fd(), F_GETPIPE_SZ), expected);
  std::string out, err;
  Drain(**child, &out, &err);
}

TEST(ChildProcessTest, MissingExecutableIsNotFound) {
  ChildProcess::Options o;
  o.argv = {"/nonexistent/tern-trainer"};
  auto child = ChildProcess::Start(o);
  ASSERT_FALSE(child.ok());
  EXPECT_EQ(child.status().code(), StatusCode::kNotFound);
  EXPECT_NE(child.status().message().find("/nonexistent/tern-trainer"), std::string::npos);
}

TEST(ChildProcessTest, SignalGroupReachesGrandchildren) {
  const std::string pidfile =
      ::testing::TempDir() + "/grandchild." + std::to_string(::getpid()) + ".pid";
  std::remove(pidfile.c_str());
  ChildProcess::Options o;
  o.argv = {"/bin/sh", "-c", "sleep 300 & echo $! > " + pidfile + "; wait"};
  o.env = {"PATH=/usr/bin:/bin"};
  auto child = ChildProcess::Start(o);
  ASSERT_TRUE(child.ok()) << child.status();
  pid_t grandchild = 0;
  for (int i = 0; i < 500 && grandchild == 0; ++i) {
    std::ifstream in(pidfile);
    in >> grandchild;
    if (grandchild == 0) std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_GT(grandchild, 0);
  EXPECT_TRUE(Alive(grandchild));
  EXPECT_EQ(::getpgid((*child)->pid()), (*child)->pid());  // a group of its own
  (*child)->SignalGroup(SIGTERM);
  std::string out, err;
  const ExitStatus s = Drain(**child, &out, &err);
  EXPECT_EQ(s.signal, SIGTERM);
  EXPECT_EQ(s.exit_code, -1);
  EXPECT_EQ(SignalName(s.signal), "SIGTERM");
  for (int i = 0; i < 200 && Alive(grandchild); ++i) std::this_thread::sleep_for(milliseconds(10));
  EXPECT_FALSE(Alive(grandchild));
}

TEST(ChildProcessTest, DestructorKillsARunningChild) {
  ChildProcess::Options o;
  o.argv = {"/bin/sleep", "300"};
  pid_t pid = 0;
  {
    auto child = ChildProcess::Start(o);
    ASSERT_TRUE(child.ok()) << child.status();
    pid = (*child)->pid();
    EXPECT_TRUE(Alive(pid));
  }
  EXPECT_FALSE(Alive(pid));
}

// The child (and what it starts) writes only beneath the allowed
// directories, by any path; it still reads and executes everywhere.
TEST(FsConfinementTest, TheChildWritesOnlyBeneathTheAllowedDirectories) {
  if (FsConfinement::AbiVersion() == 0) {
    GTEST_SKIP() << "this kernel offers no Landlock: write confinement cannot be tested here";
  }
  namespace fs = std::filesystem;
  testing_util::ScopedTempDir dir("tern_write_confinement_test");
  const std::string root = fs::canonical(dir.path()).string();
  fs::create_directories(root + "/allowed");
  fs::create_directories(root + "/outside");
  { std::ofstream(root + "/outside/readable") << "still readable\n"; }
  fs::create_directory_symlink(root + "/outside", root + "/allowed/link");

  FsRules rules;
  rules.writable = {root + "/allowed", root + "/missing"};
  StatusOr<FsConfinement> confinement = FsConfinement::Create(rules);
  ASSERT_TRUE(confinement.ok()) << confinement.status();
  EXPECT_EQ(confinement->allowed(), std::vector<std::string>{root + "/allowed"});
  EXPECT_FALSE(confinement->confines_reads());

  ChildProcess::Options o;
  o.argv = {"/bin/sh", "-c",
            "cd " + root + " && echo a > allowed/f && mkdir allowed/d && echo b > allowed/d/g; "
            "echo c > outside/h; echo d > allowed/link/i; mkdir outside/e; "
            "mv allowed/f outside/f; rm outside/readable; cat outside/readable"};
  o.landlock_ruleset_fd = confinement->fd();
  auto child = ChildProcess::Start(o);
  ASSERT_TRUE(child.ok()) << child.status();
  std::string out, err;
  Drain(**child, &out, &err);
  EXPECT_EQ(out, "still readable\n");
  EXPECT_TRUE(fs::exists(root + "/allowed/d/g"));
  EXPECT_TRUE(fs::exists(root + "/allowed/f"));  // not moved out
  for (const char* name : {"h", "i", "e", "f"}) {
    EXPECT_FALSE(fs::exists(root + "/outside/" + name)) << name;
  }
  EXPECT_TRUE(fs::exists(root + "/outside/readable"));  // not removed
  EXPECT_NE(err.find("Permission denied"), std::string::npos) << err;

  // The agent itself is not confined.
  { std::ofstream(root + "/outside/by-the-parent") << "x"; }
  EXPECT_TRUE(fs::exists(root + "/outside/by-the-parent"));
}

// With readable paths, the child reads and executes only beneath them (and
// the writable directories), by any path; the system's programs still run.
TEST(FsConfinementTest, TheChildReadsOnlyBeneathTheReadablePaths) {
  if (FsConfinement::AbiVersion() == 0) {
    GTEST_SKIP() << "this kernel offers no Landlock: read confinement cannot be tested here";
  }
  namespace fs = std::filesystem;
  testing_util::ScopedTempDir dir("tern_read_confinement_test");
  const std::string root = fs::canonical(dir.path()).string();
  for (const char* d : {"/data", "/scratch", "/secret"}) fs::create_directories(root + d);
  { std::ofstream(root + "/data/x") << "data\n"; }
  { std::ofstream(root + "/scratch/y") << "scratch\n"; }
  { std::ofstream(root + "/secret/key") << "secret\n"; }
  { std::ofstream(root + "/single-file") << "one file\n"; }
  fs::create_symlink(root + "/secret/key", root + "/data/link-to-key");

  FsRules rules;
  rules.writable = {root + "/scratch"};
  rules.readable = SystemReadablePaths();
  rules.readable->push_back(root + "/data");
  rules.readable->push_back(root + "/single-file");
  StatusOr<FsConfinement> confinement = FsConfinement::Create(rules);
  ASSERT_TRUE(confinement.ok()) << confinement.status();
  EXPECT_TRUE(confinement->confines_reads());
  EXPECT_NE(std::find(confinement->readable().begin(), confinement->readable().end(),
                      root + "/single-file"),
            confinement->readable().end());

  ChildProcess::Options o;
  o.argv = {"/bin/sh", "-c",
            "cd " + root + " && cat data/x scratch/y single-file; ls data | wc -l; "
            "echo w > scratch/w && cat scratch/w; "
            "cat secret/key; cat data/link-to-key; ls secret; cat /etc/shadow; "
            "echo end"};
  o.env = {"PATH=/usr/bin:/bin"};
  o.landlock_ruleset_fd = confinement->fd();
  auto child = ChildProcess::Start(o);
  ASSERT_TRUE(child.ok()) << child.status();
  std::string out, err;
  Drain(**child, &out, &err);
  EXPECT_EQ(out, "data\nscratch\none file\n2\nw\nend\n");
  EXPECT_EQ(out.find("secret"), std::string::npos) << out;
  // Each of the four refused reads says so.
  size_t denied = 0;
  for (size_t at = err.find("Permission denied"); at != std::string::npos;
       at = err.find("Permission denied", at + 1)) {
    ++denied;
  }
  EXPECT_EQ(denied, 4u) << err;
}

}  // namespace
}  // namespace tern::agent
