// CudaAutocast: bf16 autocast on CUDA for the scope of a forward pass, over
// the autocast API of both LibTorch 1.13 and 2.x. Not thread-safe (autocast
// state is per thread); a no-op when constructed with `enabled` false.
#ifndef TERN_WORKER_TRAINER_AUTOCAST_H_
#define TERN_WORKER_TRAINER_AUTOCAST_H_

#include <ATen/autocast_mode.h>
#include <torch/version.h>

namespace tern::trainer {

class CudaAutocast {
 public:
  explicit CudaAutocast(bool enabled) : enabled_(enabled) {
    if (!enabled_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
#else
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
#endif
  }
  ~CudaAutocast() {
    if (!enabled_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(at::kCUDA, false);
#else
    at::autocast::set_enabled(false);
#endif
    at::autocast::clear_cache();
  }
  CudaAutocast(const CudaAutocast&) = delete;
  CudaAutocast& operator=(const CudaAutocast&) = delete;

 private:
  bool enabled_;
};

}  // namespace tern::trainer

#endif  // TERN_WORKER_TRAINER_AUTOCAST_H_
