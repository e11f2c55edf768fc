#include "quant/ternary_ops.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

namespace tern::quant {
namespace {

at::Tensor RandomWeight(std::vector<int64_t> shape, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn(shape, torch::kDouble) * 0.1;
}

// Central finite differences of scalar f at every element of w.
at::Tensor FiniteDifference(const std::function<double(const at::Tensor&)>& f,
                            const at::Tensor& w, double eps = 1e-6) {
  at::Tensor grad = torch::zeros_like(w);
  auto flat = w.clone().view(-1);
  auto g = grad.view(-1);
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double orig = flat[i].item<double>();
    flat[i] = orig + eps;
    const double up = f(flat.view(w.sizes()));
    flat[i] = orig - eps;
    const double down = f(flat.view(w.sizes()));
    flat[i] = orig;
    g[i] = (up - down) / (2 * eps);
  }
  return grad;
}

TEST(ProjectionTest, TwnMatchesDefinition) {
  const at::Tensor w = RandomWeight({16, 8, 3, 3}, 1);
  const TernaryProjection p = ProjectTwn(w, Granularity::kTensor, 0.7);
  const double delta = 0.7 * w.abs().mean().item<double>();
  EXPECT_NEAR(p.delta.item<double>(), delta, 1e-12);
  const at::Tensor mask = w.abs() > delta;
  EXPECT_NEAR(p.pos_scale.item<double>(),
              (w.abs() * mask).sum().item<double>() / mask.sum().item<double>(), 1e-12);
  EXPECT_TRUE(torch::equal(p.codes, w.sign() * mask));
}

TEST(ProjectionTest, PerChannelEqualsPerTensorChannelByChannel) {
  const at::Tensor w = RandomWeight({6, 4, 3, 3}, 2);
  const at::Tensor d = torch::rand_like(w) + 0.1;
  for (int method = 0; method < 2; ++method) {
    const TernaryProjection whole =
        method == 0 ? ProjectTwn(w, Granularity::kChannel, 0.7)
                    : ProjectLat(w, d, Granularity::kChannel, 3, 0.7);
    const at::Tensor rho_whole = RescaleFactor(w, whole, Granularity::kChannel,
                                               true, 0.5, 10.0, 2.0, true);
    const at::Tensor r_whole =
        UnitCosine(w, whole.codes, Granularity::kChannel);
    for (int64_t c = 0; c < w.size(0); ++c) {
      const at::Tensor wc = w[c].unsqueeze(0);
      const TernaryProjection one =
          method == 0 ? ProjectTwn(wc, Granularity::kTensor, 0.7)
                      : ProjectLat(wc, d[c].unsqueeze(0), Granularity::kTensor, 3, 0.7);
      EXPECT_TRUE(torch::equal(whole.codes[c], one.codes[0])) << c;
      EXPECT_DOUBLE_EQ(whole.pos_scale[c].item<double>(), one.pos_scale.item<double>());
      EXPECT_DOUBLE_EQ(whole.delta[c].item<double>(), one.delta.item<double>());
      const at::Tensor rho_one =
          RescaleFactor(wc, one, Granularity::kTensor, true, 0.5, 10.0, 2.0, true);
      EXPECT_TRUE(torch::allclose(rho_whole[c], rho_one[0], 1e-12, 1e-12));
      EXPECT_NEAR(r_whole[c].item<double>(),
                  UnitCosine(wc, one.codes, Granularity::kTensor).item<double>(), 1e-12);
    }
  }
}

TEST(ProjectionTest, LatHasLowerWeightedErrorThanTwn) {
  int lat_wins = 0;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const at::Tensor w = RandomWeight({32, 16, 3, 3}, 100 + seed);
    // Heavy-tailed importance, as Adam's second moments are.
    const at::Tensor d = torch::exp(torch::randn_like(w) * 1.5);
    const TernaryProjection twn = ProjectTwn(w, Granularity::kTensor, 0.7);
    const TernaryProjection lat = ProjectLat(w, d, Granularity::kTensor, 3, 0.7);
    const double e_twn = WeightedProjectionError(
        w, Dequantize(twn.codes, twn.pos_scale, twn.neg_scale), d).item<double>();
    const double e_lat = WeightedProjectionError(
        w, Dequantize(lat.codes, lat.pos_scale, lat.neg_scale), d).item<double>();
    lat_wins += e_lat < e_twn;
  }
  EXPECT_EQ(lat_wins, 20);
}

