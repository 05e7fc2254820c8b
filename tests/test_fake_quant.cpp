// Fake quantization (STE) and the LSQ step gradient, against closed forms and finite differences.
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>

#include "quant/fake_quant.h"

using namespace inlierq::quant;

namespace {

at::Tensor scalar(double v, bool grad = false) {
  return at::full({1}, v, at::TensorOptions().dtype(at::kDouble)).set_requires_grad(grad);
}

double ref_fake_quant(double x, double s, double z, double qn, double qp) {
  const double q = std::min(std::max(std::nearbyint(x / s) + z, qn), qp);
  return (q - z) * s;
}

}  // namespace

TEST(FakeQuant, ForwardMatchesClosedForm) {
  const std::vector<double> xs = {-3.1, -1.0, -0.25, -0.05, 0.0, 0.05, 0.125, 0.375, 0.5, 1.0, 2.6, 100.0};
  for (int bits : {2, 4, 8})
    for (bool sym : {false, true}) {
      const double qn = sym ? -(1 << (bits - 1)) : 0, qp = sym ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
      const double s = 0.25, z = sym ? 0 : 1;
      auto x = at::tensor(xs, at::kDouble);
      auto y = fake_quant(x, scalar(s), scalar(z), (int64_t)qn, (int64_t)qp);
      for (size_t i = 0; i < xs.size(); ++i)
        EXPECT_DOUBLE_EQ(y[i].item<double>(), ref_fake_quant(xs[i], s, z, qn, qp)) << "bits " << bits << " x " << xs[i];
    }
}

TEST(FakeQuant, RoundsHalfToEvenLikeQuantizeLinear) {
  // x/s = 0.5, 1.5, 2.5, -0.5 with zero point 1: ONNX rounds x/s (half to even), then adds z.
  auto x = at::tensor(std::vector<double>{0.5, 1.5, 2.5, -0.5}, at::kDouble);
  auto y = fake_quant(x, scalar(1.0), scalar(1.0), 0, 255);
  EXPECT_DOUBLE_EQ(y[0].item<double>(), 0.0);
  EXPECT_DOUBLE_EQ(y[1].item<double>(), 2.0);
  EXPECT_DOUBLE_EQ(y[2].item<double>(), 2.0);
  EXPECT_DOUBLE_EQ(y[3].item<double>(), 0.0);
}

TEST(FakeQuant, PerChannelBroadcast) {
  auto w = at::randn({3, 2, 2, 2}, at::kDouble);
  auto s = at::tensor(std::vector<double>{0.1, 0.2, 0.4}, at::kDouble);
  auto z = at::zeros({3}, at::kDouble);
  auto y = fake_quant(w, channel_view(s, 0, 4), channel_view(z, 0, 4), -8, 7);
  for (int c = 0; c < 3; ++c) {
    auto yc = fake_quant(w[c], scalar(s[c].item<double>()), scalar(0), -8, 7);
    EXPECT_TRUE(at::equal(y[c], yc)) << "channel " << c;
  }
}

TEST(FakeQuant, SteGradientOfInput) {
  // ∂x̂/∂x = 1 inside the clamp range (decided by the unrounded x/s), 0 outside.
  const double s = 0.5, z = 2;  // grid 0..15 -> range [-1, 6.5]
  auto x = at::tensor(std::vector<double>{-2.0, -1.2, -0.9, 0.3, 3.0, 6.4, 6.6, 9.0}, at::kDouble).set_requires_grad(true);
  auto y = fake_quant(x, scalar(s), scalar(z), 0, 15);
  auto g = torch::autograd::grad({y.sum()}, {x})[0];
  const std::vector<double> expect = {0, 0, 1, 1, 1, 1, 0, 0};
  for (size_t i = 0; i < expect.size(); ++i) EXPECT_DOUBLE_EQ(g[i].item<double>(), expect[i]) << "x " << x[i].item<double>();
}

TEST(FakeQuant, LsqStepGradientClosedForm) {
  const double s = 0.3, z = 3;
  const int64_t qn = 0, qp = 15;
  std::vector<double> xs = {-2.0, -0.95, -0.4, 0.0, 0.31, 1.0, 2.2, 3.6, 3.7, 10.0};
  auto x = at::tensor(xs, at::kDouble);
  for (double gscale : {1.0, lsq_grad_scale(10, qp)}) {
    auto sv = scalar(s, true);
    auto y = fake_quant(x, sv, scalar(z), qn, qp, gscale);
    auto gs = torch::autograd::grad({y.sum()}, {sv})[0].item<double>();
    double expect = 0;
    for (double xi : xs) {
      const double u = xi / s;
      if (u + z < qn) expect += qn - z;
      else if (u + z > qp) expect += qp - z;
      else expect += std::nearbyint(u) - u;
    }
    EXPECT_NEAR(gs, expect * gscale, 1e-12) << "grad scale " << gscale;
  }
  EXPECT_DOUBLE_EQ(lsq_grad_scale(100, 4), 1.0 / std::sqrt(400.0));
}

TEST(FakeQuant, LsqGradientMatchesFiniteDifferences) {
  // The STE treats the rounding residual δ = clamp(round(u)+z) − clamp(u+z) as a constant; with δ frozen,
  // x̂(x, s) = (clamp(x/s + z, qn, qp) + δ − z)·s is piecewise smooth, and its central finite differences
  // must equal the autograd gradients of fake_quant (LSQ's step gradient and the STE input gradient).
  auto x = at::randn({64}, at::kDouble) * 2;
  const double s0 = 0.21, z = 5, h = 1e-7;
  const int64_t qn = 0, qp = 15;
  auto frozen = at::clamp(at::round(x / s0) + z, (double)qn, (double)qp) - at::clamp(x / s0 + z, (double)qn, (double)qp);
  auto surrogate = [&](const at::Tensor& xx, double s) {
    return ((at::clamp(xx / s + z, (double)qn, (double)qp) + frozen - z) * s).sum().item<double>();
  };
  auto sv = scalar(s0, true);
  auto g = torch::autograd::grad({fake_quant(x, sv, scalar(z), qn, qp).sum()}, {sv})[0].item<double>();
  const double fd = (surrogate(x, s0 + h) - surrogate(x, s0 - h)) / (2 * h);
  EXPECT_NEAR(g, fd, 1e-5 * std::max(1.0, std::fabs(fd)));
  auto xg = x.clone().set_requires_grad(true);
  auto gx = torch::autograd::grad({fake_quant(xg, scalar(s0), scalar(z), qn, qp).sum()}, {xg})[0];
  for (int i = 0; i < 64; ++i) {
    auto xp = x.clone(), xm = x.clone();
    xp[i] += h;
    xm[i] -= h;
    EXPECT_NEAR(gx[i].item<double>(), (surrogate(xp, s0) - surrogate(xm, s0)) / (2 * h), 1e-5) << "element " << i;
  }
}
