#include "server/progress_cache.h"

#include <algorithm>
#include <vector>

#include "common/logging.h"
#include "trainer_protocol/trainer_events.h"

namespace tern::server {
namespace {

using trainer::ParseTrainerLine;
using trainer::TrainerEventKind;
using trainer::TrainerLine;

constexpr int64_t kBatch = 64;

void Touch(ProgressCache::Entry* entry, scheduler::TimePoint time) {
  if (!entry->updated || *entry->updated < time) entry->updated = time;
}

}  // namespace

ProgressCache::ProgressCache(const scheduler::Scheduler* scheduler)
    : scheduler_(scheduler) {}

void ProgressCache::RecordProgress(scheduler::JobId id,
                                   const v1::Progress& progress,
                                   scheduler::TimePoint time) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry& entry = slots_[id].entry;
  entry.progress = progress;
  Touch(&entry, time);
}

void ProgressCache::RecordMetrics(scheduler::JobId id,
                                  const v1::EpochMetrics& metrics,
                                  scheduler::TimePoint time) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry& entry = slots_[id].entry;
  entry.metrics = metrics;
  Touch(&entry, time);
}

ProgressCache::Entry ProgressCache::Get(const scheduler::Job& job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = slots_.find(job.id);
    if (it != slots_.end() && it->second.filled) return it->second.entry;
  }
  // Read without the lock; samples recorded meanwhile are newer and win.
  const Entry from_log = ReadLog(job);
  std::lock_guard<std::mutex> lock(mu_);
  Slot& slot = slots_[job.id];
  if (!slot.entry.progress) slot.entry.progress = from_log.progress;
  if (!slot.entry.metrics) slot.entry.metrics = from_log.metrics;
  if (from_log.updated) Touch(&slot.entry, *from_log.updated);
  slot.filled = true;
  return slot.entry;
}

ProgressCache::Entry ProgressCache::ReadLog(const scheduler::Job& job) const {
  Entry entry;
  // Only state changes so far (e.g. a new job): nothing to read.
  if (static_cast<int64_t>(job.history.size()) >= job.last_event_seq) {
    return entry;
  }
  int64_t end = job.last_event_seq;  // read (after, end] backwards
  while (end > 0 && (!entry.progress || !entry.metrics)) {
    const int64_t after = std::max<int64_t>(0, end - kBatch);
    StatusOr<std::vector<scheduler::JobEvent>> events =
        scheduler_->ReadEvents(job.id, after, static_cast<int>(end - after));
    if (!events.ok()) {
      TERN_LOG(WARNING) << "job " << job.id
                        << ": cannot read progress from the event log: "
                        << events.status();
      return entry;
    }
    for (auto it = events->rbegin(); it != events->rend(); ++it) {
      if (it->seq > end || it->type != scheduler::JobEventType::kProgress ||
          it->reason == scheduler::reason::kResult) {
        continue;
      }
      StatusOr<TrainerLine> line = ParseTrainerLine(it->payload);
      if (!line.ok()) continue;
      if (line->kind == TrainerEventKind::kProgress && !entry.progress) {
        entry.progress = line->progress;
        Touch(&entry, it->time);
      } else if (line->kind == TrainerEventKind::kEpochEnd && !entry.metrics) {
        entry.metrics = line->epoch_end.metrics();
        Touch(&entry, it->time);
      }
    }
    end = after;
  }
  return entry;
}

void ProgressCache::Forget(scheduler::JobId id) {
  std::lock_guard<std::mutex> lock(mu_);
  slots_.erase(id);
}

}  // namespace tern::server
