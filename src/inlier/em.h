#pragma once
// Two-component 1-D Gaussian mixture fitted by EM (ALGORITHMS.md §6.4). Torch-free.
#include <cstddef>
#include <string>
#include <vector>

namespace inlierq::inlier {

struct MixtureOptions {
  int max_iters = 200;
  double tolerance = 1e-6;        // relative change of the log-likelihood
  double variance_floor = 1e-6;   // × the data's variance
  double min_prior = 0.01;        // fallback when the inlier prior leaves [min_prior, 1 − min_prior]
  double min_separation = 0.5;    // fallback when |μ_in − μ_out| < this × pooled standard deviation
};

struct MixtureFit {
  double mean[2] = {0, 0};      // [0] anomaly (lower mean), [1] inlier (higher mean)
  double variance[2] = {1, 1};
  double prior[2] = {0.5, 0.5};
  double log_likelihood = 0;    // per sample, at the end
  int iterations = 0;
  bool converged = false;
  bool fallback = false;        // degenerate: weights are uniform
  std::string fallback_reason;
  // P(inlier | s); 1 for every s when the fit fell back.
  double inlier_posterior(double s) const;
  // Ashman's D = √2 |μ₁ − μ₀| / √(σ₀² + σ₁²): above 2 the two components are clearly separated; a fit of a
  // unimodal distribution split in two halves stays below (about 1.4 for a Gaussian). A diagnostic only.
  double ashman_d() const;
};

// Means initialised at the 25th / 75th percentiles, both variances at the data's variance, priors 0.5.
// Throws Error on fewer than 2 samples or non-finite data.
MixtureFit fit_two_gaussians(const std::vector<double>& data, const MixtureOptions& opts = {});

}  // namespace inlierq::inlier
