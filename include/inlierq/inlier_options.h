#pragma once
// Options of InlierQ's label-free signal (ALGORITHMS.md §6), shared by reconstruction (InlierQ, Fisher
// weighting), the saliency pictures and the `saliency` command. Torch-free.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace inlierq::inlier {

// The top-K heatmap loss whose gradient scores every volume and weights the errors (Fisher).
struct HeatmapLossOptions {
  nlohmann::json heatmap;                    // the model profile's "heatmap"
  int64_t topk = 100;                        // K
  std::string aux_loss = "bce";              // bce | focal | neglogit
  std::string topk_selection = "per_class";  // per_class | global | max_class
};

// Per-volume saliency and the split of the volumes into inliers and anomalies.
struct InlierSplitOptions {
  std::string saliency = "sq";      // sq | norm | grad_act
  std::string weighting = "soft";   // soft | hard | quantile
  // quantile weighting: the fraction of the volumes with a non-zero gradient kept as inliers (weight 1),
  // those with the highest scores; no mixture decides (the plain threshold EM is compared against).
  double quantile = 0.5;
  int em_max_iters = 200;
  double em_tolerance = 1e-6;       // relative log-likelihood change
  double em_variance_floor = 1e-6;  // × the scores' variance
  double em_min_prior = 0.01;       // uniform weights when the inlier prior leaves [p, 1 − p]
  double em_min_separation = 0.5;   // uniform weights when the means are closer (pooled sds)
};

// Errors name the CLI flags (the same in `quantize` and `saliency`).
void validate(const HeatmapLossOptions& o);
void validate(const InlierSplitOptions& o);

}  // namespace inlierq::inlier
