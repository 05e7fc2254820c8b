#include <ATen/ATen.h>

#include "inlier/inlier_weights.h"
#include "inlier/saliency.h"
#include "inlierq/error.h"
#include "inlierq/inlier.h"
#include "runtime/tensor_convert.h"

namespace inlierq::inlier {

AuxLossOptions aux_options(const HeatmapLossOptions& o) {
  AuxLossOptions a;
  a.k = o.topk, a.form = o.aux_loss, a.selection = o.topk_selection;
  return a;
}

InlierOptions inlier_options(const InlierSplitOptions& o) {
  InlierOptions i;
  i.saliency = o.saliency, i.weighting = o.weighting, i.quantile = o.quantile;
  i.em.max_iters = o.em_max_iters, i.em.tolerance = o.em_tolerance, i.em.variance_floor = o.em_variance_floor;
  i.em.min_prior = o.em_min_prior, i.em.min_separation = o.em_min_separation;
  return i;
}

SaliencyMaps saliency_pictures(const std::string& value, const VolumeWeights& vw, int64_t images) {
  SaliencyMaps m;
  m.value = value;
  m.rows = static_cast<int>(vw.weights.size(1));
  m.cols = static_cast<int>(vw.weights.size(2));
  m.fit = vw.to_json();
  const at::Tensor shown = (vw.scores / 6.0 + 0.5).clamp(0, 1).contiguous();
  const at::Tensor post = vw.weights.contiguous();  // soft weights = posterior (0 for zero gradients)
  for (int64_t n = 0; n < std::min<int64_t>(images, shown.size(0)); ++n) {
    const at::Tensor a = shown[n].contiguous(), b = post[n].contiguous();
    m.saliency.emplace_back(a.data_ptr<float>(), a.data_ptr<float>() + a.numel());
    m.posterior.emplace_back(b.data_ptr<float>(), b.data_ptr<float>() + b.numel());
  }
  return m;
}

std::vector<SaliencyMaps> saliency_maps(const Graph& g, const std::vector<std::string>& values,
                                        const std::vector<TensorData>& inputs, const HeatmapLossOptions& loss,
                                        const InlierSplitOptions& split, const std::string& device) {
  if (inputs.empty()) throw Error("saliency needs at least one image");
  validate(loss);
  validate(split);
  rt::ExecutorOptions eo;
  eo.device = at::Device(device);
  eo.fuse_silu = false;
  rt::Executor ex(g, eo);
  std::vector<at::Tensor> xs;
  for (const auto& t : inputs) xs.push_back(rt::to_aten(t));
  const AuxLossOptions ao = aux_options(loss);
  InlierOptions io = inlier_options(split);
  io.weighting = Weighting::Soft;  // the pictures show the posterior itself
  std::map<std::string, SaliencyMaps> by_value;
  aux_loss_gradients(ex, loss.heatmap, xs, values, ao, 4, [&](const std::string& v, const at::Tensor& grad, const at::Tensor& z) {
    if (grad.dim() != 4) throw Error("value '" + v + "' is not a 4-D feature map; saliency maps need [N, C, H, W]");
    by_value[v] = saliency_pictures(v, volume_weights(grad, z, io), grad.size(0));
  }, split.saliency == Saliency::GradAct);
  std::vector<SaliencyMaps> out;
  for (const auto& v : values) out.push_back(std::move(by_value.at(v)));
  return out;
}

}  // namespace inlierq::inlier
