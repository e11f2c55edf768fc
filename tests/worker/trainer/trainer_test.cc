// End-to-end tests of tern-trainer as separate processes: 2-rank Gloo parity,
// kill -9 and resume, a stop on request (SIGUSR1) and resume, an expired
// agent lease, bad specs, a lost peer, and a real Fashion-MNIST run.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <torch/torch.h>

#include <csignal>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/common/signal_disposition.h"
#include "tests/worker/trainer/trainer_process.h"
#include "trainer_protocol/event_writer.h"
#include "trainer_protocol/exit_codes.h"
#include "trainer_protocol/lease_file.h"
#include "worker/trainer/distributed.h"
#include "worker/trainer/models.h"
#include "worker/trainer/stop_request.h"

namespace tern::trainer {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace testing_util;  // NOLINT: test helpers

const char* kFashion = "/usr/share/datasets/fashion-mnist";

// A tiny deterministic job: ResNet-20 ×0.25 on 256 Fashion-MNIST images.
json SmallSpec(const std::string& method, int ranks, int micro_batches) {
  return {{"name", "t-" + method},
          {"model", {{"arch", "resnet20"}, {"width_multiplier", 0.25}}},
          {"dataset", {{"path", kFashion}, {"max_train_examples", 256}, {"max_eval_examples", 64},
                       {"num_workers", 1}}},
          {"quantization", {{"method", method}}},
          {"optimization", {{"epochs", 1}, {"batch_size", 32}, {"lr", 0.05}, {"seed", 3},
                            {"deterministic", true}, {"micro_batches", micro_batches}}},
          {"resources", {{"ranks", ranks}, {"threads_per_rank", 1}}},
          {"checkpoint", {{"every_steps", 2}}},
          {"events", {{"progress_every_steps", 1}}}};
}

// Parameters of the newest committed checkpoint of `dir`.
std::vector<at::Tensor> FinalParameters(const std::string& dir) {
  auto model = BuildClassifier({"resnet20", 1, 10, 0.25}).value();
  LoadNewestCheckpoint(dir, *model);
  return model->parameters();
}

class TrainerTest : public testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(std::string(kFashion) + "/train-images-idx3-ubyte.gz")) {
      GTEST_SKIP() << "Fashion-MNIST not installed at " << kFashion
                   << " (Debian package dataset-fashion-mnist)";
    }
  }
};

// The finished event of the run in `dir` (rank 0).
json Finished(const std::string& dir) {
  const auto events = Events(dir + "/rank0.jsonl");
  EXPECT_FALSE(events.empty()) << dir;
  if (events.empty()) return json::object();
  EXPECT_EQ(events.back()["event"], "finished") << events.back().dump();
  return events.back();
}

// 1 rank with the global batch as 2 micro-batches and 2 ranks with one each
// are the same computation: every parameter and buffer (the BatchNorm
// running statistics and num_batches_tracked included) and the quantizer's
// state are bit-identical on both ranks, and so are the exported artifact
// and its evaluation. Exact because the 2 micro-batches' gradients are
// accumulated as g0/2 + g1/2, which is (g0 + g1)/2, the 2-rank mean, in
// floating point too, and the BatchNorm statistics are averaged as (a + b)/2
// on both paths (running_statistics.h); 2 is the one world size for which
// Gloo's sum order cannot matter.
TEST_F(TrainerTest, TwoRankGlooEqualsOneRankWithSameGlobalBatch) {
  for (const std::string method : {"METHOD_FP", "METHOD_HLA"}) {
    const std::string one = TempDir("parity1_" + method);
    const std::string two = TempDir("parity2_" + method);
    EXPECT_EQ(RunJob(one, SmallSpec(method, 1, 2)), (std::vector<int>{0}));
    EXPECT_EQ(RunJob(two, SmallSpec(method, 2, 1)), (std::vector<int>{0, 0}));
    const auto state = CheckpointState(one);
    ExpectIdenticalState(state, CheckpointState(two, 0), method + ": 1 rank x 2 vs rank 0 of 2");
    ExpectIdenticalState(state, CheckpointState(two, 1), method + ": 1 rank x 2 vs rank 1 of 2");
    // Counted once per optimizer step (256 / 32 = 8), not per micro-batch.
    int counters = 0;
    for (const auto& [name, t] : state) {
      if (name.find("num_batches_tracked") == std::string::npos) continue;
      ++counters;
      EXPECT_EQ(t.item<int64_t>(), 8) << method << " " << name;
    }
    EXPECT_GE(counters, 19) << method;  // ResNet-20: stem, 9 blocks x 2, shortcuts
    ExpectIdenticalArtifacts(one + "/model.tern", two + "/model.tern");
    const json a = Finished(one);
    const json b = Finished(two);
    // The artifact is evaluated by rank 0 alone: the same numbers.
    EXPECT_EQ(a["artifact"], b["artifact"]) << method;
    EXPECT_EQ(a["artifact"]["examples"], 64);
    // The FP-twin and ternary evaluations are sharded over the ranks: the
    // same counts, the loss summed in another order (per rank, then across).
    for (const char* which : {"fp", "ternary"}) {
      EXPECT_EQ(a[which]["top1"], b[which]["top1"]) << method << " " << which;
      EXPECT_EQ(a[which]["top5"], b[which]["top5"]) << method << " " << which;
      EXPECT_NEAR(a[which]["loss"].get<double>(), b[which]["loss"].get<double>(), 1e-5)
          << method << " " << which;
    }
    // Not vacuous: training moved the weights and the statistics.
    torch::manual_seed(3);
    const auto init = BuildClassifier({"resnet20", 1, 10, 0.25}).value();
    EXPECT_GT(MaxDifference(init->parameters(), FinalParameters(two)), 1e-3) << method;
    const at::Tensor var = state.at("model.bn1.running_var");
    EXPECT_GT((var - init->named_buffers()["bn1.running_var"]).abs().max().item<double>(), 1e-3)
        << method;
  }
}

