// tern_service_load_bench: closed-loop load on a running ternd's JobService.
//
//   tern_service_load_bench --server 127.0.0.1:7070 [--concurrency 1,16,128]
//       [--seconds 5] [--channels 4] [--deadline-ms 10000] [--get-per-submit 1]
//       [--rate 5000] [--queued-depths 0,10000,100000 [--depth-samples 300]]
//   tern_service_load_bench --server ADDR --submit-jobs N --concurrency C
//       --ack-file PATH [--owner bench]
//
// --rpc WhoAmI: the timed call is WhoAmI (no store, no spec check: the floor
// of a unary call through ternd's gRPC server and interceptors) instead of
// SubmitJob; --get-per-submit is then ignored.
//
// --rate R: open loop instead, R timed calls per second offered in all
// (each thread's calls due at a fixed interval; a latency counts from when
// its call was due). With N threads in a closed loop the mean latency is
// N / throughput (Little's law), so "p99 <= 10 ms at 128 clients" needs an
// offered rate, not a closed loop.
//
// For each concurrency level N, N threads (each with its own stub; threads are
// spread round-robin over --channels channels) loop for --seconds: one
// SubmitJob (a small valid 1-rank CPU JobSpec, unique idempotency key, metadata
// x-tern-owner: bench), then --get-per-submit GetJob calls on random ids this
// thread submitted so far. Every call has a deadline. Prints one markdown row
// per (level, RPC): calls, errors, req/s, p50/p99/max latency in ms.
//
// The submitted jobs stay QUEUED (run it against a ternd without agents) and
// accumulate in the server's database across levels.
//
// --queued-depths (after the levels; "--concurrency ''" skips those): for
// each depth D, ascending, fills the queue with 64 concurrent submitters until
// this run has submitted D jobs in all (start from an empty ternd: D is then
// the queue length), then times --depth-samples SubmitJob calls from one
// client, one at a time, each followed by one GetJob of that job and one
// ListJobs (first page of 10). Prints one row per depth.
//
// --submit-jobs N (a load test, tests/e2e/submit_load_e2e.sh): C threads
// submit N jobs in all, each with its own idempotency key, and retry a
// failed call with the same key (waiting for the server to come back) until
// it is acknowledged, for up to --retry-seconds; each acknowledgement appends
// "ID KEY" to --ack-file. Exit status 0 once all N are acknowledged.
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "failover/server_list.h"
#include "tern/v1/job_service.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Samples {
  std::vector<double> ms;  // latency of successful calls
  long errors = 0;
};

struct ThreadResult {
  Samples submit, get;
  std::string first_error;
};

tern::v1::JobSpec SmallSpec(int level, int thread) {
  tern::v1::JobSpec spec;
  spec.set_name("load-bench-c" + std::to_string(level) + "-t" + std::to_string(thread));
  spec.mutable_model()->set_arch("resnet20");
  spec.mutable_model()->set_width_multiplier(0.25);
  spec.mutable_dataset()->set_kind(tern::v1::DATASET_IDX);
  spec.mutable_dataset()->set_path("/usr/share/datasets/fashion-mnist");
  spec.mutable_dataset()->set_max_train_examples(256);
  spec.mutable_dataset()->set_max_eval_examples(64);
  spec.mutable_optimization()->set_epochs(1);
  spec.mutable_optimization()->set_batch_size(32);
  spec.mutable_resources()->set_ranks(1);
  spec.mutable_resources()->set_device_kind(tern::v1::DEVICE_CPU);
  return spec;
}

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Pct(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + static_cast<long>(i), v.end());
  return v[i];
}

// One call's context: its deadline and the bench's owner.
struct Call {
  grpc::ClientContext ctx;
  explicit Call(int deadline_ms) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
    ctx.AddMetadata("x-tern-owner", "bench");
  }
};

