// AdaRound's rounding pieces against closed forms and finite differences (ALGORITHMS.md §4).
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>

#include "recon/adaround.h"

using namespace inlierq::recon;

TEST(AdaRound, RectifiedSigmoidClosedForm) {
  const AdaRoundConfig cfg;
  auto v = at::tensor(std::vector<double>{-10, -2, 0, 0.5, 2, 10}, at::kDouble);
  auto h = rectified_sigmoid(v, cfg);
  for (int i = 0; i < 6; ++i) {
    const double x = v[i].item<double>();
    const double expect = std::min(1.0, std::max(0.0, 1.0 / (1.0 + std::exp(-x)) * 1.2 - 0.1));
    EXPECT_NEAR(h[i].item<double>(), expect, 1e-12) << x;
  }
}

TEST(AdaRound, InitialSoftWeightEqualsWeight) {
  auto w = at::randn({8, 4, 3, 3}, at::kDouble);
  auto s = at::rand({8, 1, 1, 1}, at::kDouble) * 0.1 + 0.05;
  auto z = at::zeros({8, 1, 1, 1}, at::kDouble);
  auto v = init_rounding_logits(w, s);
  // Inside the grid the soft weight reproduces w; with a grid wide enough nothing clamps.
  auto soft = soft_weight(w, v, s, z, -1000, 1000);
  EXPECT_LT((soft - w).abs().max().item<double>(), 1e-9);
  // Clamped to an 8-bit grid, only the elements beyond it move.
  auto soft8 = soft_weight(w, v, s, z, -128, 127);
  auto inside = (w / s >= -128) & (w / s <= 127);
  EXPECT_LT(((soft8 - w).abs() * inside.to(at::kDouble)).max().item<double>(), 1e-9);
}

TEST(AdaRound, HardWeightRoundsByTheSignOfV) {
  auto w = at::tensor(std::vector<double>{0.26, 0.26, -0.26, -0.26, 10.0}, at::kDouble);
  auto v = at::tensor(std::vector<double>{1.0, -1.0, 1.0, -1.0, 5.0}, at::kDouble);
  auto s = at::full({1}, 0.1, at::kDouble), z = at::zeros({1}, at::kDouble);
  auto hw = hard_weight(w, v, s, z, -8, 7);
  // floor(2.6) = 2 → 3 or 2; floor(−2.6) = −3 → −2 or −3; 100 clamps to 7.
  const std::vector<double> expect = {0.3, 0.2, -0.2, -0.3, 0.7};
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(hw[i].item<double>(), expect[i], 1e-12) << i;
}

TEST(AdaRound, RegularizerAndSchedule) {
  const AdaRoundConfig cfg;
  // h = 0 or 1 (V far from 0) costs nothing; h = 0.5 costs 1 per element.
  auto v_far = at::tensor(std::vector<double>{-20, 20}, at::kDouble);
  EXPECT_NEAR(rounding_regularizer(v_far, 2.0, cfg).item<double>(), 0.0, 1e-12);
  const double v_half = -std::log((cfg.zeta - cfg.gamma) / (0.5 - cfg.gamma) - 1.0);
  EXPECT_NEAR(rounding_regularizer(at::full({3}, v_half, at::kDouble), 20.0, cfg).item<double>(), 3.0, 1e-9);
  // β: 20 through the 20 % warm-up, then linear to 2 at the end; the regulariser is off during warm-up.
  EXPECT_DOUBLE_EQ(beta_at(0, 1000, cfg), 20.0);
  EXPECT_DOUBLE_EQ(beta_at(200, 1000, cfg), 20.0);
  EXPECT_NEAR(beta_at(600, 1000, cfg), 11.0, 1e-12);
  EXPECT_DOUBLE_EQ(beta_at(1000, 1000, cfg), 2.0);
  EXPECT_FALSE(regularizer_active(199, 1000, cfg));
  EXPECT_TRUE(regularizer_active(200, 1000, cfg));
}

TEST(AdaRound, SoftWeightGradientMatchesFiniteDifferences) {
  auto w = at::randn({16}, at::kDouble);
  auto s = at::full({1}, 0.07, at::kDouble), z = at::zeros({1}, at::kDouble);
  auto v = (at::randn({16}, at::kDouble) * 0.5).set_requires_grad(true);
  auto loss = [&](const at::Tensor& vv) { return (soft_weight(w, vv, s, z, -8, 7) * at::arange(16, at::kDouble)).sum(); };
  auto g = torch::autograd::grad({loss(v)}, {v})[0];
  const double h = 1e-6;
  for (int i = 0; i < 16; ++i) {
    auto vp = v.detach().clone(), vm = v.detach().clone();
    vp[i] += h;
    vm[i] -= h;
    const double fd = (loss(vp).item<double>() - loss(vm).item<double>()) / (2 * h);
    EXPECT_NEAR(g[i].item<double>(), fd, 1e-6 * std::max(1.0, std::fabs(fd))) << i;
  }
}

TEST(AdaRound, HardeningRightAfterInitIsRoundToNearest) {
  auto w = at::randn({32, 3, 3, 3}, at::kDouble);
  auto s = at::rand({32, 1, 1, 1}, at::kDouble) * 0.02 + 0.01;
  auto z = at::zeros({32, 1, 1, 1}, at::kDouble);
  auto hard = hard_weight(w, init_rounding_logits(w, s), s, z, -8, 7);
  auto nearest = (at::clamp(at::round(w / s) + z, -8.0, 7.0) - z) * s;
  // V ≥ 0 ⇔ r ≥ 0.5: identical to round-to-nearest except on exact ties (none in random data).
  EXPECT_LT((hard - nearest).abs().max().item<double>(), 1e-12);
}