TEST_F(TrainerTest, KillNineThenResumeMatchesUninterruptedRun) {
  json spec = SmallSpec("METHOD_HLA", 1, 1);
  spec["dataset"]["max_train_examples"] = 512;  // 16 steps
  const std::string straight = TempDir("straight");
  ASSERT_EQ(RunJob(straight, spec), (std::vector<int>{0}));

  const std::string killed = TempDir("killed");
  const std::string spec_path = WriteSpec(killed, spec);
  const std::vector<std::string> args = {"--spec", spec_path, "--workdir", killed};
  Process p = Spawn(args, killed + "/first.jsonl");
  // Wait for the second committed checkpoint, then kill -9 mid-training.
  ASSERT_TRUE(WaitForEvent(p.stdout_path, [](const json& e) {
    return e["event"] == "checkpoint" && e["step"].get<int>() >= 4;  // every 2 steps
  }));
  ::kill(p.pid, SIGKILL);
  EXPECT_EQ(Wait(p), 128 + SIGKILL);
  for (const auto& e : Events(p.stdout_path)) EXPECT_NE(e["event"], "finished");

  Process resumed = Spawn(args, killed + "/second.jsonl");
  ASSERT_EQ(Wait(resumed), 0);
  const auto events = Events(resumed.stdout_path);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front()["event"], "started");
  EXPECT_GE(events.front()["resumed_from_step"].get<int>(), 4);
  EXPECT_EQ(events.back()["event"], "finished");
  // Every parameter and buffer (BatchNorm statistics and counters) and the
  // quantizer's state, bit for bit.
  ExpectIdenticalState(CheckpointState(straight), CheckpointState(killed), "kill -9 and resume");
}

TEST_F(TrainerTest, SigusrOneToOneRankStopsEveryRankAtACheckpointAndTheResumeLosesNoStep) {
  json spec = SmallSpec("METHOD_HLA", 2, 1);
  spec["dataset"]["max_train_examples"] = 2048;  // 64 steps
  spec["checkpoint"]["every_steps"] = 1000;      // only the last step commits one by itself
  const std::string straight = TempDir("stop_straight");
  ASSERT_EQ(RunJob(straight, spec), (std::vector<int>{0, 0}));

  const std::string dir = TempDir("stopped");
  std::vector<Process> first = SpawnJob(dir, spec, "_first");
  // What tern-agent does on a drain, here to rank 1 only: rank 0 learns of
  // it through the vote in the gradient all-reduce.
  ASSERT_TRUE(WaitForEvent(first[0].stdout_path, [](const json& e) {
    return e["event"] == "progress" && e["step"].get<int>() >= 3;
  }));
  ::kill(first[1].pid, SIGUSR1);
  EXPECT_EQ(Wait(first[0]), kExitStopped);
  EXPECT_EQ(Wait(first[1]), kExitStopped);
  const auto events = Events(first[0].stdout_path);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["event"], "stopped") << events.back().dump();
  const int stopped_at = events.back().value("step", -1);
  EXPECT_GE(stopped_at, 3);
  EXPECT_LT(stopped_at, 64);  // stopped, not finished
  EXPECT_EQ(NewestCommittedStep(dir + "/checkpoints"), stopped_at);
  for (const auto& e : events) EXPECT_NE(e["event"], "failed") << e.dump();
  // Rank 1 says so too: its exit may be the first ternd hears of.
  const auto rank1_events = Events(first[1].stdout_path);
  ASSERT_FALSE(rank1_events.empty());
  EXPECT_EQ(rank1_events.back()["event"], "stopped") << rank1_events.back().dump();
  EXPECT_EQ(rank1_events.back().value("step", -1), stopped_at);
  EXPECT_EQ(rank1_events.back().value("rank", -1), 1);
  EXPECT_EQ(rank1_events.back()["checkpoint"], events.back()["checkpoint"]);

  std::vector<Process> second = SpawnJob(dir, spec, "_second");
  EXPECT_EQ(Wait(second[0]), 0);
  EXPECT_EQ(Wait(second[1]), 0);
  const auto resumed = Events(second[0].stdout_path);
  ASSERT_FALSE(resumed.empty());
  EXPECT_EQ(resumed.front()["event"], "started");
  EXPECT_EQ(resumed.front()["resumed_from_step"].get<int>(), stopped_at);
  EXPECT_EQ(resumed.back()["event"], "finished");
  // Not a step lost or repeated: the same weights, BatchNorm statistics and
  // counters and quantizer state as the uninterrupted run, on both ranks.
  for (int rank : {0, 1}) {
    ExpectIdenticalState(CheckpointState(straight, rank), CheckpointState(dir, rank),
                         "stopped and resumed, rank " + std::to_string(rank));
  }
}

