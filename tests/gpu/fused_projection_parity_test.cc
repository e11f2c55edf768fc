// The fused projection's CUDA kernels against their CPU reference (quant/cuda/fused_projection.h,
// quant/fused_projection_reference.h): every method's projection, per tensor and per channel,
// odd sizes and ResNet-18's largest layer, Ŵ in float32 and bf16, κ read from device memory,
// the gradient update; and two launches give the same bits (fixed-order sums; the per-unit
// counters reset themselves). Plain C++ and the CUDA runtime, no LibTorch: it builds wherever
// nvcc is found and skips (visibly) without a device. Label `gpu`.
//
// Tolerances: the kernels and the reference share their arithmetic (quant/cuda/fused_math.h)
// and the order of every sum; sums are in double over products that are exact in double, and
// the kernels are compiled without multiply-add contraction. So the per-unit values (α, Δ,
// nonzero codes, cos), Ŵ, ∂R/∂W, Σ R and the gradient update must be equal bit for bit. ρ alone
// goes through expf, whose CUDA version is within 2 ulp of the exact value (glibc's within 1):
// s and so (1−β) + 4β(s − s²) differ by a few float ulps, and normalization divides by a mean
// of such values: 1e-5 relative (+1e-6 absolute) leaves about a factor 10 of margin.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "quant/cuda/fused_projection.h"
#include "quant/fused_projection_reference.h"

namespace tern::quant::fused {
namespace {

#define ASSERT_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call

class FusedProjectionParityTest : public testing::Test {
 protected:
  void SetUp() override {
    if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device: GPU test skipped";
    ASSERT_CUDA(cudaStreamCreate(&stream_));
  }
  void TearDown() override {
    for (void* p : allocations_) cudaFree(p);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  template <typename T>
  T* Device(const std::vector<T>& host) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(1, host.size() * sizeof(T))), cudaSuccess);
    allocations_.push_back(p);
    if (!host.empty()) {
      EXPECT_EQ(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
                cudaSuccess);
    }
    return static_cast<T*>(p);
  }
  template <typename T>
  std::vector<T> Host(const T* device, size_t n) {
    std::vector<T> out(n);
    EXPECT_EQ(cudaMemcpy(out.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }
  cudaStream_t stream_ = nullptr;
  std::vector<void*> allocations_;
};

struct Config {
  std::string name;
  int lat_iterations;
  bool moments, rescale, normalize, regularizer;
};
const std::vector<Config> kConfigs = {{"twn", 0, false, false, true, false},
                                      {"lat", 3, true, false, true, false},
                                      {"lat first step", 3, false, false, true, false},
                                      {"hla", 3, true, true, true, true},
                                      {"hla_no_regularizer", 3, true, true, true, false},
                                      {"hla_no_rescale", 3, true, false, true, true},
                                      {"hla not normalized", 3, true, true, false, true}};

// Layer sizes (numel, output channels): odd ones, one-element channels, and ResNet-18's
// 512×512×3×3 (2.4M elements: 1152 tiles per tensor).
struct Model {
  std::string name;
  std::vector<int64_t> numel, channels;
};
const std::vector<Model> kModels = {
    {"odd", {3 * 5 * 7 * 7, 9, 4, 67 * 33 * 9, 5 * 12, 7 * 3}, {3, 1, 4, 67, 5, 7}},
    {"resnet18 layer4", {512 * 256 * 9, 512 * 512 * 9, 512 * 256}, {512, 512, 512}}};

struct Outputs {
  std::vector<float> w_hat, rho, reg_grad, stats;
  std::vector<uint16_t> w_hat_bf16;
  float reg_value = 0;
};

std::string Mismatch(const std::vector<float>& a, const std::vector<float>& b, double rtol,
                     double atol) {
  if (a.size() != b.size()) return "sizes differ";
  size_t bad = 0, first = 0;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(a[i]) - b[i]);
    const bool same = rtol == 0 && atol == 0 ? std::memcmp(&a[i], &b[i], sizeof(float)) == 0 ||
                                                   (a[i] == 0 && b[i] == 0)
                                             : diff <= atol + rtol * std::fabs(b[i]);
    if (!same) {
      if (bad++ == 0) first = i;
      worst = std::max(worst, diff);
    }
  }
  if (bad == 0) return "";
  return std::to_string(bad) + " of " + std::to_string(a.size()) + " differ, first at " +
         std::to_string(first) + " (" + std::to_string(a[first]) + " vs " +
         std::to_string(b[first]) + "), max |diff| " + std::to_string(worst);
}

