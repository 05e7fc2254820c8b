#include "inlierq/inlier_options.h"

#include "inlierq/error.h"

namespace inlierq::inlier {

void validate(const HeatmapLossOptions& o) {
  if (o.topk < 1) throw Error("--topk must be ≥ 1");
  if (o.aux_loss != "bce" && o.aux_loss != "focal" && o.aux_loss != "neglogit")
    throw Error("unknown --aux-loss '" + o.aux_loss + "' (expected bce, focal or neglogit)");
  if (o.topk_selection != "per_class" && o.topk_selection != "global" && o.topk_selection != "max_class")
    throw Error("unknown --topk-selection '" + o.topk_selection + "' (expected per_class, global or max_class)");
}

void validate(const InlierSplitOptions& o) {
  if (o.em_max_iters < 1 || !(o.em_tolerance > 0) || !(o.em_variance_floor > 0) || !(o.em_min_prior >= 0 && o.em_min_prior < 0.5) ||
      !(o.em_min_separation >= 0))
    throw Error("EM options out of range (--em-iters ≥ 1, --em-tol > 0, --em-var-floor > 0, --em-min-prior in [0, 0.5), --em-min-separation ≥ 0)");
  if (o.saliency != "sq" && o.saliency != "norm" && o.saliency != "grad_act")
    throw Error("unknown --saliency '" + o.saliency + "' (expected sq, norm or grad_act)");
  if (o.weighting != "soft" && o.weighting != "hard" && o.weighting != "quantile")
    throw Error("unknown --inlier-weighting '" + o.weighting + "' (expected soft, hard or quantile)");
  if (!(o.quantile > 0 && o.quantile <= 1)) throw Error("--inlier-quantile must be in (0, 1], got " + std::to_string(o.quantile));
}

}  // namespace inlierq::inlier
