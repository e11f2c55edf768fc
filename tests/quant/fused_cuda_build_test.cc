// The fused projection's CUDA kernels (quant/cuda/fused_projection.h) link into a plain C++
// program and were compiled for the GPU machines' architecture (H100/H200: sm_90). Needs no
// device: on a machine without one, the library answers (0 devices, a launch error), it does
// not crash. The kernels' numbers are checked on a GPU by tests/gpu/fused_projection_parity_test.
#include <gtest/gtest.h>

#include "quant/cuda/fused_projection.h"

namespace tern::quant::fused {
namespace {

TEST(FusedCudaBuildTest, KernelsLinkAndTargetTheGpuMachines) {
  EXPECT_NE(CompiledArchitectures().find("sm_90"), std::string::npos) << CompiledArchitectures();
  EXPECT_GE(DeviceCount(), 0);
}

TEST(FusedCudaBuildTest, WithoutADeviceALaunchFailsWithCudasMessage) {
  if (DeviceCount() > 0) GTEST_SKIP() << "a CUDA device is present: nothing to check here";
  Layout layout;
  layout.units = layout.tiles = 1;
  const LaunchStatus status = ClearWorkspace(layout, nullptr, nullptr);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message.find("cudaMemsetAsync"), std::string::npos) << status.message;
}

}  // namespace
}  // namespace tern::quant::fused
