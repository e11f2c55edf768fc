#include "worker/trainer/checkpoint_layout.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <system_error>

namespace tern::trainer {

namespace fs = std::filesystem;

std::string StepDirName(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%010lld", static_cast<long long>(step));
  return name;
}

std::string RankFileName(int rank) { return "rank-" + std::to_string(rank) + ".pt"; }

int64_t ParseStepDirName(const std::string& name) {
  constexpr size_t kPrefix = 5;  // "step-"
  if (name.size() <= kPrefix || name.compare(0, kPrefix, "step-") != 0) return -1;
  if (name.size() - kPrefix > 18) return -1;  // would overflow int64_t
  int64_t step = 0;
  for (size_t i = kPrefix; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

int64_t NewestCommittedStep(const std::string& dir) {
  int64_t best = -1;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const int64_t step = ParseStepDirName(it->path().filename().string());
    if (step < 0) continue;
    std::error_code exists_ec;
    if (!fs::exists(it->path() / kCommittedMarker, exists_ec)) continue;
    best = std::max(best, step);
  }
  return best;
}

}  // namespace tern::trainer
