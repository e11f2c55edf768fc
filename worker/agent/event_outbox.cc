#include "worker/agent/event_outbox.h"

#include <algorithm>
#include <iterator>
#include <utility>

namespace tern::agent {

void TrimPending(std::deque<v1::TrainerEvent>* pending) {
  while (pending->size() > kMaxPendingEvents) {
    auto victim = std::find_if(pending->begin(), pending->end(), [](const auto& e) {
      return e.has_log() || e.has_progress() || e.parsed_case() == v1::TrainerEvent::PARSED_NOT_SET;
    });
    pending->erase(victim == pending->end() ? pending->begin() : victim);
  }
}

EventOutbox::EventOutbox(FlushFn flush, std::chrono::milliseconds retry_after)
    : flush_(std::move(flush)), retry_after_(retry_after), thread_([this] { Run(); }) {}

EventOutbox::~EventOutbox() {
  Close(Clock::now(), [] { return true; });
}

void EventOutbox::Add(std::deque<v1::TrainerEvent>* events, Clock::time_point due) {
  if (events->empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  std::move(events->begin(), events->end(), std::back_inserter(pending_));
  events->clear();
  TrimPending(&pending_);
  if (pending_.size() >= kMaxEventsPerReport) due = Clock::now();
  if (due < due_) {
    due_ = due;
    cv_.notify_all();
  }
}

size_t EventOutbox::Close(Clock::time_point give_up, const std::function<bool()>& stop) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_) return 0;
    closing_ = true;
    give_up_ = give_up;
    stop_ = stop;
    due_ = Clock::now();  // the rest goes now
    cv_.notify_all();
  }
  thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_;
}

void EventOutbox::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (pending_.empty()) {
      if (closing_) return;
      due_ = Clock::time_point::max();
      cv_.wait(lock, [&] { return closing_ || !pending_.empty(); });
      continue;
    }
    if (Clock::now() < due_) {
      if (due_ == Clock::time_point::max()) {
        cv_.wait(lock);
      } else {
        cv_.wait_until(lock, due_);
      }
      continue;
    }
    std::deque<v1::TrainerEvent> batch;
    batch.swap(pending_);
    due_ = Clock::time_point::max();
    lock.unlock();
    const bool sent = flush_(&batch);
    lock.lock();
    if (!batch.empty()) {  // unsent: back in front of what came meanwhile
      pending_.insert(pending_.begin(), std::make_move_iterator(batch.begin()),
                      std::make_move_iterator(batch.end()));
      TrimPending(&pending_);
    }
    if (closing_ && !pending_.empty() && (!sent || Clock::now() >= give_up_) &&
        (Clock::now() >= give_up_ || stop_())) {
      dropped_ = pending_.size();
      pending_.clear();
      return;
    }
    if (!sent) due_ = std::min(due_, Clock::now() + retry_after_);
    if (closing_ && sent) due_ = Clock::now();
  }
}

}  // namespace tern::agent
