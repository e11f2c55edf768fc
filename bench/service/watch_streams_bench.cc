// tern_watch_streams_bench: holds many WatchJob streams open on a running
// ternd and reports what they cost it.
//
//   tern_watch_streams_bench --server 127.0.0.1:7070 --job 1 --streams 10000
//       [--pid PID] [--owner bench] [--hold-seconds 2] [--channels 1]
//
// Opens --streams WatchJob streams on job --job (from_sequence 1: each first
// replays the job's history, then stays open while the job is not finished;
// use a job that stays QUEUED, e.g. on a ternd without agents) from one
// process with gRPC's callback client API (a few threads in all), waits until
// every stream either delivered its first event or ended, holds them for
// --hold-seconds, reads ternd's thread count and resident memory from
// /proc/PID/status (--pid), then cancels them all. Prints one JSON object:
//   {"streams":N,"open":n,"ended":{"RESOURCE_EXHAUSTED":k,...},
//    "ternd_threads_before":t0,"ternd_threads":t,"ternd_rss_kib_before":r0,
//    "ternd_rss_kib":r,"open_seconds":s}
// Exit 0 when every stream was answered (open or refused), 1 otherwise.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include "tern/v1/job_service.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;

// Threads: and VmRSS: (kB) of /proc/PID/status; -1 when unreadable.
std::pair<long, long> ProcessCost(int pid) {
  if (pid <= 0) return {-1, -1};
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  long threads = -1, rss = -1;
  std::string key;
  while (in >> key) {
    if (key == "Threads:") in >> threads;
    if (key == "VmRSS:") in >> rss;
    in.ignore(1 << 20, '\n');
  }
  return {threads, rss};
}

// Counts streams in three states; the main thread waits on it.
struct Tally {
  std::mutex mu;
  std::condition_variable cv;
  int answered = 0;  // delivered an event, or ended
  int open = 0;      // delivered an event and not ended yet
  int done = 0;      // OnDone called
  std::map<std::string, int> ended;  // status code name -> count (before cancel)
};

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "OTHER";
  }
}

class Watcher final : public grpc::ClientReadReactor<tern::v1::JobEvent> {
 public:
  Watcher(tern::v1::JobService::Stub* stub, const std::string& job, const std::string& owner,
          Tally* tally)
      : tally_(tally) {
    context_.AddMetadata("x-tern-owner", owner);
    request_.set_job_id(job);
    request_.set_from_sequence(1);
    stub->async()->WatchJob(&context_, &request_, this);
    StartRead(&event_);
    StartCall();
  }
  void Cancel() { context_.TryCancel(); }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    if (!first_) {
      first_ = true;
      std::lock_guard<std::mutex> lock(tally_->mu);
      ++tally_->answered;
      ++tally_->open;
      tally_->cv.notify_all();
    }
    StartRead(&event_);
  }
  void OnDone(const grpc::Status& status) override {
    std::lock_guard<std::mutex> lock(tally_->mu);
    if (first_) {
      --tally_->open;
    } else {
      ++tally_->answered;
    }
    if (!cancelled_by_us_.load()) ++tally_->ended[CodeName(status.error_code())];
    ++tally_->done;
    tally_->cv.notify_all();
  }
  std::atomic<bool> cancelled_by_us_{false};

 private:
  Tally* const tally_;
  grpc::ClientContext context_;
  tern::v1::WatchJobRequest request_;
  tern::v1::JobEvent event_;
  bool first_ = false;  // only touched by the reactions, which do not overlap
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tern_watch_streams_bench: many WatchJob streams against a running ternd"};
  std::string server = "127.0.0.1:7070", job, owner = "bench";
  int streams = 1000, pid = 0, channels = 1;
  double hold_seconds = 2;
  app.add_option("--server", server, "ternd's gRPC address")->capture_default_str();
  app.add_option("--job", job, "job id to watch")->required();
  app.add_option("--streams", streams, "streams to open")->capture_default_str()->check(
      CLI::Range(1, 1000000));
  app.add_option("--pid", pid, "ternd's process id (for threads and memory)");
  app.add_option("--owner", owner, "x-tern-owner metadata")->capture_default_str();
  app.add_option("--hold-seconds", hold_seconds, "how long to hold them open")
      ->capture_default_str();
  app.add_option("--channels", channels, "channels the streams are spread over")
      ->capture_default_str()->check(CLI::Range(1, 64));
  CLI11_PARSE(app, argc, argv);

  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // one connection per channel
  std::vector<std::unique_ptr<tern::v1::JobService::Stub>> stubs;
  for (int c = 0; c < channels; ++c) {
    stubs.push_back(tern::v1::JobService::NewStub(
        grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args)));
  }
  const auto [threads_before, rss_before] = ProcessCost(pid);
  Tally tally;
  const auto start = Clock::now();
  std::vector<std::unique_ptr<Watcher>> watchers;
  watchers.reserve(streams);
  for (int i = 0; i < streams; ++i) {
    watchers.push_back(std::make_unique<Watcher>(stubs[i % channels].get(), job, owner, &tally));
  }
  bool all_answered = false;
  {
    std::unique_lock<std::mutex> lock(tally.mu);
    all_answered = tally.cv.wait_for(lock, std::chrono::seconds(120),
                                     [&] { return tally.answered >= streams; });
  }
  const double open_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::this_thread::sleep_for(std::chrono::duration<double>(hold_seconds));
  const auto [threads, rss] = ProcessCost(pid);
  int open = 0;
  std::map<std::string, int> ended;
  {
    std::lock_guard<std::mutex> lock(tally.mu);
    open = tally.open;
    ended = tally.ended;
  }
  for (auto& w : watchers) {
    w->cancelled_by_us_ = true;
    w->Cancel();
  }
  {
    std::unique_lock<std::mutex> lock(tally.mu);
    tally.cv.wait_for(lock, std::chrono::seconds(60), [&] { return tally.done >= streams; });
    if (tally.done < streams) {
      std::fprintf(stderr, "tern_watch_streams_bench: %d streams did not end after cancel\n",
                   streams - tally.done);
      std::fflush(stderr);
      std::_Exit(1);  // reactors still referenced by gRPC: do not destroy them
    }
  }
  std::printf("{\"streams\":%d,\"open\":%d,\"ended\":{", streams, open);
  bool first = true;
  for (const auto& [code, count] : ended) {
    std::printf("%s\"%s\":%d", first ? "" : ",", code.c_str(), count);
    first = false;
  }
  std::printf(
      "},\"ternd_threads_before\":%ld,\"ternd_threads\":%ld,\"ternd_rss_kib_before\":%ld,"
      "\"ternd_rss_kib\":%ld,\"open_seconds\":%.2f}\n",
      threads_before, threads, rss_before, rss, open_seconds);
  return all_answered ? 0 : 1;
}