TEST(ProjectionTest, AllZeroWeightsGiveZeroCodesNotNaN) {
  const at::Tensor w = torch::zeros({4, 3}, torch::kDouble);
  for (const TernaryProjection& p :
       {ProjectTwn(w, Granularity::kChannel, 0.7),
        ProjectLat(w, at::Tensor(), Granularity::kTensor, 3, 0.7)}) {
    EXPECT_EQ(p.codes.abs().sum().item<double>(), 0.0);
    EXPECT_FALSE(torch::isnan(p.pos_scale).any().item<bool>());
  }
  EXPECT_DOUBLE_EQ(HypersphericalRegularizer(w, w, Granularity::kTensor).item<double>(), 1.0);
}

TEST(RegularizerTest, GradientMatchesFormulaAndFiniteDifferences) {
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
    const at::Tensor w0 = RandomWeight({5, 3, 3, 3}, 3);
    const at::Tensor codes = ProjectTwn(w0, g, 0.7).codes;
    at::Tensor w = w0.clone().requires_grad_(true);
    HypersphericalRegularizer(w, codes, g).backward();
    const at::Tensor formula = HypersphericalRegularizerGrad(w0, codes, g);
    const at::Tensor fd = FiniteDifference(
        [&](const at::Tensor& x) {
          return HypersphericalRegularizer(x, codes, g).item<double>();
        },
        w0);
    EXPECT_TRUE(torch::allclose(w.grad(), formula, 1e-9, 1e-12)) << GranularityName(g);
    EXPECT_TRUE(torch::allclose(fd, formula, 1e-5, 1e-7)) << GranularityName(g);
  }
}

TEST(RegularizerTest, ZeroExactlyForScaledTernaryAndScaleFree) {
  const at::Tensor codes = ProjectTwn(RandomWeight({8, 9}, 4), Granularity::kTensor, 0.7).codes;
  EXPECT_NEAR(HypersphericalRegularizer(codes * 0.37, codes, Granularity::kTensor).item<double>(),
              0.0, 1e-12);
  const at::Tensor w = RandomWeight({8, 9}, 5);
  EXPECT_NEAR(HypersphericalRegularizer(w, codes, Granularity::kTensor).item<double>(),
              HypersphericalRegularizer(w * 13.0, codes, Granularity::kTensor).item<double>(),
              1e-12);
}

// Plain element-by-element reference of HLA.md section 3.
double ReferenceRho(double w, double delta, double alpha, double mean_abs,
                    double beta, double kappa, double clip) {
  if (std::abs(w) > clip * alpha) return 0.0;
  const double tau = kappa / mean_abs;
  const double s = 1.0 / (1.0 + std::exp(-tau * (std::abs(w) - delta)));
  return (1 - beta) + beta * 4 * s * (1 - s);
}

