// Bf16Autocast: bf16 autocast on one device type (CUDA or CPU) for the scope
// of a forward pass, over the autocast API of both LibTorch 1.13 and 2.x. The
// trainer runs its CUDA forwards under it (TernaryModel::set_forward_dtype then
// hands them bf16 weights); tests run the CPU one. Not thread-safe (autocast
// state is per thread); a no-op when constructed with `enabled` false.
#ifndef TERN_QUANT_AUTOCAST_H_
#define TERN_QUANT_AUTOCAST_H_

#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>
#include <torch/version.h>

namespace tern::quant {

class Bf16Autocast {
 public:
  // `device`: at::kCUDA or at::kCPU.
  Bf16Autocast(at::DeviceType device, bool enabled) : device_(device), enabled_(enabled) {
    if (!enabled_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_dtype(device_, at::kBFloat16);
    at::autocast::set_autocast_enabled(device_, true);
#else
    if (device_ == at::kCPU) {
      at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
      at::autocast::set_cpu_enabled(true);
    } else {
      at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
      at::autocast::set_enabled(true);
    }
#endif
  }
  ~Bf16Autocast() {
    if (!enabled_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(device_, false);
#else
    if (device_ == at::kCPU) {
      at::autocast::set_cpu_enabled(false);
    } else {
      at::autocast::set_enabled(false);
    }
#endif
    at::autocast::clear_cache();
  }
  Bf16Autocast(const Bf16Autocast&) = delete;
  Bf16Autocast& operator=(const Bf16Autocast&) = delete;

 private:
  at::DeviceType device_;
  bool enabled_;
};

}  // namespace tern::quant

#endif  // TERN_QUANT_AUTOCAST_H_
