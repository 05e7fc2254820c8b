#include "inlier/em.h"

#include <algorithm>
#include <cmath>

#include "inlierq/error.h"

namespace inlierq::inlier {
namespace {
constexpr double kLog2Pi = 1.8378770664093453;

double log_normal(double x, double mean, double var) {
  const double d = x - mean;
  return -0.5 * (kLog2Pi + std::log(var) + d * d / var);
}
double log_sum_exp(double a, double b) {
  const double m = std::max(a, b);
  return m + std::log(std::exp(a - m) + std::exp(b - m));
}
}  // namespace

double MixtureFit::ashman_d() const {
  return std::sqrt(2.0) * std::fabs(mean[1] - mean[0]) / std::sqrt(std::max(variance[0] + variance[1], 1e-300));
}

double MixtureFit::inlier_posterior(double s) const {
  if (fallback) return 1.0;
  const double a = std::log(prior[0]) + log_normal(s, mean[0], variance[0]);
  const double b = std::log(prior[1]) + log_normal(s, mean[1], variance[1]);
  return std::exp(b - log_sum_exp(a, b));
}

MixtureFit fit_two_gaussians(const std::vector<double>& data, const MixtureOptions& o) {
  const size_t n = data.size();
  if (n < 2) throw Error("EM needs at least 2 samples, got " + std::to_string(n));
  double sum = 0;
  for (double x : data) {
    if (!std::isfinite(x)) throw Error("EM input contains NaN or Inf");
    sum += x;
  }
  const double mu = sum / static_cast<double>(n);
  double ss = 0;
  for (double x : data) ss += (x - mu) * (x - mu);
  const double total_var = ss / static_cast<double>(n);
  MixtureFit f;
  if (!(total_var > 0)) {
    f.fallback = true;
    f.fallback_reason = "all scores are equal";
    f.mean[0] = f.mean[1] = mu;
    return f;
  }
  const double floor = std::max(o.variance_floor * total_var, 1e-300);
  std::vector<double> sorted(data);
  auto pct = [&](double q) {
    const size_t k = static_cast<size_t>(q * static_cast<double>(n - 1));
    std::nth_element(sorted.begin(), sorted.begin() + static_cast<long>(k), sorted.end());
    return sorted[k];
  };
  f.mean[0] = pct(0.25);
  f.mean[1] = pct(0.75);
  if (f.mean[0] == f.mean[1]) f.mean[0] -= 0.5 * std::sqrt(total_var), f.mean[1] += 0.5 * std::sqrt(total_var);
  f.variance[0] = f.variance[1] = total_var;
  std::vector<double> r(n);  // responsibility of component 1
  double prev = -INFINITY;
  for (int it = 0; it < o.max_iters; ++it) {
    // E step, with the log-likelihood of the current parameters.
    double ll = 0;
    const double lp0 = std::log(f.prior[0]), lp1 = std::log(f.prior[1]);
    for (size_t i = 0; i < n; ++i) {
      const double a = lp0 + log_normal(data[i], f.mean[0], f.variance[0]);
      const double b = lp1 + log_normal(data[i], f.mean[1], f.variance[1]);
      const double lse = log_sum_exp(a, b);
      r[i] = std::exp(b - lse);
      ll += lse;
    }
    ll /= static_cast<double>(n);
    f.log_likelihood = ll;
    f.iterations = it + 1;
    if (std::isfinite(prev) && std::fabs(ll - prev) <= o.tolerance * std::max(1.0, std::fabs(prev))) {
      f.converged = true;
      break;
    }
    prev = ll;
    // M step.
    double n1 = 0, s0 = 0, s1 = 0;
    for (size_t i = 0; i < n; ++i) n1 += r[i], s0 += (1 - r[i]) * data[i], s1 += r[i] * data[i];
    const double n0 = static_cast<double>(n) - n1;
    if (n0 <= 1e-12 || n1 <= 1e-12) break;  // one component took everything: checked below
    f.mean[0] = s0 / n0, f.mean[1] = s1 / n1;
    double v0 = 0, v1 = 0;
    for (size_t i = 0; i < n; ++i) {
      const double d0 = data[i] - f.mean[0], d1 = data[i] - f.mean[1];
      v0 += (1 - r[i]) * d0 * d0, v1 += r[i] * d1 * d1;
    }
    f.variance[0] = std::max(v0 / n0, floor), f.variance[1] = std::max(v1 / n1, floor);
    f.prior[1] = n1 / static_cast<double>(n), f.prior[0] = 1 - f.prior[1];
  }
  if (f.mean[0] > f.mean[1]) {
    std::swap(f.mean[0], f.mean[1]);
    std::swap(f.variance[0], f.variance[1]);
    std::swap(f.prior[0], f.prior[1]);
  }
  const double pooled_sd = std::sqrt(f.prior[0] * f.variance[0] + f.prior[1] * f.variance[1]);
  if (f.prior[1] < o.min_prior || f.prior[1] > 1 - o.min_prior) {
    f.fallback = true;
    f.fallback_reason = "inlier prior " + std::to_string(f.prior[1]) + " outside [" + std::to_string(o.min_prior) + ", " +
                        std::to_string(1 - o.min_prior) + "]";
  } else if (f.mean[1] - f.mean[0] < o.min_separation * pooled_sd) {
    f.fallback = true;
    f.fallback_reason = "component means closer than " + std::to_string(o.min_separation) + " pooled standard deviations";
  }
  return f;
}

}  // namespace inlierq::inlier