// `interval` zero: closed loop (the next call when the last one is
// answered). Otherwise open loop: this thread's SubmitJob calls are due
// every `interval` from `start` (the threads' schedules staggered), and each
// latency counts from when the call was due, so a server that falls behind
// shows its backlog instead of slowing the clients down (no coordinated
// omission).
void Worker(tern::v1::JobService::Stub* stub, int level, int index, Clock::time_point start,
            Clock::time_point end, Clock::duration interval, int deadline_ms, int gets_per_submit,
            bool whoami, const std::string& run_tag, ThreadResult* out) {
  std::mt19937_64 rng(static_cast<uint64_t>(index) * 7919 + static_cast<uint64_t>(level));
  std::vector<std::string> ids;
  const tern::v1::JobSpec spec = SmallSpec(level, index);
  long seq = 0;
  Clock::time_point due = start + interval * index / std::max(1, level);
  auto note = [&](const grpc::Status& s, const char* what) {
    if (out->first_error.empty())
      out->first_error = std::string(what) + ": " + std::to_string(s.error_code()) + " " + s.error_message();
  };
  while (Clock::now() < end) {
    if (interval != Clock::duration::zero()) {
      if (due >= end) break;
      std::this_thread::sleep_until(due);
    }
    if (whoami) {
      Call call(deadline_ms);
      tern::v1::WhoAmIResponse resp;
      auto t0 = interval == Clock::duration::zero() ? Clock::now() : due;
      due += interval;
      grpc::Status s = stub->WhoAmI(&call.ctx, tern::v1::WhoAmIRequest(), &resp);
      if (s.ok()) {
        out->submit.ms.push_back(Ms(Clock::now() - t0));
      } else {
        ++out->submit.errors;
        note(s, "WhoAmI");
      }
      continue;
    }
    {
      Call call(deadline_ms);
      tern::v1::SubmitJobRequest req;
      *req.mutable_spec() = spec;
      req.set_idempotency_key(run_tag + "-c" + std::to_string(level) + "-t" + std::to_string(index) +
                              "-" + std::to_string(seq++));
      tern::v1::SubmitJobResponse resp;
      auto t0 = interval == Clock::duration::zero() ? Clock::now() : due;
      due += interval;
      grpc::Status s = stub->SubmitJob(&call.ctx, req, &resp);
      auto dt = Clock::now() - t0;
      if (s.ok()) {
        out->submit.ms.push_back(Ms(dt));
        ids.push_back(resp.job().id());
      } else {
        ++out->submit.errors;
        note(s, "SubmitJob");
      }
    }
    for (int g = 0; g < gets_per_submit && !ids.empty() && Clock::now() < end; ++g) {
      Call call(deadline_ms);
      tern::v1::GetJobRequest req;
      req.set_job_id(ids[std::uniform_int_distribution<size_t>(0, ids.size() - 1)(rng)]);
      tern::v1::Job job;
      auto t0 = Clock::now();
      grpc::Status s = stub->GetJob(&call.ctx, req, &job);
      auto dt = Clock::now() - t0;
      if (s.ok()) {
        out->get.ms.push_back(Ms(dt));
      } else {
        ++out->get.errors;
        note(s, "GetJob");
      }
    }
  }
}

std::vector<int> ParseLevels(const std::string& s) {
  std::vector<int> levels;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    std::string tok = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (!tok.empty()) levels.push_back(std::stoi(tok));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return levels;
}

// Submits `count` jobs from `threads` threads; returns the errors.
long Fill(const std::vector<std::shared_ptr<grpc::Channel>>& chans, long count, int threads,
          int deadline_ms, const std::string& tag, std::string* first_error) {
  std::atomic<long> next{0}, errors{0};
  std::mutex mu;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      auto stub = tern::v1::JobService::NewStub(chans[static_cast<size_t>(t) % chans.size()]);
      const tern::v1::JobSpec spec = SmallSpec(0, t);
      for (long i = next++; i < count; i = next++) {
        Call call(deadline_ms);
        tern::v1::SubmitJobRequest req;
        *req.mutable_spec() = spec;
        req.set_idempotency_key(tag + "-" + std::to_string(i));
        tern::v1::SubmitJobResponse resp;
        grpc::Status s = stub->SubmitJob(&call.ctx, req, &resp);
        if (!s.ok()) {
          ++errors;
          std::lock_guard<std::mutex> lock(mu);
          if (first_error->empty()) *first_error = s.error_message();
        }
      }
    });
  }
  for (auto& t : pool) t.join();
  return errors.load();
}