TEST_F(FusedProjectionParityTest, KernelsEqualTheCpuReference) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::uniform_real_distribution<float> uniform(0.0f, 1e-3f);
  for (const Model& model : kModels) {
    int64_t total = 0;
    for (int64_t n : model.numel) total += n;
    std::vector<float> w(total), moments(total);
    for (float& x : w) x = normal(rng);
    for (float& x : moments) x = uniform(rng);
    w[5] = 0.0f;  // an exact zero
    const float* w_device = Device(w);
    const float* moments_device = Device(moments);
    for (bool per_channel : {false, true}) {
      std::vector<int64_t> units;
      for (size_t k = 0; k < model.numel.size(); ++k) {
        units.push_back(per_channel ? model.channels[k] : 1);
      }
      const HostLayout host_layout = MakeLayout(model.numel, units);
      const Layout device_layout = host_layout.View(Device(host_layout.table));
      const size_t n_units = static_cast<size_t>(host_layout.units);
      void* workspace = nullptr;
      ASSERT_CUDA(cudaMalloc(&workspace, WorkspaceBytes(device_layout)));
      allocations_.push_back(workspace);
      ASSERT_TRUE(ClearWorkspace(device_layout, workspace, stream_).ok());
      float* w_hat = Device(std::vector<float>(total));
      float* rho = Device(std::vector<float>(total));
      float* reg_grad = Device(std::vector<float>(total));
      float* reg_value = Device(std::vector<float>(1));
      float* stats = Device(std::vector<float>(4 * n_units));
      const float kappa = 12.0f, correction = 0.25f;
      const float* kappa_device = Device(std::vector<float>{kappa});
      const float* correction_device = Device(std::vector<float>{correction});
      for (const Config& c : kConfigs) {
        for (bool bf16 : {false, true}) {
          SCOPED_TRACE(model.name + (per_channel ? " per channel " : " per tensor ") + c.name +
                       (bf16 ? " bf16" : " fp32"));
          ProjectionArgs a;
          a.lat_iterations = c.lat_iterations;
          a.moment_correction = correction;
          a.rescale = c.rescale;
          a.normalize = c.normalize;
          a.kappa = kappa;
          a.with_regularizer = c.regularizer;
          a.w_hat_type = bf16 ? WHatType::kBFloat16 : WHatType::kFloat32;
          // The reference, on the host.
          Outputs expected;
          expected.w_hat.assign(total, 0);
          expected.w_hat_bf16.assign(total, 0);
          expected.rho.assign(total, 0);
          expected.reg_grad.assign(total, 0);
          expected.stats.assign(4 * n_units, 0);
          ProjectionArgs h = a;
          h.layout = host_layout.View();
          h.w = w.data();
          h.moments = c.moments ? moments.data() : nullptr;
          h.w_hat = bf16 ? static_cast<void*>(expected.w_hat_bf16.data())
                         : static_cast<void*>(expected.w_hat.data());
          h.rho = expected.rho.data();
          h.reg_grad = expected.reg_grad.data();
          h.reg_value = &expected.reg_value;
          h.unit_stats = expected.stats.data();
          ReferenceProjection(h);
          // The kernels, twice (κ and the correction from device memory the second time, as
          // in a CUDA graph): the same bits.
          ProjectionArgs d = a;
          d.layout = device_layout;
          d.w = w_device;
          d.moments = c.moments ? moments_device : nullptr;
          d.w_hat = w_hat;
          d.rho = rho;
          d.reg_grad = reg_grad;
          d.reg_value = reg_value;
          d.unit_stats = stats;
          d.workspace = workspace;
          Outputs runs[2];
          for (int run = 0; run < 2; ++run) {
            if (run == 1) {
              d.kappa = 1e6f;
              d.kappa_device = kappa_device;
              d.moment_correction = 1e-6f;
              d.moment_correction_device = correction_device;
            }
            const LaunchStatus status = LaunchProjection(d, stream_);
            ASSERT_TRUE(status.ok()) << status.message;
            ASSERT_CUDA(cudaStreamSynchronize(stream_));
            Outputs& o = runs[run];
            if (bf16) {
              o.w_hat_bf16 = Host(static_cast<const uint16_t*>(d.w_hat), total);
            } else {
              o.w_hat = Host(w_hat, total);
            }
            o.rho = Host(rho, total);
            o.reg_grad = Host(reg_grad, total);
            o.stats = Host(stats, 4 * n_units);
            o.reg_value = Host(reg_value, 1)[0];
          }
          EXPECT_EQ(runs[0].w_hat, runs[1].w_hat);
          EXPECT_EQ(runs[0].w_hat_bf16, runs[1].w_hat_bf16);
          EXPECT_EQ(runs[0].rho, runs[1].rho);
          EXPECT_EQ(runs[0].stats, runs[1].stats);
          const Outputs& got = runs[0];
          EXPECT_EQ(Mismatch(got.stats, expected.stats, 0, 0), "") << "α, Δ, nonzero, cos";
          if (bf16) {
            EXPECT_TRUE(got.w_hat_bf16 == expected.w_hat_bf16) << "bf16 Ŵ";
          } else {
            EXPECT_EQ(Mismatch(got.w_hat, expected.w_hat, 0, 0), "") << "Ŵ";
          }
          EXPECT_EQ(Mismatch(got.rho, expected.rho, 1e-5, 1e-6), "") << "ρ";
          if (c.regularizer) {
            EXPECT_EQ(Mismatch(got.reg_grad, expected.reg_grad, 0, 0), "") << "∂R/∂W";
            EXPECT_EQ(got.reg_value, expected.reg_value) << "Σ R";
          }
        }
      }
    }
  }
}

