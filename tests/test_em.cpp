// EM for InlierQ's two-component mixture: recovery of synthetic mixtures, posteriors, degenerate cases.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "inlier/em.h"
#include "inlierq/error.h"

using namespace inlierq;

namespace {
std::vector<double> mixture(size_t n, double p1, double m0, double s0, double m1, double s1, uint32_t seed) {
  std::mt19937 rng(seed);
  std::bernoulli_distribution pick(p1);
  std::normal_distribution<double> a(m0, s0), b(m1, s1);
  std::vector<double> v(n);
  for (auto& x : v) x = pick(rng) ? b(rng) : a(rng);
  return v;
}
}  // namespace

TEST(EM, RecoversSyntheticBimodalMixtures) {
  struct Case { double p1, m0, s0, m1, s1; };
  for (const Case c : {Case{0.3, -2.0, 1.0, 3.0, 0.7}, Case{0.7, 1.0, 0.5, 5.0, 1.5}, Case{0.15, 10.0, 2.0, 20.0, 1.0},
                       Case{0.5, -8.0, 1.0, -3.0, 1.0}}) {
    const auto data = mixture(200000, c.p1, c.m0, c.s0, c.m1, c.s1, 42);
    const auto f = inlier::fit_two_gaussians(data);
    EXPECT_TRUE(f.converged);
    EXPECT_FALSE(f.fallback) << f.fallback_reason;
    // Means within 1 % (of the value, or of the spread for means near 0).
    const double scale0 = std::max(std::fabs(c.m0), c.s0), scale1 = std::max(std::fabs(c.m1), c.s1);
    EXPECT_NEAR(f.mean[0], c.m0, 0.01 * scale0);
    EXPECT_NEAR(f.mean[1], c.m1, 0.01 * scale1);
    EXPECT_NEAR(std::sqrt(f.variance[0]), c.s0, 0.03 * c.s0);
    EXPECT_NEAR(std::sqrt(f.variance[1]), c.s1, 0.03 * c.s1);
    EXPECT_NEAR(f.prior[1], c.p1, 0.01);
    // Posteriors lie in [0, 1], rise with the score between the means, and are complementary to the anomaly's.
    double prev = -1;
    for (double s = c.m0; s <= c.m1; s += (c.m1 - c.m0) / 50) {
      const double p = f.inlier_posterior(s);
      EXPECT_GE(p, 0.0);
      EXPECT_LE(p, 1.0);
      EXPECT_GE(p, prev - 1e-12);
      prev = p;
    }
    EXPECT_LT(f.inlier_posterior(c.m0), 0.5);
    EXPECT_GT(f.inlier_posterior(c.m1), 0.5);
    // Closed form of Ashman's D with the true parameters; all four cases are clearly bimodal (D > 2).
    const double d_true = std::sqrt(2.0) * (c.m1 - c.m0) / std::sqrt(c.s0 * c.s0 + c.s1 * c.s1);
    EXPECT_NEAR(f.ashman_d(), d_true, 0.03 * d_true);
    EXPECT_GT(f.ashman_d(), 2.0);
  }
}

// What the real score distributions look like: one Gaussian split in two by EM. Either the fallback
// fires or the fit reports D < 2 (not clearly bimodal).
TEST(EM, UnimodalDataIsNotReportedAsBimodal) {
  for (uint32_t seed = 1; seed <= 3; ++seed) {
    const auto f = inlier::fit_two_gaussians(mixture(50000, 0.0, 0.0, 1.0, 0.0, 1.0, seed));
    EXPECT_TRUE(f.fallback || f.ashman_d() < 2.0) << "seed " << seed << ": D " << f.ashman_d();
  }
}

TEST(EM, DegenerateCasesFallBackToUniformWeights) {
  // The rule itself: a fit that did not fall back has an inlier prior in [1 %, 99 %] and means at least
  // 0.5 pooled standard deviations apart; one that fell back gives every volume weight 1.
  for (uint32_t seed = 1; seed <= 6; ++seed) {
    const auto f = inlier::fit_two_gaussians(mixture(20000, 0.5, 0.0, 1.0, 0.3 * seed, 1.0, seed));
    const double pooled = std::sqrt(f.prior[0] * f.variance[0] + f.prior[1] * f.variance[1]);
    if (f.fallback) {
      EXPECT_EQ(f.inlier_posterior(-100), 1.0);
    } else {
      EXPECT_GE(f.mean[1] - f.mean[0], 0.5 * pooled) << seed;
      EXPECT_GE(f.prior[1], 0.01);
      EXPECT_LE(f.prior[1], 0.99);
    }
  }
  // A tiny second mode (0.2 %): inlier prior below 1 %.
  const auto g = inlier::fit_two_gaussians(mixture(100000, 0.002, 0.0, 1.0, 30.0, 0.1, 8));
  EXPECT_TRUE(g.fallback) << g.prior[1];
  const auto h = inlier::fit_two_gaussians(std::vector<double>(100, 3.0));
  EXPECT_TRUE(h.fallback);
  EXPECT_THROW(inlier::fit_two_gaussians({1.0}), Error);
  EXPECT_THROW(inlier::fit_two_gaussians({1.0, NAN, 2.0}), Error);
}
