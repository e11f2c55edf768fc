#include "server/watch_hub.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "common/error_reasons.h"
#include "common/logging.h"
#include "common/utf8.h"
#include "server/job_convert.h"
#include "server/rpc.h"

namespace tern::server {
namespace {

constexpr int kEventBatch = 500;

// Ends at once with a status; frees itself when gRPC is done with it.
class RefusedStream final : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  RefusedStream(ServerState* state, const Status& status) : state_(state), code_(status.code()) {
    internal::LogRpcFailure("WatchJob", status);
    Finish(ToGrpcStatus(status));
  }
  void OnDone() override {
    if (state_->metrics != nullptr) state_->metrics->ObserveRpc("WatchJob", code_, 0);
    delete this;
  }

 private:
  ServerState* const state_;
  const StatusCode code_;
};

}  // namespace

// One open stream. The hub and the stream itself (until OnDone) hold it.
// Protocol: at most one write in flight (writing_); Finish exactly once
// (done_), after which nothing else is started; both decided under mu_ and
// carried out after releasing it.
class WatchStream final : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  WatchStream(WatchHub* hub, const v1::WatchJobRequest& request, const scheduler::Job& job,
              std::string owner)
      : hub_(hub),
        owner_(std::move(owner)),
        job_id_(job.id),
        history_only_(request.history_only()),
        include_logs_(request.include_logs()),
        history_end_(job.last_event_seq),
        start_(std::chrono::steady_clock::now()) {
    if (request.from_sequence() > 1) {  // 0 or 1: the whole history
      after_ = static_cast<int64_t>(std::min<uint64_t>(
          request.from_sequence() - 1, std::numeric_limits<int64_t>::max()));
    }
  }

  void Start(std::shared_ptr<WatchStream> self) {
    self_ = std::move(self);
    Pump();
  }

  const std::string& owner() const { return owner_; }

  // Writes the next event if none is in flight, or ends the stream when
  // there is nothing more to send. Any thread, any time before OnDone.
  void Pump() {
    std::unique_lock<std::mutex> lock(mu_);
    if (done_ || writing_) return;
    Status end = OkStatus();
    bool finish = false;
    if (cancelled_) {
      end = CancelledError("WatchJob: the client went away");
      finish = true;
    } else if (hub_->state_->leadership_lost.load()) {
      end = LeadershipLostError();
      finish = true;
    } else if (hub_->state_->shutting_down.load() || hub_->stop_streams_.load()) {
      end = ShuttingDownError();
      finish = true;
    } else {
      if (pending_.empty() && !ended_) {
        Status refill = RefillLocked();
        if (!refill.ok()) {
          end = refill;
          finish = true;
        }
      }
      if (!finish && !pending_.empty()) {
        writing_ = true;
        const v1::JobEvent* next = &pending_.front();  // stable until OnWriteDone pops it
        lock.unlock();
        StartWrite(next);
        return;
      }
      finish = finish || ended_;
    }
    if (!finish) return;  // idle until the hub wakes it
    done_ = true;
    code_ = end.code();
    lock.unlock();
    if (!end.ok()) internal::LogRpcFailure("WatchJob", end);
    Finish(ToGrpcStatus(end));
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      pending_.pop_front();
      if (!ok) cancelled_ = true;  // the stream broke: the client is gone
    }
    Pump();
  }

  void OnCancel() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
    }
    Pump();  // a write in flight completes (not ok) and pumps then
  }

  void OnDone() override {
    ServerState* state = hub_->state_;
    if (state->metrics != nullptr) {
      state->metrics->ObserveRpc(
          "WatchJob", code_,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
    }
    hub_->Remove(this);
    self_.reset();  // may delete this: touch nothing after
  }

 private:
  // Appends the next events to pending_; sets ended_ when the stream has
  // delivered all it will. mu_ held.
  Status RefillLocked() {
    scheduler::Scheduler& scheduler = *hub_->state_->scheduler;
    TERN_ASSIGN_OR_RETURN(const scheduler::Scheduler::EventHead head,
                          scheduler.EventHeadOf(job_id_));
    if (history_only_ && after_ >= history_end_) {
      ended_ = true;
      return OkStatus();
    }
    if (head.last_event_seq <= after_) {
      // The terminal change (and SUCCEEDED's `finished`) is the last event.
      ended_ = scheduler::IsTerminal(head.state);
      return OkStatus();
    }
    TERN_ASSIGN_OR_RETURN(std::vector<scheduler::JobEvent> events,
                          scheduler.ReadEvents(job_id_, after_, kEventBatch));
    if (events.empty()) return OkStatus();
    // A fresh copy: its history covers these events (attempts, result).
    TERN_ASSIGN_OR_RETURN(const scheduler::Job job, scheduler.GetJob(job_id_));
    for (const scheduler::JobEvent& event : events) {
      if (history_only_ && event.seq > history_end_) {
        ended_ = true;
        break;
      }
      after_ = event.seq;
      std::optional<v1::JobEvent> out = ToProtoEvent(job, event, include_logs_);
      if (out) pending_.push_back(*std::move(out));
    }
    return OkStatus();
  }

  WatchHub* const hub_;
  const std::string owner_;
  const scheduler::JobId job_id_;
  const bool history_only_;
  const bool include_logs_;
  const int64_t history_end_;  // the newest event when the call arrived
  const std::chrono::steady_clock::time_point start_;
  std::shared_ptr<WatchStream> self_;  // until OnDone

  std::mutex mu_;
  int64_t after_ = 0;  // the last event read from the scheduler
  std::deque<v1::JobEvent> pending_;  // front: the write in flight, if any
  bool writing_ = false;
  bool cancelled_ = false;
  bool ended_ = false;  // nothing more to read: finish once pending_ is sent
  bool done_ = false;   // Finish called
  StatusCode code_ = StatusCode::kOk;
};

