// The arithmetic of the fused projection (fused_projection.h), one definition compiled twice:
// by nvcc for the kernels and by the host compiler for the CPU reference, so the two cannot
// drift apart. Per-unit values are computed in double from fixed-order sums and stored
// rounded as the formulas in fused_projection.h say; element-wise values are float.
// Internal to quant/: include it from fused_projection.cu, fused_projection_reference.cc and
// their tests only.
#ifndef TERN_QUANT_CUDA_FUSED_MATH_H_
#define TERN_QUANT_CUDA_FUSED_MATH_H_

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define TERN_HD __host__ __device__ __forceinline__
#else
#define TERN_HD inline
#endif

namespace tern::quant::fused::math {

constexpr double kTiny = 1e-12;  // as ternary_ops.cc's clamps
constexpr int kMaxSums = 4;      // sums per tile in one pass

// Per-unit values kept between passes (doubles; rounded ones hold a float's value).
enum UnitField {
  kMeanAbs,   // Σ|w| / L
  kSumSq,     // Σw²
  kDelta,     // Δ of the current (after the last pass: the final) mask
  kAlpha,     // α of the last pass
  kCoefW,     // regularizer gradient: coefficient of w
  kCoefT,     // and of the code
  kCosOverU,  // cos_u / U_l
  kNonzero,   // ΣM of the final mask
  kCos,       // cos_u
  kRhoSum,    // Σρ before normalization
  kUnitFields
};

// LAT's element weight d.
TERN_HD float Importance(float moment, float correction, float epsilon) {
  return sqrtf(moment / correction) + epsilon;
}

// After the Σ|w|, Σw² pass.
TERN_HD void FinishAbs(const double* sums, int64_t length, float delta_factor, double* state) {
  state[kMeanAbs] = sums[0] / static_cast<double>(length);
  state[kSumSq] = sums[1];
  state[kDelta] = static_cast<float>(state[kMeanAbs] * static_cast<double>(delta_factor));
}

// After a mask pass: sums are Σ d|w|M, Σ dM, and on the last weighted pass Σ|w|M, ΣM.
TERN_HD void FinishMask(const double* sums, bool last, bool weighted, int64_t layer_units,
                        double* state) {
  const float alpha = static_cast<float>(sums[0] / fmax(sums[1], kTiny));
  state[kAlpha] = alpha;
  if (!last) {
    state[kDelta] = alpha * 0.5f;
    return;
  }
  const double nonzero = weighted ? sums[3] : sums[1];
  const double dot = weighted ? sums[2] : sums[0];
  const double norms = sqrt(state[kSumSq] * nonzero);
  const double inverse = norms > kTiny ? 1.0 / norms : 0.0;
  const double units = static_cast<double>(layer_units);
  state[kNonzero] = nonzero;
  state[kCos] = dot * inverse;
  state[kCosOverU] = state[kCos] / units;
  state[kCoefW] = static_cast<float>(state[kCosOverU] / fmax(state[kSumSq], kTiny));
  state[kCoefT] = static_cast<float>(inverse / units);
}

TERN_HD float Code(float w, float delta) {
  return fabsf(w) > delta ? (w > 0.0f ? 1.0f : -1.0f) : 0.0f;
}

TERN_HD float Tau(float kappa, double mean_abs) {
  return static_cast<float>(static_cast<double>(kappa) / fmax(mean_abs, kTiny));
}

// e^x in float without a library call, so that a CPU loop over it vectorizes (SSE2 is
// enough) and the kernels evaluate the same polynomial. x is clamped to [-87, 88] (NaN to
// -87), where e^x is a normal float: beyond it ρ's sigmoid is 0 or 1 in float all the same.
// x = n·ln2 + r with n an integer and |r| ≤ ln2/2 (ln2 in two parts, so that r keeps its
// low bits), e^r by a degree-7 polynomial with minimax coefficients (Cephes' expf), 2^n from the
// exponent bits. Within 1 ulp of e^x over the range (fused_projection_reference_test).
TERN_HD float Exp(float x) {
  x = x > -87.0f ? x : -87.0f;
  x = x < 88.0f ? x : 88.0f;
  constexpr float kShifter = 12582912.0f;  // 1.5·2^23: (t + it) − it rounds t to an integer
  const float n = (x * 1.44269504088896341f + kShifter) - kShifter;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e_r = p * (r * r) + r + 1.0f;
  const int32_t exponent = (static_cast<int32_t>(n) + 127) * (1 << 23);
  float two_to_n;
  memcpy(&two_to_n, &exponent, sizeof(two_to_n));
  return e_r * two_to_n;
}

// ρ before normalization; `alpha_clip` = α·clip in float. Branch-free (selects; the sigmoid,
// in [0, 1], is computed where it is not used), so that its CPU loop vectorizes.
TERN_HD float Rho(float abs_w, float alpha_clip, bool rescale, float tau, float delta,
                  float one_minus_beta, float four_beta) {
  const float base = rescale ? one_minus_beta : 1.0f;  // without re-scaling, 1 + 0·(…) = 1
  const float gain = rescale ? four_beta : 0.0f;
  const float s = 1.0f / (1.0f + Exp(-(tau * (abs_w - delta))));
  return abs_w <= alpha_clip ? base + gain * (s - s * s) : 0.0f;
}

TERN_HD float RhoDivisor(double rho_sum, int64_t length) {
  return fmaxf(static_cast<float>(rho_sum / static_cast<double>(length)), 1e-12f);
}

TERN_HD float RegGrad(float w, float code, float coef_w, float coef_t) {
  return w * coef_w - code * coef_t;
}

// float -> bf16 bits, rounded to nearest even (as c10::BFloat16 and __float2bfloat16_rn).
TERN_HD uint16_t Bf16Bits(float x) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// One layer's gradient element (GradientArgs).
TERN_HD void Gradient(float* grad, const float* rho, const float* reg_grad, float* moment,
                      int64_t i, float lambda, float decay, float one_minus_decay) {
  float g = grad[i];
  if (rho != nullptr) g = g * rho[i];
  if (reg_grad != nullptr) g = g + lambda * reg_grad[i];
  grad[i] = g;
  if (moment != nullptr) moment[i] = moment[i] * decay + one_minus_decay * g * g;
}

}  // namespace tern::quant::fused::math

#endif  // TERN_QUANT_CUDA_FUSED_MATH_H_