// tern-agent hands the ranks the job's rendezvous secret in the environment:
// both use it (they meet and finish), and neither leaves it readable in
// /proc/<pid>/environ for this user's other processes.
TEST_F(TrainerTest, RanksWithTheRendezvousKeyFinishAndScrubItFromTheirEnvironment) {
  json spec = SmallSpec("METHOD_HLA", 2, 1);
  spec["dataset"]["max_train_examples"] = 1024;  // 32 steps: both ranks still run when read
  const std::string key = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
  // Another variable the ranks inherit: finding it proves that the live
  // environment was read (a rank already gone, or a zombie's empty file,
  // would otherwise pass for a scrubbed one).
  const std::string marker = "TERN_TEST_ENVIRON_MARKER=scrub-test";
  const std::string dir = TempDir("rendezvous_key");
  ::setenv("TERN_RENDEZVOUS_KEY", key.c_str(), 1);
  ::setenv("TERN_TEST_ENVIRON_MARKER", "scrub-test", 1);
  std::vector<Process> ranks = SpawnJob(dir, spec);
  ::unsetenv("TERN_RENDEZVOUS_KEY");
  ::unsetenv("TERN_TEST_ENVIRON_MARKER");
  // Rank 0's first progress line: both ranks read the key, met and stepped.
  ASSERT_TRUE(WaitForEvent(ranks[0].stdout_path,
                           [](const json& e) { return e["event"] == "progress"; }));
  for (const Process& p : ranks) {
    const StatusOr<std::string> environ =
        ReadFileToString("/proc/" + std::to_string(p.pid) + "/environ");
    ASSERT_TRUE(environ.ok()) << "rank pid " << p.pid << " exited before it was read: "
                              << environ.status();
    EXPECT_NE(environ->find(marker), std::string::npos)
        << "rank pid " << p.pid << ": not its live environment";
    EXPECT_EQ(environ->find(key), std::string::npos) << "rank pid " << p.pid;
  }
  EXPECT_EQ(Wait(ranks[0]), 0);
  EXPECT_EQ(Wait(ranks[1]), 0);
  EXPECT_EQ(Events(ranks[0].stdout_path).back()["event"], "finished");
}

TEST_F(TrainerTest, AStopDuringTheLastEvaluationIsTakenAtTheLastCheckpoint) {
  json spec = SmallSpec("METHOD_HLA", 1, 1);
  spec["dataset"]["max_train_examples"] = 128;   // 4 steps
  spec["dataset"]["max_eval_examples"] = 5000;  // an epoch-end evaluation of a second or more
  const std::string dir = TempDir("stop_at_end");
  const std::string spec_path = WriteSpec(dir, spec);
  const std::vector<std::string> args = {"--spec", spec_path, "--workdir", dir};
  Process p = Spawn(args, dir + "/first.jsonl");
  // The last step's checkpoint line comes right before the evaluation.
  ASSERT_TRUE(WaitForEvent(p.stdout_path, [](const json& e) {
    return e["event"] == "checkpoint" && e["step"].get<int>() == 4;
  }));
  ::kill(p.pid, SIGUSR1);
  EXPECT_EQ(Wait(p), kExitStopped);
  const auto events = Events(p.stdout_path);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["event"], "stopped") << events.back().dump();
  EXPECT_EQ(events.back().value("step", -1), 4);

  Process resumed = Spawn(args, dir + "/second.jsonl");
  ASSERT_EQ(Wait(resumed), 0);
  const auto second = Events(resumed.stdout_path);
  ASSERT_FALSE(second.empty());
  EXPECT_EQ(second.front()["resumed_from_step"].get<int>(), 4);
  EXPECT_EQ(second.back()["event"], "finished");
}

