// RetainFreedHostMemory: makes glibc's malloc keep the memory a training step frees for the
// next step instead of handing it back to the kernel. LibTorch has no caching allocator on the
// CPU: every step allocates and frees the same large buffers (gradients, optimizer
// temporaries, activations). By default glibc maps blocks above a dynamic threshold with mmap
// and unmaps them on free, and trims the heap's top beyond 128 KiB, so the next step faults
// every page in again (on the 2-core VM, ResNet-18 at 32×32 spent about half of each FP step
// in page faults: docs/BENCHMARKS.md). Blocks up to 32 MiB then come from the heap, and up to
// 1 GiB of free memory at its top stays mapped.
//
// Call it once, first thing in main(), before other threads start. It leaves malloc alone
// where the environment already tunes it (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
// GLIBC_TUNABLES) or TERN_RETAIN_HOST_MEMORY=0 is set, and on a C library other than glibc.
#ifndef TERN_WORKER_TRAINER_HOST_MEMORY_H_
#define TERN_WORKER_TRAINER_HOST_MEMORY_H_

#include <cstddef>

namespace tern::trainer {

enum class HostMemoryTuning { kApplied, kLeftToEnvironment, kUnsupported };

inline constexpr size_t kHeapBlockLimit = size_t{32} << 20;  // glibc's largest mmap threshold
inline constexpr size_t kRetainedHeapTop = size_t{1} << 30;

HostMemoryTuning RetainFreedHostMemory();

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_HOST_MEMORY_H_