// --submit-jobs: returns 0 when every submission was acknowledged.
int RunSubmitJobs(const std::string& server, long jobs, int threads, int deadline_ms,
                  double retry_seconds, const std::string& owner, const std::string& ack_path,
                  const std::string& run_tag) {
  std::FILE* acks = std::fopen(ack_path.c_str(), "a");
  if (acks == nullptr) {
    std::fprintf(stderr, "cannot open --ack-file %s\n", ack_path.c_str());
    return 2;
  }
  std::atomic<long> next{0}, acked{0}, retries{0}, gave_up{0};
  std::mutex mu;
  std::string last_error;
  std::vector<std::thread> pool;
  const auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      grpc::ChannelArguments args;
      args.SetInt("grpc.channel_id", t % 8);
      args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
      // --server A,B: several ternd sharing one store; calls follow the leader.
      auto addresses = tern::failover::ParseServerAddresses("--server", server);
      if (!addresses.ok()) {
        std::fprintf(stderr, "%s\n", addresses.status().ToString().c_str());
        return;
      }
      std::shared_ptr<tern::failover::ServerList> servers =
          *tern::failover::ServerList::Create(*addresses, [&](const std::string& address) {
            return tern::StatusOr<std::shared_ptr<grpc::Channel>>(
                grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
          });
      std::vector<std::unique_ptr<tern::v1::JobService::Stub>> stubs;
      for (size_t i = 0; i < servers->size(); ++i) {
        stubs.push_back(tern::v1::JobService::NewStub(servers->channel(i)));
      }
      const tern::v1::JobSpec spec = SmallSpec(0, t);
      for (long i = next++; i < jobs; i = next++) {
        const std::string key = run_tag + "-" + std::to_string(i);
        const auto give_up = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                std::chrono::duration<double>(retry_seconds));
        for (;;) {
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() +
                           std::chrono::milliseconds(deadline_ms));
          ctx.set_wait_for_ready(servers->size() == 1);  // across a restart of the server
          ctx.AddMetadata("x-tern-owner", owner);
          tern::v1::SubmitJobRequest req;
          *req.mutable_spec() = spec;
          req.set_idempotency_key(key);
          tern::v1::SubmitJobResponse resp;
          const tern::failover::ServerList::Target target = servers->Current();
          grpc::Status s = stubs[target.index]->SubmitJob(&ctx, req, &resp);
          const std::optional<std::chrono::milliseconds> failover_wait =
              s.ok() ? std::nullopt : servers->OnFailure(target, s);
          if (s.ok()) {
            std::lock_guard<std::mutex> lock(mu);
            std::fprintf(acks, "%s %s\n", resp.job().id().c_str(), key.c_str());
            std::fflush(acks);
            ++acked;
            break;
          }
          {
            std::lock_guard<std::mutex> lock(mu);
            last_error = std::to_string(s.error_code()) + " " + s.error_message();
          }
          if (Clock::now() > give_up) {
            ++gave_up;
            break;
          }
          ++retries;
          std::this_thread::sleep_for(failover_wait ? *failover_wait
                                                    : std::chrono::milliseconds(50));
        }
      }
    });
  }
  for (auto& t : pool) t.join();
  std::fclose(acks);
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("submitted %ld of %ld in %.1f s (%.0f/s), %ld retried calls, %ld given up%s%s\n",
              acked.load(), jobs, elapsed, static_cast<double>(acked.load()) / elapsed,
              retries.load(), gave_up.load(),
              last_error.empty() ? "" : "; last error: ", last_error.c_str());
  return acked.load() == jobs ? 0 : 2;
}