TEST_F(TrainerTest, PastTheAgentsLeaseDeadlineTheTrainerCommitsNothingMoreAndExitsFour) {
  json spec = SmallSpec("METHOD_HLA", 1, 1);
  spec["dataset"]["max_train_examples"] = 4096;  // 128 steps
  const std::string dir = TempDir("fenced");
  const std::string lease = dir + "/agent-lease";
  const auto set_deadline = [&](std::chrono::steady_clock::duration from_now) {
    ASSERT_TRUE(
        WriteFileAtomically(lease, FormatLeaseDeadline(std::chrono::steady_clock::now() + from_now))
            .ok());
  };
  set_deadline(std::chrono::minutes(10));
  ::setenv(kLeaseFileEnv, lease.c_str(), 1);
  Process p = Spawn({"--spec", WriteSpec(dir, spec), "--workdir", dir}, dir + "/out.jsonl");
  ::unsetenv(kLeaseFileEnv);
  // Renewals stop (a frozen agent) once the first checkpoint is committed.
  ASSERT_TRUE(WaitForEvent(p.stdout_path, [](const json& e) { return e["event"] == "checkpoint"; }));
  set_deadline(std::chrono::milliseconds(300));
  const double deadline_unix =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count() +
      0.3;
  EXPECT_EQ(Wait(p), kExitFenced);
  const auto events = Events(p.stdout_path);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["event"], "failed");
  EXPECT_EQ(events.back()["code"], "ABORTED");
  EXPECT_NE(events.back()["reason"].get<std::string>().find("lease"), std::string::npos);
  EXPECT_LT(events.back()["step"].get<int>(), 128);
  for (const auto& e : events) {
    // None committed after the deadline (a line follows its commit by
    // milliseconds).
    if (e["event"] == "checkpoint") {
      EXPECT_LE(e["time"].get<double>(), deadline_unix + 0.25) << e.dump();
    }
    EXPECT_NE(e["event"], "finished");
  }
}

