// QuantOptions: every knob of the ternary quantizers (docs/METHOD.md).
//
// A plain struct with the defaults of HLA.md; Validate() checks it once and
// names the offending field. MakePreset() gives the ablation grid's methods
// (FP, TWN, TTQ, LAT, HLA without regularizer, HLA without re-scaling, HLA).
// No LibTorch here so that option handling compiles anywhere.
#ifndef TERN_QUANT_OPTIONS_H_
#define TERN_QUANT_OPTIONS_H_

#include <string>

#include "common/status.h"

namespace tern::quant {

// The rows of HLA.md's ablation grid.
enum class Method {
  kFp,                 // no quantization
  kTwn,                // TWN projection, clipped STE
  kTtq,                // TTQ: learned positive/negative scales
  kLat,                // loss-aware (D-weighted) projection alone
  kHlaNoRegularizer,   // LAT projection + re-scaled STE
  kHlaNoRescale,       // LAT projection + hyperspherical regularizer
  kHla,                // LAT projection + regularizer + re-scaled STE
};

// How the threshold Δ and the scale α are computed.
enum class Projection { kTwn, kLat, kTtq };

// One (Δ, α) per tensor, or one per output channel (dim 0).
enum class Granularity { kTensor, kChannel };

// Code packing in the `.tern` artifact.
enum class Packing {
  kTwoBit,  // 4 weights per byte (2 bits/weight)
  kBase3,   // 5 weights per byte (1.6 bits/weight)
};

struct QuantOptions {
  Method method = Method::kHla;            // preset; see MakePreset()
  Granularity granularity = Granularity::kTensor;
  bool keep_first_fp = true;               // first conv stays full precision
  bool keep_last_fp = true;                // classifier / prediction stays FP

  // Section 1: projection.
  double twn_delta_factor = 0.7;           // TWN: Δ = δ·mean|W|
  int lat_iterations = 3;                  // LAT: α/Δ alternations
  double lat_epsilon = 1e-8;               // LAT: d = sqrt(v̂) + ε
  double second_moment_decay = 0.999;      // EMA of g² behind v̂
  double ttq_threshold = 0.05;             // TTQ: Δ = t·max|W|

  // Section 2: hyperspherical regularizer R = 1 - cos(W, T).
  double lambda_max = 1e-2;                // λ per layer after the ramp
  double reg_warmup_fraction = 0.1;        // share of training for 0 → λ_max
  double reg_fraction = 0.3;               // share of training in phase 1

  // Section 3: re-scaled straight-through gradient ρ(W).
  double beta = 0.5;                       // 0 = plain (clipped) STE
  bool normalize = true;                   // divide ρ by its mean per unit
  double kappa_start = 5.0;                // τ = κ / mean|W|, κ annealed
  double kappa_end = 50.0;                 //   geometrically over phase 2
  double clip = 2.0;                       // zero grad where |w| > clip·α

  Packing packing = Packing::kTwoBit;

  // BatchNorm re-estimation with the ternary weights (the trainer does it;
  // docs/METHOD.md, "BatchNorm re-estimation").
  int bn_recalibration_batches = 0;           // 0: ceil(2048 / batch size)
  bool recalibrate_bn_at_switch = false;      // keep them at the phase switch
  bool recalibrate_bn_before_export = false;  // before final eval + export

  // Derived from `method` by MakePreset (kept as fields so a test or an
  // expert can combine them freely).
  Projection projection = Projection::kLat;
  bool use_regularizer = true;
  bool use_rescale = true;

  // Names the first invalid field: "quantization.beta: must be in [0, 1]".
  Status Validate() const;
  bool quantized() const { return method != Method::kFp; }
};

// Options for `method` with every other knob at its default.
QuantOptions MakePreset(Method method);

// "fp", "twn", "ttq", "lat", "hla_no_regularizer", "hla_no_rescale", "hla".
const char* MethodName(Method method);
StatusOr<Method> ParseMethod(const std::string& name);
const char* GranularityName(Granularity g);
StatusOr<Granularity> ParseGranularity(const std::string& name);
const char* PackingName(Packing p);
StatusOr<Packing> ParsePacking(const std::string& name);

}  // namespace tern::quant

#endif  // TERN_QUANT_OPTIONS_H_
