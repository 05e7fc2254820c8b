#pragma once
// Per-volume saliency, its two-component mixture and the inlier weights (ALGORITHMS.md §6.3–6.4).
// Internal header (exposes ATen).
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "inlier/em.h"
#include "inlier/saliency.h"
#include "inlierq/inlier.h"
#include "inlierq/inlier_options.h"

namespace inlierq::inlier {

struct InlierOptions {
  Saliency saliency = Saliency::Sq;       // sq: Σ_c g² | norm: ‖g‖₂ | grad_act: Σ_c |g·z|
  Weighting weighting = Weighting::Soft;  // soft: w = π | hard: w = 1[π > 0.5] | quantile: w = 1[s ≥ s_(1−q)]
  double quantile = 0.5;         // quantile: the fraction of non-zero-gradient volumes kept (highest scores)
  double epsilon = 1e-30;        // inside log(r + ε)
  size_t max_fit_samples = 200000;  // EM runs on an evenly strided subset of the volumes beyond this
  MixtureOptions em;
};

struct VolumeWeights {
  at::Tensor weights;        // [N, positions...] float: the inlier weight of every volume
  at::Tensor scores;         // [N, positions...] standardised log saliency (0 where the gradient is 0)
  at::Tensor zero_gradient;  // [N, positions...] bool
  MixtureFit fit;
  double score_mean = 0, score_std = 1;  // of log(r + ε) over the non-zero volumes
  double inlier_mass = 0;    // mean weight
  // Histogram of the standardised scores of the non-zero volumes (80 bins over [lo, hi]), for the plots.
  double histogram_lo = -5, histogram_hi = 5;
  std::vector<double> histogram;
  nlohmann::json to_json() const;  // fit, fractions (no tensors)
};

// From the public options (the CLI flags): the auxiliary-loss and inlier settings.
AuxLossOptions aux_options(const HeatmapLossOptions& o);
// The report's pictures of one value from its volume weights (soft: the posterior): the first `images` rows.
SaliencyMaps saliency_pictures(const std::string& value, const VolumeWeights& vw, int64_t images);
InlierOptions inlier_options(const InlierSplitOptions& o);

// grad, act: [N, C, positions...] (act only for grad_act). Volumes are the positions of one sample.
VolumeWeights volume_weights(const at::Tensor& grad, const at::Tensor& act, const InlierOptions& opts = {});

// The two halves of volume_weights, so the raw score can be reduced batch by batch: the raw saliency
// r [N, positions...] (double; `saliency` as in InlierOptions), and the weights from the r of all images.
at::Tensor raw_saliency(const at::Tensor& grad, const at::Tensor& act, Saliency saliency);
VolumeWeights volume_weights_from_raw(const at::Tensor& raw, const InlierOptions& opts = {});

}  // namespace inlierq::inlier