// A frozen agent reads nothing: the trainer's event pipe fills and its writes
// block where the training loop would have noticed the deadline. The lease
// watchdog ends it anyway, with kExitFenced, within its grace.
TEST_F(TrainerTest, ATrainerBlockedOnAFullEventPipeStillExitsFourPastTheLeaseDeadline) {
  json spec = SmallSpec("METHOD_HLA", 1, 1);
  spec["dataset"]["max_train_examples"] = 16384;  // 512 steps, a progress line each
  const std::string dir = TempDir("fenced-blocked");
  const std::string lease = dir + "/agent-lease";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(4);
  ASSERT_TRUE(WriteFileAtomically(lease, FormatLeaseDeadline(deadline)).ok());
  const std::string spec_path = WriteSpec(dir, spec);
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  ::fcntl(out[1], F_SETPIPE_SZ, 4096);  // the smallest: full after a few lines
  const pid_t pid = fork();
  if (pid == 0) {
    ::dup2(out[1], 1);
    ::close(out[0]);
    ::setenv(kLeaseFileEnv, lease.c_str(), 1);
    std::string binary = TERN_TRAINER_BINARY;
    std::vector<std::string> args = {binary, "--spec", spec_path, "--workdir", dir};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(binary.c_str(), argv.data());
    _exit(127);
  }
  ::close(out[1]);
  // Never read: only its size is looked at, once the trainer is gone.
  int status = 0;
  pid_t waited = 0;
  while ((waited = ::waitpid(pid, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() < deadline + std::chrono::seconds(30)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const auto ended = std::chrono::steady_clock::now();
  if (waited == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL() << "the trainer still ran 30 s past its lease deadline";
  }
  int queued = 0;
  ::ioctl(out[0], FIONREAD, &queued);
  ::close(out[0]);
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
  EXPECT_EQ(WEXITSTATUS(status), kExitFenced);
  EXPECT_GE(ended, deadline);
  EXPECT_LE(ended, deadline + kLeaseWatchdogGrace + std::chrono::seconds(2));
  // The pipe was full, so the loop's own check could not have stopped it.
  EXPECT_GE(queued, 4096 - 1024) << "the pipe never filled";
}

// `tern-trainer --evaluate` on a finished job's .tern gives the metrics the
// job reported for its re-loaded artifact, also from a spec whose training
// subset differs (the normalization comes from the artifact, not from the
// data), and refuses data the model cannot take.
TEST_F(TrainerTest, EvaluateGivesTheFinishedJobsArtifactMetrics) {
  const std::string dir = TempDir("evaluate");
  json spec = SmallSpec("METHOD_HLA", 1, 1);
  ASSERT_EQ(RunJob(dir, spec), (std::vector<int>{0}));
  const json finished = Events(dir + "/rank0.jsonl").back();
  ASSERT_EQ(finished["event"], "finished") << finished.dump();
  const std::string artifact = dir + "/model.tern";

  spec["dataset"]["max_train_examples"] = 64;  // another mean and std, were they recomputed
  Process p = Spawn({"--spec", WriteSpec(dir, spec), "--evaluate", artifact},
                    dir + "/evaluate.jsonl");
  ASSERT_EQ(Wait(p), 0);
  const auto events = Events(p.stdout_path);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0]["event"], "evaluated") << events[0].dump();
  EXPECT_EQ(events[0]["metrics"], finished["artifact"]) << events[0].dump();
  EXPECT_EQ(events[0]["method"], "hla");
  EXPECT_EQ(events[0]["metrics"]["examples"], 64);
  EXPECT_FALSE(fs::exists(dir + "/checkpoints/evaluate")) << "evaluation writes nothing";

  // A refused evaluation: exit 1 and its one `failed` event.
  const auto refused_event = [&](const json& with_spec, const std::string& file,
                                 const std::string& tag) -> json {
    Process q = Spawn({"--spec", WriteSpec(dir, with_spec), "--evaluate", file},
                      dir + "/" + tag + ".jsonl");
    EXPECT_EQ(Wait(q), 1);
    const auto events = Events(q.stdout_path);
    EXPECT_EQ(events.size(), 1u);
    return events.empty() ? json::object() : events[0];
  };

  // Three-channel images for a model trained on one channel.
  json synthetic = spec;
  synthetic["dataset"] = {{"kind", "DATASET_SYNTHETIC"}, {"input_size", 28},
                          {"max_train_examples", 64}, {"max_eval_examples", 16}};
  const json refused = refused_event(synthetic, artifact, "mismatch");
  EXPECT_EQ(refused["code"], "FAILED_PRECONDITION") << refused.dump();
  EXPECT_NE(refused.value("reason", "").find(
                "was trained on 1-channel images; the spec's dataset has 3 channels"),
            std::string::npos)
      << refused.dump();

  // A damaged file: named, DATA_LOSS.
  std::string bytes = *ReadFileToString(artifact);
  bytes.resize(bytes.size() / 2);
  ASSERT_TRUE(WriteFileAtomically(dir + "/half.tern", bytes).ok());
  const json damaged = refused_event(spec, dir + "/half.tern", "damaged");
  EXPECT_EQ(damaged["code"], "DATA_LOSS") << damaged.dump();
}

TEST_F(TrainerTest, BadSpecExitsTwoNamingTheField) {
  const std::string dir = TempDir("badspec");
  json spec = SmallSpec("METHOD_HLA", 1, 1);
  spec["quantization"]["kappa_start"] = -1;
  Process p = Spawn({"--spec", WriteSpec(dir, spec), "--workdir", dir}, dir + "/out.jsonl");
  EXPECT_EQ(Wait(p), 2);
  const auto events = Events(p.stdout_path);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0]["event"], "failed");
  EXPECT_NE(events[0]["reason"].get<std::string>().find("quantization.kappa_start"),
            std::string::npos);

  spec = SmallSpec("METHOD_HLA", 1, 1);
  spec["dataset"]["path"] = dir + "/missing";
  Process q = Spawn({"--spec", WriteSpec(dir, spec), "--workdir", dir}, dir + "/out2.jsonl");
  EXPECT_NE(Wait(q), 0);
  const auto failed = Events(q.stdout_path);
  ASSERT_FALSE(failed.empty());
  EXPECT_EQ(failed.back()["event"], "failed");
  EXPECT_NE(failed.back()["reason"].get<std::string>().find("missing"), std::string::npos);
}

