#pragma once
// Options of InlierQ's label-free signal (ALGORITHMS.md §6), shared by reconstruction (InlierQ, Fisher
// weighting), the saliency pictures and the `saliency` command. Torch-free.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "inlierq/names.h"

namespace inlierq::inlier {

// The form of the top-K loss (ALGORITHMS.md §6.2): binary cross-entropy toward 1, focal, or the negated logit.
enum class AuxLoss { Bce, Focal, NegLogit };
// Which heatmap entries are the top K: per class, over all classes, or of each position's best class.
enum class TopkSelection { PerClass, Global, MaxClass };
// The per-volume score (§6.3): Σ g² over channels, ‖g‖, or Σ |g·z|.
enum class Saliency { Sq, Norm, GradAct };
// Volume weights from the scores (§6.4): the EM posterior, posterior > 0.5, or the top-q quantile without a mixture.
enum class Weighting { Soft, Hard, Quantile };
const NameTable<AuxLoss>& aux_loss_names();
const NameTable<TopkSelection>& topk_selection_names();
const NameTable<Saliency>& saliency_names();
const NameTable<Weighting>& weighting_names();

// The top-K heatmap loss whose gradient scores every volume and weights the errors (Fisher).
struct HeatmapLossOptions {
  nlohmann::json heatmap;  // the model profile's "heatmap"
  int64_t topk = 100;      // K
  AuxLoss aux_loss = AuxLoss::Bce;
  TopkSelection topk_selection = TopkSelection::PerClass;
};

// Per-volume saliency and the split of the volumes into inliers and anomalies.
struct InlierSplitOptions {
  Saliency saliency = Saliency::Sq;
  Weighting weighting = Weighting::Soft;
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
