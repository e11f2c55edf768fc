#include "worker/trainer/host_memory.h"

#include <cstdlib>
#include <cstring>
#include <initializer_list>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace tern::trainer {

HostMemoryTuning RetainFreedHostMemory() {
#ifdef __GLIBC__
  for (const char* name : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"}) {
    if (std::getenv(name) != nullptr) return HostMemoryTuning::kLeftToEnvironment;
  }
  const char* opt_out = std::getenv("TERN_RETAIN_HOST_MEMORY");
  if (opt_out != nullptr && std::strcmp(opt_out, "0") == 0) {
    return HostMemoryTuning::kLeftToEnvironment;
  }
  // Both fix their values (glibc stops adapting the thresholds once either is set).
  if (mallopt(M_MMAP_THRESHOLD, static_cast<int>(kHeapBlockLimit)) == 1 &&
      mallopt(M_TRIM_THRESHOLD, static_cast<int>(kRetainedHeapTop)) == 1) {
    return HostMemoryTuning::kApplied;
  }
#endif
  return HostMemoryTuning::kUnsupported;
}

}  // namespace tern::trainer
