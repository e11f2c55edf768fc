#include "quant/options.h"

#include <algorithm>
#include <cctype>
#include <cmath>

namespace tern::quant {
namespace {

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  // Accept the proto enum spellings too: "METHOD_HLA" -> "hla".
  for (const char* prefix : {"method_", "granularity_", "packing_"}) {
    const std::string p(prefix);
    if (s.rfind(p, 0) == 0) s = s.substr(p.size());
  }
  return s;
}

Status Field(const std::string& name, const std::string& rule) {
  return InvalidArgumentError("quantization." + name + ": " + rule);
}

bool Finite(double x) { return std::isfinite(x); }

}  // namespace

QuantOptions MakePreset(Method method) {
  QuantOptions o;
  o.method = method;
  switch (method) {
    case Method::kFp:
      o.use_regularizer = false;
      o.use_rescale = false;
      break;
    case Method::kTwn:
      o.projection = Projection::kTwn;
      o.use_regularizer = false;
      o.use_rescale = false;
      break;
    case Method::kTtq:
      o.projection = Projection::kTtq;
      o.use_regularizer = false;
      o.use_rescale = false;
      break;
    case Method::kLat:
      o.use_regularizer = false;
      o.use_rescale = false;
      break;
    case Method::kHlaNoRegularizer:
      o.use_regularizer = false;
      break;
    case Method::kHlaNoRescale:
      o.use_rescale = false;
      break;
    case Method::kHla:
      break;
  }
  // Only the regularized methods have an FP phase 1.
  if (!o.use_regularizer) o.reg_fraction = 0.0;
  return o;
}

Status QuantOptions::Validate() const {
  if (!Finite(twn_delta_factor) || twn_delta_factor <= 0 || twn_delta_factor >= 2)
    return Field("twn_delta_factor", "must be in (0, 2)");
  if (lat_iterations < 1 || lat_iterations > 100)
    return Field("lat_iterations", "must be in [1, 100]");
  if (!Finite(lat_epsilon) || lat_epsilon <= 0)
    return Field("lat_epsilon", "must be > 0");
  if (!Finite(second_moment_decay) || second_moment_decay < 0 ||
      second_moment_decay >= 1)
    return Field("second_moment_decay", "must be in [0, 1)");
  if (!Finite(ttq_threshold) || ttq_threshold <= 0 || ttq_threshold >= 1)
    return Field("ttq_threshold", "must be in (0, 1)");
  if (!Finite(lambda_max) || lambda_max < 0)
    return Field("lambda_max", "must be >= 0");
  if (!Finite(reg_warmup_fraction) || reg_warmup_fraction < 0 ||
      reg_warmup_fraction > 1)
    return Field("reg_warmup_fraction", "must be in [0, 1]");
  if (!Finite(reg_fraction) || reg_fraction < 0 || reg_fraction >= 1)
    return Field("reg_fraction", "must be in [0, 1)");
  if (!Finite(beta) || beta < 0 || beta > 1)
    return Field("beta", "must be in [0, 1]");
  if (!Finite(kappa_start) || kappa_start <= 0)
    return Field("kappa_start", "must be > 0");
  if (!Finite(kappa_end) || kappa_end <= 0)
    return Field("kappa_end", "must be > 0");
  if (!Finite(clip) || clip <= 0) return Field("clip", "must be > 0");
  if (bn_recalibration_batches < 0 || bn_recalibration_batches > 10000)
    return Field("bn_recalibration_batches", "must be in [0, 10000]");
  if (projection == Projection::kTtq && (use_regularizer || use_rescale))
    return Field("method",
                 "TTQ learns its own scales; regularizer and re-scaling "
                 "apply to the TWN/LAT projections only");
  if (!use_regularizer && reg_fraction > 0)
    return Field("reg_fraction",
                 "an FP phase 1 needs the regularizer (method hla or "
                 "hla_no_rescale)");
  return OkStatus();
}

const char* MethodName(Method method) {
  switch (method) {
    case Method::kFp: return "fp";
    case Method::kTwn: return "twn";
    case Method::kTtq: return "ttq";
    case Method::kLat: return "lat";
    case Method::kHlaNoRegularizer: return "hla_no_regularizer";
    case Method::kHlaNoRescale: return "hla_no_rescale";
    case Method::kHla: return "hla";
  }
  return "?";
}

StatusOr<Method> ParseMethod(const std::string& name) {
  const std::string n = Lower(name);
  for (Method m : {Method::kFp, Method::kTwn, Method::kTtq, Method::kLat,
                   Method::kHlaNoRegularizer, Method::kHlaNoRescale,
                   Method::kHla}) {
    if (n == MethodName(m)) return m;
  }
  return Field("method", "unknown method '" + name +
                             "' (fp, twn, ttq, lat, hla_no_regularizer, "
                             "hla_no_rescale, hla)");
}

const char* GranularityName(Granularity g) {
  return g == Granularity::kTensor ? "tensor" : "channel";
}

StatusOr<Granularity> ParseGranularity(const std::string& name) {
  const std::string n = Lower(name);
  if (n == "tensor") return Granularity::kTensor;
  if (n == "channel") return Granularity::kChannel;
  return Field("granularity",
               "unknown granularity '" + name + "' (tensor, channel)");
}

const char* PackingName(Packing p) {
  return p == Packing::kTwoBit ? "2bit" : "base3";
}

StatusOr<Packing> ParsePacking(const std::string& name) {
  const std::string n = Lower(name);
  if (n == "2bit") return Packing::kTwoBit;
  if (n == "base3") return Packing::kBase3;
  return Field("packing", "unknown packing '" + name + "' (2bit, base3)");
}

}  // namespace tern::quant