WatchHub::WatchHub(ServerState* state, int max_streams_per_caller)
    : state_(state), max_streams_per_caller_(max_streams_per_caller) {
  thread_ = std::thread([this] { Loop(); });
}

WatchHub::~WatchHub() { Stop(); }

grpc::ServerWriteReactor<v1::JobEvent>* WatchHub::Open(const v1::WatchJobRequest& request,
                                                       const scheduler::Job& job,
                                                       const std::string& owner) {
  auto stream = std::make_shared<WatchStream>(this, request, job, owner);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return Refuse(ShuttingDownError());
    int& count = per_owner_[owner];
    if (max_streams_per_caller_ > 0 && count >= max_streams_per_caller_) {
      return Refuse(Status(StatusCode::kResourceExhausted,
                           "caller " + Quoted(owner) + " already has " + std::to_string(count) +
                               " open WatchJob streams, the most ternd allows one caller "
                               "(--max-watch-streams-per-caller); close some")
                        .WithReason(error_reason::kWatchStreamLimit)
                        .WithQuotaViolation("owner:" + owner,
                                            "at most " + std::to_string(max_streams_per_caller_) +
                                                " open WatchJob streams per caller")
                        .WithRetryDelay(std::chrono::seconds(5)));
    }
    ++count;
    streams_[stream.get()] = stream;
  }
  WatchStream* raw = stream.get();
  raw->Start(std::move(stream));
  return raw;
}

grpc::ServerWriteReactor<v1::JobEvent>* WatchHub::Refuse(const Status& status) {
  return new RefusedStream(state_, status);
}

void WatchHub::Remove(WatchStream* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = streams_.find(stream);
  if (it == streams_.end()) return;
  auto owner = per_owner_.find(stream->owner());
  if (owner != per_owner_.end() && --owner->second <= 0) per_owner_.erase(owner);
  streams_.erase(it);
}

size_t WatchHub::open_streams() const {
  std::lock_guard<std::mutex> lock(mu_);
  return streams_.size();
}

void WatchHub::Loop() {
  uint64_t seen = 0;
  for (;;) {
    // Wakes on every append of events, or after a long-poll round to notice
    // a shutdown.
    seen = state_->scheduler->WaitForEvents(seen, state_->long_poll);
    std::vector<std::shared_ptr<WatchStream>> streams;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      streams.reserve(streams_.size());
      for (const auto& [raw, stream] : streams_) streams.push_back(stream);
    }
    for (const std::shared_ptr<WatchStream>& stream : streams) stream->Pump();
  }
}

void WatchHub::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  stop_streams_ = true;
  if (thread_.joinable()) thread_.join();
  // Every stream ends now (UNAVAILABLE), or when its write in flight does.
  std::vector<std::shared_ptr<WatchStream>> streams;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [raw, stream] : streams_) streams.push_back(stream);
  }
  for (const std::shared_ptr<WatchStream>& stream : streams) stream->Pump();
}

}  // namespace tern::server