TEST_F(TrainerTest, LostPeerFailsTheSurvivorWithAClearReason) {
  const std::string dir = TempDir("lostpeer");
  json spec = SmallSpec("METHOD_FP", 2, 1);
  spec["dataset"]["max_train_examples"] = 4096;
  spec["collective_timeout_seconds"] = 10;
  const std::string spec_path = WriteSpec(dir, spec);
  const int port = PickFreePort().value();
  auto args = [&](int rank) {
    return std::vector<std::string>{"--spec", spec_path, "--rank", std::to_string(rank),
                                    "--world-size", "2", "--master",
                                    "127.0.0.1:" + std::to_string(port), "--workdir", dir};
  };
  Process r0 = Spawn(args(0), dir + "/r0.jsonl");
  Process r1 = Spawn(args(1), dir + "/r1.jsonl");
  ASSERT_TRUE(WaitForEvent(r0.stdout_path, [](const json& e) { return e["event"] == "progress"; }));
  // Else a send to the dead peer's socket can end the survivor by SIGPIPE
  // (exit 141) before it reports anything.
  EXPECT_TRUE(tern::testing_util::IgnoresSignal(r0.pid, SIGPIPE));
  ::kill(r1.pid, SIGKILL);
  Wait(r1);
  const auto start = std::chrono::steady_clock::now();
  // Exit 6, not 1: ternd waits briefly for the cause (the killed rank's own
  // report) instead of blaming this rank.
  EXPECT_EQ(Wait(r0), kExitCollectiveFailed);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(60));
  const auto events = Events(r0.stdout_path);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["event"], "failed");
  EXPECT_NE(events.back()["reason"].get<std::string>().find("rank 0/2"), std::string::npos)
      << events.back().dump();
}

TEST(EventWriterTest, WritesOneJsonLineWithTheCommonFields) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  std::FILE* out = ::fdopen(fds[1], "w");
  ASSERT_NE(out, nullptr);
  EventWriter(std::string("job-1"), 1, 2, out).Emit("progress", {{"step", 7}});
  std::fclose(out);
  std::string text;
  char buffer[4096];
  for (ssize_t n; (n = ::read(fds[0], buffer, sizeof(buffer))) > 0;) text.append(buffer, n);
  ::close(fds[0]);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(text.find('\n'), text.size() - 1) << text;
  const json e = json::parse(text);
  EXPECT_EQ(e["event"], "progress");
  EXPECT_EQ(e["job"], "job-1");
  EXPECT_EQ(e["rank"], 1);
  EXPECT_EQ(e["world_size"], 2);
  EXPECT_EQ(e["step"], 7);
  EXPECT_GT(e["time"].get<double>(), 1.7e9);
}

// The trainer ignores SIGPIPE for its sockets; events written to a pipe
// nobody reads still end it.
TEST(EventWriterDeathTest, ClosedPipeEndsTheProcessBySigpipeEvenWhenIgnored) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  EXPECT_EXIT(
      {
        std::signal(SIGPIPE, SIG_IGN);
        int fds[2];
        if (::pipe(fds) != 0) std::exit(3);
        ::close(fds[0]);
        EventWriter(std::string("job"), 0, 1, ::fdopen(fds[1], "w")).Emit("progress", {});
        std::exit(0);
      },
      ::testing::KilledBySignal(SIGPIPE), "");
}

TEST_F(TrainerTest, ShortFashionMnistRunIsFarAboveChance) {
  const std::string dir = TempDir("fashion");
  json spec = SmallSpec("METHOD_HLA", 1, 1);
  spec["model"]["width_multiplier"] = 0.5;
  spec["dataset"]["max_train_examples"] = 3000;
  spec["dataset"]["max_eval_examples"] = 1000;
  spec["optimization"] = {{"epochs", 2}, {"batch_size", 32}, {"lr", 0.05}, {"seed", 0}};
  spec["resources"] = {{"ranks", 1}, {"threads_per_rank", 2}};
  spec["checkpoint"] = {{"every_steps", 1000}};
  spec["events"] = {{"progress_every_steps", 20}};
  ASSERT_EQ(RunJob(dir, spec), (std::vector<int>{0}));
  const auto events = Events(dir + "/rank0.jsonl");
  ASSERT_FALSE(events.empty());
  const json& done = events.back();
  ASSERT_EQ(done["event"], "finished") << done.dump();
  // Chance is 0.1; this budget (188 steps on 3000 images) reaches ~0.6.
  EXPECT_GT(done["artifact"]["top1"].get<double>(), 0.45);
  EXPECT_EQ(done["artifact"]["examples"], 1000);
  EXPECT_NEAR(done["bits_per_weight"].get<double>(), 2.0, 0.01);
  EXPECT_TRUE(fs::exists(done["artifact_path"].get<std::string>()));
  int epoch_ends = 0;
  for (const auto& e : events) {
    if (e["event"] != "epoch_end") continue;
    ++epoch_ends;
    ASSERT_FALSE(e["layers"].empty());
    EXPECT_TRUE(e["layers"][1]["quantized"].get<bool>());
  }
  EXPECT_EQ(epoch_ends, 2);
}