// The --queued-depths rows; returns 2 on errors.
int RunDepths(const std::vector<std::shared_ptr<grpc::Channel>>& chans,
              const std::vector<int>& depths, int samples, int deadline_ms,
              const std::string& run_tag) {
  std::printf(
      "\n| queued | SubmitJob p50 ms | SubmitJob p99 ms | GetJob p50 ms | ListJobs p50 ms "
      "| fill s | errors |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|\n");
  std::fflush(stdout);
  auto stub = tern::v1::JobService::NewStub(chans[0]);
  const tern::v1::JobSpec spec = SmallSpec(0, 0);
  long submitted = 0;  // by this run
  int rc = 0;
  for (int depth : depths) {
    std::string first_error;
    const auto fill_start = Clock::now();
    long errors = 0;
    if (depth > submitted) {
      errors += Fill(chans, depth - submitted, 64, deadline_ms,
                     run_tag + "-fill" + std::to_string(depth), &first_error);
      submitted = depth;
    }
    const double fill_s = std::chrono::duration<double>(Clock::now() - fill_start).count();
    std::vector<double> submit_ms, get_ms, list_ms;
    for (int i = 0; i < samples; ++i) {
      tern::v1::SubmitJobRequest req;
      *req.mutable_spec() = spec;
      req.set_idempotency_key(run_tag + "-depth" + std::to_string(depth) + "-" + std::to_string(i));
      tern::v1::SubmitJobResponse resp;
      Call submit(deadline_ms);
      auto t0 = Clock::now();
      grpc::Status s = stub->SubmitJob(&submit.ctx, req, &resp);
      submit_ms.push_back(Ms(Clock::now() - t0));
      if (!s.ok()) {
        ++errors;
        if (first_error.empty()) first_error = s.error_message();
        continue;
      }
      Call get(deadline_ms);
      tern::v1::GetJobRequest get_req;
      get_req.set_job_id(resp.job().id());
      tern::v1::Job job;
      t0 = Clock::now();
      s = stub->GetJob(&get.ctx, get_req, &job);
      get_ms.push_back(Ms(Clock::now() - t0));
      errors += !s.ok();
      Call list(deadline_ms);
      tern::v1::ListJobsRequest list_req;
      list_req.set_page_size(10);
      tern::v1::ListJobsResponse list_resp;
      t0 = Clock::now();
      s = stub->ListJobs(&list.ctx, list_req, &list_resp);
      list_ms.push_back(Ms(Clock::now() - t0));
      errors += !s.ok();
    }
    submitted += samples;
    std::printf("| %d | %.2f | %.2f | %.2f | %.2f | %.1f | %ld |\n", depth, Pct(submit_ms, 0.5),
                Pct(submit_ms, 0.99), Pct(get_ms, 0.5), Pct(list_ms, 0.5), fill_s, errors);
    std::fflush(stdout);
    if (errors != 0) {
      std::fprintf(stderr, "depth %d: %ld errors, first: %s\n", depth, errors, first_error.c_str());
      rc = 2;
    }
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"SubmitJob/GetJob load against a running ternd"};
  std::string server;
  std::string levels_flag = "1,16,128";
  double seconds = 5;
  int channels = 4;
  int deadline_ms = 10000;
  int gets_per_submit = 1;
  double rate = 0;
  std::string depths_flag;
  int depth_samples = 300;
  long submit_jobs = 0;
  std::string ack_file;
  std::string owner = "bench";
  double retry_seconds = 60;
  std::string rpc = "SubmitJob";
  app.add_option("--server", server,
                 "ternd's address, HOST:PORT (--submit-jobs: several, comma-separated, follows "
                 "the leader)")
      ->required();
  app.add_option("--concurrency", levels_flag, "comma-separated client thread counts");
  app.add_option("--seconds", seconds, "duration of each level");
  app.add_option("--channels", channels, "gRPC channels shared by the threads (round-robin)");
  app.add_option("--deadline-ms", deadline_ms, "deadline of every call");
  app.add_option("--get-per-submit", gets_per_submit, "GetJob calls after each SubmitJob");
  app.add_option("--rate", rate,
                 "open loop: timed calls per second offered by all of a level's threads "
                 "together, latency counted from when each was due (0: closed loop)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--rpc", rpc, "the timed call: SubmitJob, or WhoAmI (the floor of a unary call)")
      ->check(CLI::IsMember({"SubmitJob", "WhoAmI"}));
  app.add_option("--queued-depths", depths_flag,
                 "comma-separated queue lengths to time one client's SubmitJob at (ascending)");
  app.add_option("--depth-samples", depth_samples, "SubmitJob calls timed per depth")
      ->check(CLI::PositiveNumber);
  app.add_option("--submit-jobs", submit_jobs,
                 "load test: submit this many jobs in all (threads: the first --concurrency), "
                 "retrying each until acknowledged")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--ack-file", ack_file, "--submit-jobs: append \"ID KEY\" per acknowledged job");
  app.add_option("--owner", owner, "--submit-jobs: the x-tern-owner of the calls");
  app.add_option("--retry-seconds", retry_seconds,
                 "--submit-jobs: how long one submission is retried before giving up");
  CLI11_PARSE(app, argc, argv);

  const std::vector<int> levels = ParseLevels(levels_flag);
  const std::vector<int> depths = ParseLevels(depths_flag);
  if (!std::is_sorted(depths.begin(), depths.end()) ||
      std::any_of(depths.begin(), depths.end(), [](int d) { return d < 0; })) {
    std::fprintf(stderr, "--queued-depths: want ascending numbers >= 0\n");
    return 2;
  }
  const std::string run_tag =
      "bench-" + std::to_string(std::chrono::system_clock::now().time_since_epoch().count());

  if (submit_jobs > 0) {
    if (ack_file.empty() || levels.size() != 1) {
      std::fprintf(stderr, "--submit-jobs needs --ack-file and one --concurrency value\n");
      return 2;
    }
    return RunSubmitJobs(server, submit_jobs, levels[0], deadline_ms, retry_seconds, owner,
                         ack_file, run_tag);
  }

  std::vector<std::shared_ptr<grpc::Channel>> chans;
  for (int i = 0; i < std::max(1, channels); ++i) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.channel_id", i);  // distinct args: no subchannel sharing
    chans.push_back(grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args));
    if (!chans.back()->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5))) {
      std::fprintf(stderr, "cannot connect to %s\n", server.c_str());
      return 1;
    }
  }

  int rc = 0;
  if (!levels.empty()) {
    std::printf("| clients | RPC | calls | errors | req/s | p50 ms | p99 ms | max ms |\n");
    std::printf("|---:|---|---:|---:|---:|---:|---:|---:|\n");
    std::fflush(stdout);
  }
  for (int level : levels) {
    std::vector<std::unique_ptr<tern::v1::JobService::Stub>> stubs;
    for (int i = 0; i < level; ++i)
      stubs.push_back(tern::v1::JobService::NewStub(chans[static_cast<size_t>(i) % chans.size()]));
    std::vector<ThreadResult> results(static_cast<size_t>(level));
    std::vector<std::thread> threads;
    const auto start = Clock::now();
    const auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    const Clock::duration interval =
        rate > 0 ? std::chrono::duration_cast<Clock::duration>(
                       std::chrono::duration<double>(static_cast<double>(level) / rate))
                 : Clock::duration::zero();
    for (int i = 0; i < level; ++i)
      threads.emplace_back(Worker, stubs[static_cast<size_t>(i)].get(), level, i, start, end,
                           interval, deadline_ms, gets_per_submit, rpc == "WhoAmI", run_tag,
                           &results[static_cast<size_t>(i)]);
    for (auto& t : threads) t.join();
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();

    Samples submit, get;
    std::string first_error;
    for (auto& r : results) {
      submit.ms.insert(submit.ms.end(), r.submit.ms.begin(), r.submit.ms.end());
      get.ms.insert(get.ms.end(), r.get.ms.begin(), r.get.ms.end());
      submit.errors += r.submit.errors;
      get.errors += r.get.errors;
      if (first_error.empty()) first_error = r.first_error;
    }
    for (auto* p : {&submit, &get}) {
      if (p == &get && rpc == "WhoAmI") continue;
      const char* name = p == &submit ? rpc.c_str() : "GetJob";
      double mx = p->ms.empty() ? 0 : *std::max_element(p->ms.begin(), p->ms.end());
      double p50 = Pct(p->ms, 0.50), p99 = Pct(p->ms, 0.99);
      std::printf("| %d | %s | %zu | %ld | %.0f | %.2f | %.2f | %.2f |\n", level, name, p->ms.size(),
                  p->errors, static_cast<double>(p->ms.size()) / elapsed, p50, p99, mx);
    }
    std::fflush(stdout);
    if (!first_error.empty()) {
      std::fprintf(stderr, "level %d: first error: %s\n", level, first_error.c_str());
      rc = 2;
    }
  }
  if (!depths.empty()) {
    rc = std::max(rc, RunDepths(chans, depths, depth_samples, deadline_ms, run_tag));
  }
  return rc;
}
