#include "scheduler/quota.h"

#include <utility>

#include "common/config_text.h"
#include "scheduler/job.h"

namespace tern::scheduler {
namespace {

// A decimal 0..kMaxQuotaValue, nothing else (no sign, no spaces, no "1e3").
std::optional<int> ParseQuotaValue(const std::string& text) {
  if (text.empty() || text.size() > 7) return std::nullopt;
  int value = 0;
  for (const char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');
  }
  if (value > kMaxQuotaValue) return std::nullopt;
  return value;
}

}  // namespace

std::optional<int> OwnerQuota::SlotLimit(const std::string& kind) const {
  auto it = max_slots.find(kind);
  if (it == max_slots.end()) return std::nullopt;
  return it->second;
}

StatusOr<QuotaTable> QuotaTable::Parse(std::string_view text, const std::string& path) {
  QuotaTable table;
  for (const ConfigLine& line : SplitConfigLines(text)) {
    const std::string where = path + ":" + std::to_string(line.number) + ": ";
    const std::string& owner = line.words[0];
    if (owner != kDefaultQuotaOwner && !IsIdentityName(owner)) {
      return InvalidArgumentError(where + "must start with an owner name (1..128 printable "
                                  "characters without spaces) or *");
    }
    if (owner.find('=') != std::string::npos) {
      return InvalidArgumentError(where + "must start with an owner name or *, not \"" + owner +
                                  "\" (limits follow the name: alice cuda=8 jobs=20)");
    }
    OwnerQuota quota;
    quota.line_owner = owner;
    for (size_t i = 1; i < line.words.size(); ++i) {
      const std::string& word = line.words[i];
      const size_t equals = word.find('=');
      const std::string key = word.substr(0, equals);
      if (equals == std::string::npos ||
          (key != "jobs" && key != "priority" && !IsKnownDeviceKind(key))) {
        return InvalidArgumentError(where + "\"" + word +
                                    "\": expected cpu=N, cuda=N, jobs=N or priority=P");
      }
      if (key == "priority") {
        const std::string text = word.substr(equals + 1);
        const bool negative = !text.empty() && text[0] == '-';
        const std::optional<int> magnitude = ParseQuotaValue(negative ? text.substr(1) : text);
        if (!magnitude || *magnitude > kQuotaPriorityBound) {
          return InvalidArgumentError(where + "\"" + word + "\": the priority must be a whole "
                                      "number in [-1000, 1000]");
        }
        if (quota.max_priority) return InvalidArgumentError(where + "priority is given twice");
        quota.max_priority = negative ? -*magnitude : *magnitude;
        continue;
      }
      const std::optional<int> value = ParseQuotaValue(word.substr(equals + 1));
      if (!value) {
        return InvalidArgumentError(where + "\"" + word + "\": the limit must be a whole number "
                                    "in [0, " + std::to_string(kMaxQuotaValue) + "]");
      }
      const bool repeated = key == "jobs" ? quota.max_jobs.has_value()
                                          : quota.max_slots.count(key) != 0;
      if (repeated) return InvalidArgumentError(where + key + " is given twice");
      if (key == "jobs") {
        quota.max_jobs = *value;
      } else {
        quota.max_slots[key] = *value;
      }
    }
    if (!table.lines_.emplace(owner, std::move(quota)).second) {
      return InvalidArgumentError(where + owner + " has a line already");
    }
  }
  return table;
}

const OwnerQuota* QuotaTable::For(const std::string& owner) const {
  auto it = lines_.find(owner);
  if (it == lines_.end()) it = lines_.find(kDefaultQuotaOwner);
  return it == lines_.end() ? nullptr : &it->second;
}

}  // namespace tern::scheduler
