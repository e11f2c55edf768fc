// Fuzz target: ternd's --quota-file (scheduler::QuotaTable::Parse).
// Property: nothing throws or crashes; a table that parses gives every limit
// in [0, kMaxQuotaValue] (priorities in [-1000, 1000]), and the "*" line, when there is one, applies to an
// owner without a line of its own.
#include <string>
#include <vector>

#include "common/check.h"
#include "fuzz/fuzz_target.h"
#include "scheduler/quota.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using tern::scheduler::QuotaTable;
  tern::StatusOr<QuotaTable> table =
      QuotaTable::Parse(tern::fuzz::AsText(data, size), "quotas");
  if (!table.ok()) return 0;
  for (const char* owner : {"alice", "bob", "*", "no-such-owner-\x7e"}) {
    const tern::scheduler::OwnerQuota* quota = table->For(owner);
    if (quota == nullptr) continue;
    for (const auto& [kind, limit] : quota->max_slots) {
      TERN_CHECK(limit >= 0 && limit <= tern::scheduler::kMaxQuotaValue) << kind << "=" << limit;
    }
    if (quota->max_jobs) {
      TERN_CHECK(*quota->max_jobs >= 0 && *quota->max_jobs <= tern::scheduler::kMaxQuotaValue);
    }
    if (quota->max_priority) {
      TERN_CHECK(*quota->max_priority >= -tern::scheduler::kQuotaPriorityBound &&
                 *quota->max_priority <= tern::scheduler::kQuotaPriorityBound);
    }
  }
  const tern::scheduler::OwnerQuota* unlisted = table->For("no-such-owner-\x7e");
  const tern::scheduler::OwnerQuota* fallback = table->For("*");
  TERN_CHECK(unlisted == nullptr || unlisted == fallback);
  return 0;
}

std::vector<std::string> TernFuzzSeeds() {
  return {
      "# team quotas\nalice cuda=8 cpu=32 jobs=20\n* cuda=2 jobs=5\n",
      "bob\r\n\r\ncarol\tcpu=0\t# closed\n",
      "alice cuda=1000000 jobs=0 priority=-1000\n",
  };
}
