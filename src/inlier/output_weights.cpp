// InlierQ's volume weights at the graph outputs, for inlier-weighted sensitivity (docs/QUANTIZATION.md §4d): the
// gradient of the top-K heatmap loss scores every position of each heatmap source, the same two-component mixture
// as in reconstruction splits them, and the posterior weighs the output error position by position. An output
// that is not a source (NanoDet's per-level box maps) takes the weights of the one source whose positions it has.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <map>

#include "detect/output_view.h"
#include "inlier/inlier_weights.h"
#include "inlier/saliency.h"
#include "inlierq/error.h"
#include "inlierq/inlier.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"

namespace inlierq::inlier {

namespace {

// [N, P] weights shaped to broadcast against `t` under `layout`.
at::Tensor broadcast_to_output(const at::Tensor& w, const at::Tensor& t, detect::OutputLayout layout) {
  std::vector<int64_t> shape = t.sizes().vec();
  if (layout == detect::OutputLayout::PositionsChannels) {
    if (t.dim() > 2) shape.back() = 1;
  } else {
    shape[1] = 1;
  }
  return w.reshape(shape);
}

}  // namespace

std::map<std::string, TensorData> output_inlier_weights(const Graph& g, const std::vector<TensorData>& inputs,
                                                        const HeatmapLossOptions& loss, const InlierSplitOptions& split,
                                                        const std::string& device) {
  if (inputs.empty()) throw Error("inlier-weighted output error needs at least one image");
  validate(loss);
  validate(split);
  if (!loss.heatmap.contains("sources"))
    throw Error("inlier-weighted output error needs the model profile's heatmap (\"heatmap\": {\"sources\": [...]})");
  rt::ExecutorOptions eo;
  eo.device = at::Device(device);
  eo.fuse_silu = false;  // the fused kernel has no autograd
  rt::Executor ex(g, eo);
  rt::RunOptions ro;
  ro.track_grad = true;
  const auto outs = ex.run({{g.inputs.at(0).name, rt::to_aten_batch(inputs).to(eo.device)}}, ro);
  const at::Tensor l = topk_aux_loss(heatmap_logits(loss.heatmap, outs), aux_options(loss));

  struct Source {
    std::string name;
    detect::OutputLayout layout;
    at::Tensor weights;  // [N, P]
  };
  std::vector<Source> sources;
  std::vector<at::Tensor> targets;
  for (const auto& src : loss.heatmap["sources"]) {
    const std::string name = src.at("output").get<std::string>();
    bool seen = false;
    for (const auto& s : sources) seen |= s.name == name;
    if (seen) continue;
    sources.push_back({name, detect::parse_layout(src.value("layout", "positions_channels"), "heatmap source '" + name + "'"), {}});
    targets.push_back(outs.at(name));
  }
  const auto grads = torch::autograd::grad({l}, targets, {}, false, false, true);
  const InlierOptions io = inlier_options(split);
  for (size_t k = 0; k < sources.size(); ++k) {
    const std::string where = "heatmap source '" + sources[k].name + "'";
    const at::Tensor gr = grads[k].defined() ? grads[k].detach() : at::zeros_like(targets[k]);
    const at::Tensor gpc = detect::positions_channels(gr, sources[k].layout, where).transpose(1, 2).to(at::kCPU).to(at::kFloat);
    const at::Tensor zpc = detect::positions_channels(targets[k].detach(), sources[k].layout, where).transpose(1, 2).to(at::kCPU).to(at::kFloat);
    sources[k].weights = volume_weights(gpc.contiguous(), zpc.contiguous(), io).weights;
  }

  std::map<std::string, TensorData> out;
  for (const auto& o : g.outputs) {
    const at::Tensor t = outs.at(o.name).detach();
    const Source* match = nullptr;
    int matches = 0;
    for (const auto& s : sources) {
      if (s.name == o.name) {
        match = &s, matches = 1;
        break;
      }
      if (t.dim() < 2 || t.size(0) != s.weights.size(0)) continue;
      if (s.layout == detect::OutputLayout::ChannelsPositions && t.dim() < 3) continue;
      if (detect::positions_channels(t, s.layout, "output '" + o.name + "'").size(1) == s.weights.size(1)) match = &s, ++matches;
    }
    if (matches == 1) out[o.name] = rt::from_aten(broadcast_to_output(match->weights, t.to(at::kCPU), match->layout).contiguous());
  }
  return out;
}

}  // namespace inlierq::inlier