TEST(RescaleTest, EqualsFormulaOnRandomTensors) {
  for (uint64_t seed = 0; seed < 5; ++seed) {
    const at::Tensor w = RandomWeight({7, 13}, 10 + seed);
    const TernaryProjection p = ProjectTwn(w, Granularity::kTensor, 0.7);
    const double beta = 0.3 + 0.1 * seed, kappa = 5.0 * (seed + 1), clip = 1.5;
    const at::Tensor rho = RescaleFactor(w, p, Granularity::kTensor, true, beta,
                                         kappa, clip, /*normalize=*/false);
    const at::Tensor rho_norm = RescaleFactor(w, p, Granularity::kTensor, true,
                                              beta, kappa, clip, /*normalize=*/true);
    const double mean_abs = w.abs().mean().item<double>();
    std::vector<double> ref;
    for (int64_t i = 0; i < w.numel(); ++i) {
      ref.push_back(ReferenceRho(w.view(-1)[i].item<double>(), p.delta.item<double>(),
                                 p.pos_scale.item<double>(), mean_abs, beta, kappa, clip));
    }
    double ref_mean = 0;
    for (double r : ref) ref_mean += r / ref.size();
    for (int64_t i = 0; i < w.numel(); ++i) {
      EXPECT_NEAR(rho.view(-1)[i].item<double>(), ref[i], 1e-12);
      EXPECT_NEAR(rho_norm.view(-1)[i].item<double>(), ref[i] / ref_mean, 1e-12);
    }
  }
}

TEST(RescaleTest, SigmoidPartIsOneAtThresholdAndPlainSteForBetaZero) {
  const at::Tensor w = torch::tensor({0.5, -0.5, 1.0, -1.0, 0.1, 0.0}, torch::kDouble);
  TernaryProjection p;
  p.delta = torch::tensor({0.5}, torch::kDouble);
  p.pos_scale = p.neg_scale = torch::tensor({0.9}, torch::kDouble);
  const at::Tensor rho = RescaleFactor(w, p, Granularity::kTensor, true, 1.0, 3.0, 2.0, false);
  EXPECT_NEAR(rho[0].item<double>(), 1.0, 1e-12);
  EXPECT_NEAR(rho[1].item<double>(), 1.0, 1e-12);
  const at::Tensor ste = RescaleFactor(w, p, Granularity::kTensor, true, 0.0, 3.0, 2.0, true);
  EXPECT_TRUE(torch::allclose(ste, torch::ones_like(w)));
  // |w| = 1.0 > clip·α = 0.9 · 1.0 is outside the clip range.
  const at::Tensor clipped = RescaleFactor(w, p, Granularity::kTensor, false, 0.5, 3.0, 1.0, true);
  EXPECT_EQ(clipped[2].item<double>(), 0.0);
  EXPECT_EQ(clipped[0].item<double>(), 1.0);
}

TEST(StraightThroughTest, BackwardIsGradientTimesRho) {
  const at::Tensor w0 = RandomWeight({4, 6}, 20);
  const TernaryProjection p = ProjectTwn(w0, Granularity::kTensor, 0.7);
  const at::Tensor w_hat = Dequantize(p.codes, p.pos_scale, p.neg_scale);
  const at::Tensor rho = RescaleFactor(w0, p, Granularity::kTensor, true, 0.5, 10, 2, true);
  at::Tensor w = w0.clone().requires_grad_(true);
  const at::Tensor out = StraightThrough(w, w_hat, rho);
  EXPECT_TRUE(torch::equal(out, w_hat));
  const at::Tensor upstream = torch::randn_like(w0);
  (out * upstream).sum().backward();
  EXPECT_TRUE(torch::allclose(w.grad(), upstream * rho, 0, 0));
}

TEST(StraightThroughTest, IdentityVariantSharesWHatAndPassesTheGradientThrough) {
  const at::Tensor w0 = RandomWeight({4, 3, 2, 2}, 21).contiguous(at::MemoryFormat::ChannelsLast);
  const TernaryProjection p = ProjectTwn(w0, Granularity::kChannel, 0.7);
  const at::Tensor w_hat =
      Dequantize(p.codes, p.pos_scale, p.neg_scale).contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor w = w0.clone().requires_grad_(true);
  const at::Tensor out = StraightThroughIdentity(w, w_hat);
  EXPECT_EQ(out.data_ptr(), w_hat.data_ptr());  // no copy
  EXPECT_EQ(out.strides(), w_hat.strides());
  ASSERT_TRUE(out.requires_grad());
  const at::Tensor upstream = torch::randn_like(w0);
  (out * upstream).sum().backward();
  EXPECT_TRUE(torch::equal(w.grad(), upstream));
}

