#include "recon/adaround.h"

#include <algorithm>

namespace inlierq::recon {

at::Tensor rectified_sigmoid(const at::Tensor& v, const AdaRoundConfig& cfg) {
  return at::clamp(at::sigmoid(v) * (cfg.zeta - cfg.gamma) + cfg.gamma, 0.0, 1.0);
}

at::Tensor init_rounding_logits(const at::Tensor& w, const at::Tensor& scale, const AdaRoundConfig& cfg) {
  const at::Tensor u = w / scale;
  const at::Tensor r = u - at::floor(u);
  // sigmoid(V) = (r − γ)/(ζ − γ)  ⇔  V = −log((ζ − γ)/(r − γ) − 1); r ∈ [0, 1) keeps the argument finite.
  return -at::log((cfg.zeta - cfg.gamma) / (r - cfg.gamma) - 1.0);
}

at::Tensor soft_weight(const at::Tensor& w, const at::Tensor& v, const at::Tensor& scale, const at::Tensor& zero_point,
                       int64_t qn, int64_t qp, const AdaRoundConfig& cfg) {
  const at::Tensor z = zero_point.to(w.scalar_type());
  const at::Tensor q = at::clamp(at::floor(w / scale).detach() + rectified_sigmoid(v, cfg) + z, static_cast<double>(qn),
                                 static_cast<double>(qp));
  return scale * (q - z);
}

at::Tensor hard_weight(const at::Tensor& w, const at::Tensor& v, const at::Tensor& scale, const at::Tensor& zero_point,
                       int64_t qn, int64_t qp) {
  const at::Tensor z = zero_point.to(w.scalar_type());
  const at::Tensor q = at::clamp(at::floor(w / scale) + (v >= 0).to(w.scalar_type()) + z, static_cast<double>(qn),
                                 static_cast<double>(qp));
  return scale * (q - z);
}

at::Tensor rounding_regularizer(const at::Tensor& v, double beta, const AdaRoundConfig& cfg) {
  return (1.0 - at::pow(at::abs(2.0 * rectified_sigmoid(v, cfg) - 1.0), beta)).sum();
}

double beta_at(int64_t iter, int64_t iters, const AdaRoundConfig& cfg) {
  const double start = cfg.warmup * static_cast<double>(iters);
  if (iters <= 0 || iter <= start) return cfg.beta_start;
  const double t = std::min(1.0, (static_cast<double>(iter) - start) / std::max(1.0, static_cast<double>(iters) - start));
  return cfg.beta_start + (cfg.beta_end - cfg.beta_start) * t;
}

bool regularizer_active(int64_t iter, int64_t iters, const AdaRoundConfig& cfg) {
  return static_cast<double>(iter) >= cfg.warmup * static_cast<double>(iters);
}

}  // namespace inlierq::recon