// Paired runs (docs/RESULTS.md, "The HLA recipe study"): the same seed gives
// the same initial model and the same batch order whatever the method; another
// seed gives others (so the digests do tell runs apart).
TEST_F(TrainerTest, TheSameSeedGivesEveryMethodTheSameInitialisationAndBatchOrder) {
  std::map<std::string, json> started;
  for (const std::string name : {"METHOD_FP", "METHOD_TWN", "METHOD_TTQ", "METHOD_HLA", "seed4"}) {
    json spec = SmallSpec(name == "seed4" ? "METHOD_HLA" : name, 1, 1);
    spec["dataset"]["max_train_examples"] = 64;
    spec["dataset"]["max_eval_examples"] = 16;
    spec["dataset"]["val_fraction"] = 0.25;
    if (name == "seed4") spec["optimization"]["seed"] = 4;
    const std::string dir = TempDir("paired_" + name);
    ASSERT_EQ(RunJob(dir, spec), (std::vector<int>{0})) << name;
    const auto events = Events(dir + "/rank0.jsonl");
    ASSERT_FALSE(events.empty());
    ASSERT_EQ(events.front()["event"], "started") << name;
    started[name] = events.front();
    EXPECT_TRUE(started[name]["init_digest"].is_string()) << started[name].dump();
  }
  for (const std::string name : {"METHOD_TWN", "METHOD_TTQ", "METHOD_HLA"}) {
    EXPECT_EQ(started[name]["init_digest"], started["METHOD_FP"]["init_digest"]) << name;
    EXPECT_EQ(started[name]["data_digest"], started["METHOD_FP"]["data_digest"]) << name;
    EXPECT_EQ(started[name]["train_examples"], 48) << name;  // 64 less the validation split
  }
  EXPECT_NE(started["seed4"]["init_digest"], started["METHOD_HLA"]["init_digest"]);
  EXPECT_NE(started["seed4"]["data_digest"], started["METHOD_HLA"]["data_digest"]);
}

// HLA's diagnostics (docs/EVENTS.md): the regularizer's sample in phase 1's
// progress lines, one phase_switch event with the three evaluations, and the
// final epoch's validation metrics next to the test metrics.
TEST_F(TrainerTest, HlaReportsTheRegularizerThePhaseSwitchAndTheFinalValidationMetrics) {
  json spec = SmallSpec("METHOD_HLA", 1, 1);
  spec["dataset"]["val_fraction"] = 0.25;  // 192 training images: 6 steps of 32
  spec["quantization"]["lambda_max"] = 0.1;
  spec["quantization"]["reg_fraction"] = 0.5;
  spec["quantization"]["bn_recalibration_batches"] = 3;
  spec["quantization"]["recalibrate_bn_before_export"] = true;
  const std::string dir = TempDir("diagnostics");
  ASSERT_EQ(RunJob(dir, spec), (std::vector<int>{0}));
  const auto events = Events(dir + "/rank0.jsonl");
  int samples = 0, switches = 0;
  json last_epoch, last_progress, last_switch;
  for (const json& e : events) {
    if (e["event"] == "progress") {
      // The switch's evaluations stay out of the throughput window: the time between this
      // line and the previous one is the window's steps plus (at least) the switch.
      if (!last_switch.is_null() && !last_progress.is_null()) {
        const double gap = e["time"].get<double>() - last_progress["time"].get<double>();
        EXPECT_GE(gap - e["step_seconds"].get<double>(), last_switch["seconds"].get<double>())
            << e.dump() << "\n"
            << last_switch.dump();
        last_switch = nullptr;
      }
      last_progress = e;
      ASSERT_TRUE(e.contains("regularizer")) << e.dump();
      const json& r = e["regularizer"];
      ++samples;
      EXPECT_GE(r["layers"].size(), 18u);  // ResNet-20 less the stem and the classifier
      EXPECT_GT(r["cos_wt"].get<double>(), 0.5);
      EXPECT_LE(r["cos_wt"].get<double>(), 1.0);
      EXPECT_GE(r["seconds"].get<double>(), 0.0);
      // λ ramps from 0 over the first 10%: positive from the second step.
      if (e["step"].get<int>() >= 2) {
        EXPECT_GT(r["reg_grad_share"].get<double>(), 0.0) << e.dump();
        EXPECT_LT(r["reg_grad_share"].get<double>(), 1.0) << e.dump();
        EXPECT_GT(r["layers"][0]["reg_grad_norm"].get<double>(), 0.0);
      }
    } else if (e["event"] == "phase_switch") {
      ++switches;
      last_switch = e;
      EXPECT_GT(e["seconds"].get<double>(), 0.0);
      EXPECT_EQ(e["step"], 3);  // the first step with progress >= 0.5
      EXPECT_EQ(e["eval_split"], "val");
      EXPECT_EQ(e["fp"]["examples"], 64);
      for (const char* which : {"fp", "ternary", "ternary_bn"}) {
        EXPECT_GE(e[which]["top1"].get<double>(), 0.0) << which;
      }
      EXPECT_EQ(e["bn_batches"], 3);
      EXPECT_EQ(e["bn_images"], 96);
      EXPECT_EQ(e["bn_kept"], false);
    } else if (e["event"] == "epoch_end") {
      last_epoch = e;
    }
  }
  EXPECT_EQ(samples, 6);
  EXPECT_EQ(switches, 1);
  const json done = Finished(dir);
  EXPECT_EQ(done["bn_recalibration_batches"], 3);
  ASSERT_TRUE(done.contains("val")) << done.dump();
  EXPECT_EQ(done["val"]["ternary"]["examples"], 64);
  EXPECT_EQ(done["artifact"]["examples"], 64);  // the test split, once
  EXPECT_EQ(last_epoch["eval_split"], "val");

  // TWN: no regularizer, no phase 1, so neither diagnostic; without
  // re-estimation before the export, the final validation metrics are the
  // last epoch's.
  json twn = SmallSpec("METHOD_TWN", 1, 1);
  twn["dataset"]["val_fraction"] = 0.25;
  const std::string twn_dir = TempDir("diagnostics_twn");
  ASSERT_EQ(RunJob(twn_dir, twn), (std::vector<int>{0}));
  json twn_last;
  for (const json& e : Events(twn_dir + "/rank0.jsonl")) {
    EXPECT_NE(e["event"], "phase_switch");
    EXPECT_FALSE(e.contains("regularizer"));
    if (e["event"] == "epoch_end") twn_last = e;
  }
  const json twn_done = Finished(twn_dir);
  EXPECT_EQ(twn_done["val"]["ternary"], twn_last["ternary"]);
  EXPECT_EQ(twn_done["val"]["fp"], twn_last["fp"]);
}

