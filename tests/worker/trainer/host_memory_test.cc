// RetainFreedHostMemory (worker/trainer/host_memory.h): after it, a large freed block stays in
// the process's heap for the next allocation; without it (the control, in a child process
// that never called it) glibc hands the block back to the kernel.
#include "worker/trainer/host_memory.h"

#include <gtest/gtest.h>
#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace tern::trainer {
namespace {

constexpr size_t kBlock = size_t{20} << 20;  // a ResNet-18 layer's gradient is 9.4 MiB

// Allocates, touches and frees kBlock; returns the free bytes the heap then holds.
size_t FreeBytesAfterABlock() {
  void* block = std::malloc(kBlock);
  if (block == nullptr) return 0;
  std::memset(block, 1, kBlock);
  std::free(block);
  return mallinfo2().fordblks;
}

// Exit status 0 when the child's heap did NOT keep the block (malloc's defaults).
int ControlInAChild() {
  const pid_t pid = fork();
  if (pid == 0) _exit(FreeBytesAfterABlock() < kBlock ? 0 : 1);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(HostMemoryTest, FreedBlocksStayInTheHeap) {
  for (const char* name : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"}) {
    if (std::getenv(name) != nullptr) GTEST_SKIP() << name << " is set: malloc is tuned outside";
  }
  ASSERT_EQ(ControlInAChild(), 0) << "malloc kept a freed 20 MiB block without being told to";
  ASSERT_EQ(RetainFreedHostMemory(), HostMemoryTuning::kApplied);
  EXPECT_GE(FreeBytesAfterABlock(), kBlock);
}

TEST(HostMemoryTest, LeavesMallocToTheEnvironment) {
  ASSERT_EQ(setenv("MALLOC_TRIM_THRESHOLD_", "1048576", 0), 0);
  const bool ours = std::strcmp(std::getenv("MALLOC_TRIM_THRESHOLD_"), "1048576") == 0;
  EXPECT_EQ(RetainFreedHostMemory(), HostMemoryTuning::kLeftToEnvironment);
  if (ours) unsetenv("MALLOC_TRIM_THRESHOLD_");
  ASSERT_EQ(setenv("TERN_RETAIN_HOST_MEMORY", "0", 1), 0);
  EXPECT_EQ(RetainFreedHostMemory(), HostMemoryTuning::kLeftToEnvironment);
  unsetenv("TERN_RETAIN_HOST_MEMORY");
}

}  // namespace
}  // namespace tern::trainer