TEST_F(FusedProjectionParityTest, GradientUpdateEqualsTheCpuReference) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // 30 layers: more than one launch's kMaxGradientLayers; sizes from 1 to 2.4M.
  std::vector<int64_t> sizes;
  for (int k = 0; k < 30; ++k) sizes.push_back(k == 3 ? 512 * 512 * 9 : 1 + 97 * k * k);
  GradientArgs host_args, device_args;
  host_args.lambda = device_args.lambda = 0.01f;
  host_args.decay = device_args.decay = 0.99f;
  std::vector<std::vector<float>> grads, rhos, regs, moments;
  for (int64_t n : sizes) {
    std::vector<float> g(n), r(n), reg(n), m(n);
    for (int64_t i = 0; i < n; ++i) {
      g[i] = normal(rng);
      r[i] = std::fabs(normal(rng));
      reg[i] = normal(rng);
      m[i] = std::fabs(normal(rng));
    }
    grads.push_back(g);
    rhos.push_back(r);
    regs.push_back(reg);
    moments.push_back(m);
  }
  for (size_t k = 0; k < sizes.size(); ++k) {
    const bool rho = k % 3 != 1, reg = k % 2 == 0;  // every combination occurs
    device_args.layers.push_back({Device(grads[k]), rho ? Device(rhos[k]) : nullptr,
                                  reg ? Device(regs[k]) : nullptr, Device(moments[k]), sizes[k]});
    host_args.layers.push_back({grads[k].data(), rho ? rhos[k].data() : nullptr,
                                reg ? regs[k].data() : nullptr, moments[k].data(), sizes[k]});
  }
  const LaunchStatus status = LaunchGradients(device_args, stream_);
  ASSERT_TRUE(status.ok()) << status.message;
  ASSERT_CUDA(cudaStreamSynchronize(stream_));
  ReferenceGradients(host_args);
  for (size_t k = 0; k < sizes.size(); ++k) {
    const GradientLayer& layer = device_args.layers[k];
    EXPECT_EQ(Mismatch(Host(layer.grad, sizes[k]), grads[k], 0, 0), "") << "grad " << k;
    EXPECT_EQ(Mismatch(Host(layer.moment, sizes[k]), moments[k], 0, 0), "") << "moment " << k;
  }
}

}  // namespace
}  // namespace tern::quant::fused
