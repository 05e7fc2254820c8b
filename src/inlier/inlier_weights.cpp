#include "inlier/inlier_weights.h"

#include <cmath>

#include "inlierq/error.h"

namespace inlierq::inlier {

nlohmann::json VolumeWeights::to_json() const {
  return {{"means", {fit.mean[0], fit.mean[1]}}, {"variances", {fit.variance[0], fit.variance[1]}},
          {"priors", {fit.prior[0], fit.prior[1]}}, {"iterations", fit.iterations}, {"converged", fit.converged},
          {"fallback", fit.fallback}, {"fallback_reason", fit.fallback_reason}, {"ashman_d", fit.ashman_d()},
          {"log_saliency_mean", score_mean}, {"log_saliency_std", score_std}, {"inlier_mass", inlier_mass},
          {"zero_gradient_fraction", zero_gradient.defined() ? zero_gradient.to(at::kDouble).mean().item<double>() : 0.0},
          {"histogram", {{"lo", histogram_lo}, {"hi", histogram_hi}, {"counts", histogram}}}};
}

at::Tensor raw_saliency(const at::Tensor& grad, const at::Tensor& act, Saliency saliency) {
  if (grad.dim() < 2) throw Error("saliency needs a gradient of shape [N, C, ...]");
  if (saliency == Saliency::GradAct && (!act.defined() || act.sizes() != grad.sizes()))
    throw Error("grad_act saliency needs the activation of the same shape");
  // One sample at a time in double: a whole calibration set's gradient in double would be the peak of
  // the InlierQ pass (YOLOX-Nano's stem output: 44 M values).
  std::vector<at::Tensor> rs;
  for (int64_t n = 0; n < grad.size(0); ++n) {
    const at::Tensor g = grad[n].to(at::kCPU).to(at::kDouble);
    if (saliency == Saliency::GradAct) {
      rs.push_back((g * act[n].to(at::kCPU).to(at::kDouble)).abs().sum(0));
    } else {
      at::Tensor r = (g * g).sum(0);
      rs.push_back(saliency == Saliency::Norm ? r.sqrt() : r);
    }
  }
  return at::stack(rs, 0);
}

VolumeWeights volume_weights(const at::Tensor& grad, const at::Tensor& act, const InlierOptions& o) {
  return volume_weights_from_raw(raw_saliency(grad, act, o.saliency), o);
}

VolumeWeights volume_weights_from_raw(const at::Tensor& raw, const InlierOptions& o) {
  const at::Tensor r = raw.to(at::kCPU).to(at::kDouble);
  if (o.weighting == Weighting::Quantile && !(o.quantile > 0 && o.quantile <= 1))
    throw Error("inlier quantile must be in (0, 1], got " + std::to_string(o.quantile));
  VolumeWeights out;
  out.zero_gradient = r == 0;
  const at::Tensor logr = at::log(r + o.epsilon);
  const at::Tensor nz = logr.masked_select(out.zero_gradient.logical_not()).contiguous();
  const int64_t n = nz.numel();
  if (n < 2) {
    out.fit.fallback = true;
    out.fit.fallback_reason = "fewer than 2 volumes with a non-zero gradient";
    out.scores = at::zeros_like(r, at::kFloat);
    out.weights = out.zero_gradient.logical_not().to(at::kFloat);
    out.inlier_mass = out.weights.mean().item<double>();
    return out;
  }
  out.score_mean = nz.mean().item<double>();
  out.score_std = std::max(nz.std().item<double>(), 1e-12);
  const at::Tensor s = (logr - out.score_mean) / out.score_std;
  const at::Tensor snz = (nz - out.score_mean) / out.score_std;
  {
    const at::Tensor h = at::histc(snz.clamp(out.histogram_lo, out.histogram_hi), 80, out.histogram_lo, out.histogram_hi);
    out.histogram.resize(80);
    for (int64_t i = 0; i < 80; ++i) out.histogram[static_cast<size_t>(i)] = h[i].item<double>();
  }
  std::vector<double> sample;
  const int64_t stride = std::max<int64_t>(1, (n + static_cast<int64_t>(o.max_fit_samples) - 1) / static_cast<int64_t>(o.max_fit_samples));
  const double* sd = snz.data_ptr<double>();
  for (int64_t i = 0; i < n; i += stride) sample.push_back(sd[i]);
  out.fit = fit_two_gaussians(sample, o.em);
  // Posterior per volume, vectorised: log-odds of two Gaussians.
  at::Tensor post;
  if (out.fit.fallback) {
    post = at::ones_like(s);
  } else {
    const auto& f = out.fit;
    auto logn = [&](int k) { return -0.5 * (std::log(2 * M_PI * f.variance[k])) - (s - f.mean[k]).pow(2) / (2 * f.variance[k]) + std::log(f.prior[k]); };
    post = at::sigmoid(logn(1) - logn(0));
  }
  post = at::where(out.zero_gradient, at::zeros_like(post), post);
  out.scores = at::where(out.zero_gradient, at::zeros_like(s), s).to(at::kFloat);
  out.weights = (o.weighting == Weighting::Hard && !out.fit.fallback ? (post > 0.5).to(at::kDouble) : post).to(at::kFloat);
  if (out.fit.fallback) out.weights = out.zero_gradient.logical_not().to(at::kFloat);
  if (o.weighting == Weighting::Quantile) {
    // The k highest scores of the non-zero volumes, ties at the threshold included: the mixture fit above
    // is still reported, but it does not decide.
    const int64_t k = std::max<int64_t>(1, static_cast<int64_t>(std::llround(o.quantile * static_cast<double>(n))));
    const double threshold = std::get<0>(at::topk(snz, k)).min().item<double>();
    out.weights = ((s >= threshold) & out.zero_gradient.logical_not()).to(at::kFloat);
  }
  out.inlier_mass = out.weights.mean().item<double>();
  return out;
}

}  // namespace inlierq::inlier
