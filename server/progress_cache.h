// ProgressCache: the latest progress sample and epoch metrics of each job,
// which tern.v1.Job shows (progress, latest_metrics) but the scheduler keeps
// only inside its event log.
//
// WorkerService records samples as agents relay them (Record*). Get() returns
// a job's entry; the first Get() of a job in this process (e.g. after a ternd
// restart) also reads the newest events of the job's log, backwards in small
// batches, to fill whatever live reports have not set yet.
// Thread-safe; Get() may block on the store while filling.
#ifndef TERN_SERVER_PROGRESS_CACHE_H_
#define TERN_SERVER_PROGRESS_CACHE_H_

#include <map>
#include <mutex>
#include <optional>

#include "scheduler/clock.h"
#include "scheduler/job.h"
#include "scheduler/scheduler.h"
#include "tern/v1/job.pb.h"

namespace tern::server {

class ProgressCache {
 public:
  struct Entry {
    std::optional<v1::Progress> progress;
    std::optional<v1::EpochMetrics> metrics;
    std::optional<scheduler::TimePoint> updated;  // newest sample's time
  };

  // `scheduler` is not owned and must outlive the cache.
  explicit ProgressCache(const scheduler::Scheduler* scheduler);

  void RecordProgress(scheduler::JobId id, const v1::Progress& progress,
                      scheduler::TimePoint time);
  void RecordMetrics(scheduler::JobId id, const v1::EpochMetrics& metrics,
                     scheduler::TimePoint time);
  // The job's entry (fields unset when no sample exists). A store error while
  // filling is logged and leaves the fields unset.
  Entry Get(const scheduler::Job& job);
  // Drops a deleted job's entry.
  void Forget(scheduler::JobId id);

 private:
  struct Slot {
    Entry entry;
    bool filled = false;  // the log has been read
  };
  Entry ReadLog(const scheduler::Job& job) const;

  const scheduler::Scheduler* const scheduler_;
  std::mutex mu_;
  std::map<scheduler::JobId, Slot> slots_;
};

}  // namespace tern::server

#endif  // TERN_SERVER_PROGRESS_CACHE_H_
