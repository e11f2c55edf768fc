// Per-owner quotas: how many slots of each device kind one owner's jobs may
// hold at once, and how many unfinished jobs one owner may have. ternd reads
// them from --quota-file (re-read when it changes) and hands them to
// Scheduler::SetQuotas.
//
// File format, one owner per line ("#" starts a comment, blank lines are
// skipped):
//   <owner> [cpu=N] [cuda=N] [jobs=N] [priority=P]
//   *       [cpu=N] [cuda=N] [jobs=N] [priority=P]
// `owner` is a job owner's name (a client certificate's or token's name, or
// the x-tern-owner claim); `*` is every owner without a line of its own. A
// limit left out is unlimited, and an owner with neither a line nor a `*`
// line has no limits. cpu/cuda: slots of that kind held by the owner's
// ADMITTED and RUNNING jobs (0: the kind is closed to the owner); jobs:
// QUEUED, ADMITTED, RUNNING and RESTARTING jobs together. N is 0..1000000.
// priority: the highest JobSpec.priority the owner may submit with, P in
// [-1000, 1000] (without it, priority is open to everyone: its range).
//
// What a quota does (scheduler/scheduler.h has the details):
// - SubmitJob refuses a job with more ranks than the owner's slot quota of
//   its kind (FAILED_PRECONDITION: it could never start) and a job beyond the
//   owner's `jobs` limit (RESOURCE_EXHAUSTED), and one above the owner's
//   `priority` (PERMISSION_DENIED). A retry with a known idempotency key
//   still returns its job.
// - Admission skips a queued job whose ranks would take its owner past the
//   slot quota; it waits ("... owner alice holds 6 of the 8 cuda slots her
//   quota allows") without holding back other owners' jobs.
// - Lowering a quota stops nothing that runs: it applies to admissions.
#ifndef TERN_SCHEDULER_QUOTA_H_
#define TERN_SCHEDULER_QUOTA_H_

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace tern::scheduler {

inline constexpr int kMaxQuotaValue = 1000000;
inline constexpr int kQuotaPriorityBound = 1000;  // priority=P: |P| <= this
inline constexpr char kDefaultQuotaOwner[] = "*";

struct OwnerQuota {
  std::string line_owner;                // the line it came from: a name or "*"
  std::map<std::string, int> max_slots;  // by device kind; a kind absent: unlimited
  std::optional<int> max_jobs;           // unfinished jobs; nullopt: unlimited
  std::optional<int> max_priority;       // highest priority; nullopt: any

  // The limit on `kind` slots, nullopt when unlimited.
  std::optional<int> SlotLimit(const std::string& kind) const;
};

class QuotaTable {
 public:
  QuotaTable() = default;  // no quotas: every owner unlimited

  // INVALID_ARGUMENT "<path>:<line>: ..." for a bad line (an unknown key, a
  // bad number, a bad owner name, an owner listed twice).
  static StatusOr<QuotaTable> Parse(std::string_view text, const std::string& path);

  // The quota that applies to `owner`: its own line, else the "*" line,
  // else nullptr (unlimited). Valid while the table lives.
  const OwnerQuota* For(const std::string& owner) const;
  size_t size() const { return lines_.size(); }  // lines, "*" included

 private:
  std::map<std::string, OwnerQuota> lines_;  // by owner, "*" included
};

}  // namespace tern::scheduler

#endif  // TERN_SCHEDULER_QUOTA_H_
