#include "inlierq/inlier_options.h"

#include "inlierq/error.h"

namespace inlierq::inlier {

const NameTable<AuxLoss>& aux_loss_names() {
  static const NameTable<AuxLoss> t{{{AuxLoss::Bce, "bce"}, {AuxLoss::Focal, "focal"}, {AuxLoss::NegLogit, "neglogit"}}};
  return t;
}
const NameTable<TopkSelection>& topk_selection_names() {
  static const NameTable<TopkSelection> t{
      {{TopkSelection::PerClass, "per_class"}, {TopkSelection::Global, "global"}, {TopkSelection::MaxClass, "max_class"}}};
  return t;
}
const NameTable<Saliency>& saliency_names() {
  static const NameTable<Saliency> t{{{Saliency::Sq, "sq"}, {Saliency::Norm, "norm"}, {Saliency::GradAct, "grad_act"}}};
  return t;
}
const NameTable<Weighting>& weighting_names() {
  static const NameTable<Weighting> t{{{Weighting::Soft, "soft"}, {Weighting::Hard, "hard"}, {Weighting::Quantile, "quantile"}}};
  return t;
}

void validate(const HeatmapLossOptions& o) {
  if (o.topk < 1) throw Error("--topk must be ≥ 1");
}

void validate(const InlierSplitOptions& o) {
  if (o.em_max_iters < 1 || !(o.em_tolerance > 0) || !(o.em_variance_floor > 0) || !(o.em_min_prior >= 0 && o.em_min_prior < 0.5) ||
      !(o.em_min_separation >= 0))
    throw Error("EM options out of range (--em-iters ≥ 1, --em-tol > 0, --em-var-floor > 0, --em-min-prior in [0, 0.5), --em-min-separation ≥ 0)");
  if (!(o.quantile > 0 && o.quantile <= 1)) throw Error("--inlier-quantile must be in (0, 1], got " + std::to_string(o.quantile));
}

}  // namespace inlierq::inlier