// No files and no Fashion-MNIST needed: DATASET_SYNTHETIC, and the process
// group built at world size 1 on request (how the GPU check exercises NCCL).
TEST(TrainerSyntheticTest, TrainsOnSyntheticDataWithAProcessGroupAtWorldSizeOne) {
  const json spec = {
      {"name", "t-synthetic"},
      {"model", {{"arch", "resnet20"}, {"width_multiplier", 0.25}}},
      {"dataset", {{"kind", "DATASET_SYNTHETIC"}, {"input_size", 32}, {"max_train_examples", 64},
                   {"max_eval_examples", 16}, {"num_workers", 1}}},
      {"quantization", {{"method", "METHOD_HLA"}}},
      {"optimization", {{"epochs", 1}, {"batch_size", 16}, {"lr", 0.05}}},
      {"resources", {{"ranks", 1}, {"threads_per_rank", 1}}},
      {"checkpoint", {{"every_steps", 1000}}}};
  for (const bool always_connect : {false, true}) {
    const std::string dir = TempDir(always_connect ? "synthetic_pg" : "synthetic");
    const std::string spec_path = WriteSpec(dir, spec);
    std::vector<std::string> args = {"--spec", spec_path, "--workdir", dir, "--master",
                                     "127.0.0.1:" + std::to_string(PickFreePort().value())};
    if (always_connect) args.push_back("--always-connect");
    ASSERT_EQ(Wait(Spawn(args, dir + "/rank0.jsonl")), 0) << "always_connect " << always_connect;
    const auto events = Events(dir + "/rank0.jsonl");
    ASSERT_GE(events.size(), 2u);
    ASSERT_EQ(events.front()["event"], "started") << events.front().dump();
    EXPECT_EQ(events.front()["process_group"], always_connect ? "gloo" : "none");
    EXPECT_EQ(events.front()["arch"]["num_classes"], 1000);
    EXPECT_EQ(events.front()["arch"]["in_channels"], 3);
    EXPECT_EQ(events.front()["train_examples"], 64);
    ASSERT_EQ(events.back()["event"], "finished") << events.back().dump();
    EXPECT_EQ(events.back()["artifact"]["examples"], 16);
    EXPECT_EQ(events.back()["steps"], 4);
  }
}

}  // namespace
}  // namespace tern::trainer