TEST(TtqTest, ScaleGradientsMatchFiniteDifferencesAndLatentFormula) {
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
    const at::Tensor w0 = RandomWeight({3, 5, 2}, 30);
    const int64_t units = NumUnits(w0, g);
    const at::Tensor wp0 = torch::rand({units}, torch::kDouble) + 0.5;
    const at::Tensor wn0 = torch::rand({units}, torch::kDouble) + 0.5;
    const TernaryProjection p = ProjectTtq(w0, g, 0.05, wp0, wn0);
    const at::Tensor upstream = torch::randn_like(w0);
    at::Tensor w = w0.clone().requires_grad_(true);
    at::Tensor wp = wp0.clone().requires_grad_(true);
    at::Tensor wn = wn0.clone().requires_grad_(true);
    (TtqForward(w, p.codes, wp, wn) * upstream).sum().backward();
    auto loss_wp = [&](const at::Tensor& x) {
      return (Dequantize(p.codes, x, wn0) * upstream).sum().item<double>();
    };
    auto loss_wn = [&](const at::Tensor& x) {
      return (Dequantize(p.codes, wp0, x) * upstream).sum().item<double>();
    };
    EXPECT_TRUE(torch::allclose(wp.grad(), FiniteDifference(loss_wp, wp0), 1e-6, 1e-8));
    EXPECT_TRUE(torch::allclose(wn.grad(), FiniteDifference(loss_wn, wn0), 1e-6, 1e-8));
    const at::Tensor c = p.codes.reshape({units, -1});
    const at::Tensor scale = torch::where(c > 0, wp0.unsqueeze(1),
                                          torch::where(c < 0, wn0.unsqueeze(1),
                                                       torch::ones_like(c)));
    EXPECT_TRUE(torch::allclose(w.grad(), upstream * scale.reshape(w0.sizes())));
  }
}

TEST(ScheduleTest, PhasesLambdaRampAndKappaAnnealing) {
  QuantOptions o = MakePreset(Method::kHla);
  ScheduleState s = ComputeSchedule(o, 0.0);
  EXPECT_FALSE(s.ternary_forward);
  EXPECT_DOUBLE_EQ(s.lambda, 0.0);
  s = ComputeSchedule(o, 0.05);
  EXPECT_NEAR(s.lambda, 0.5 * o.lambda_max, 1e-15);
  s = ComputeSchedule(o, 0.3);
  EXPECT_TRUE(s.ternary_forward);
  EXPECT_DOUBLE_EQ(s.lambda, o.lambda_max);
  EXPECT_NEAR(s.kappa, 5.0, 1e-12);
  EXPECT_NEAR(ComputeSchedule(o, 0.65).kappa, std::sqrt(5.0 * 50.0), 1e-9);
  EXPECT_NEAR(ComputeSchedule(o, 1.0).kappa, 50.0, 1e-9);
  const ScheduleState twn = ComputeSchedule(MakePreset(Method::kTwn), 0.0);
  EXPECT_TRUE(twn.ternary_forward);
  EXPECT_EQ(twn.lambda, 0.0);
}

TEST(OptionsTest, ValidateNamesTheField) {
  QuantOptions o;
  o.beta = 1.5;
  EXPECT_EQ(o.Validate().message(), "quantization.beta: must be in [0, 1]");
  o = MakePreset(Method::kTtq);
  EXPECT_TRUE(o.Validate().ok());
  o.use_rescale = true;
  EXPECT_FALSE(o.Validate().ok());
  EXPECT_TRUE(ParseMethod("METHOD_HLA_NO_RESCALE").ok());
  EXPECT_FALSE(ParseMethod("bogus").ok());
  for (Method m : {Method::kFp, Method::kTwn, Method::kTtq, Method::kLat,
                   Method::kHlaNoRegularizer, Method::kHlaNoRescale, Method::kHla}) {
    EXPECT_TRUE(MakePreset(m).Validate().ok()) << MethodName(m);
  }
}

}  // namespace
}  // namespace tern::quant
