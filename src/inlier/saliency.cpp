#include "inlier/saliency.h"

#include <torch/csrc/autograd/autograd.h>

#include <unordered_set>

#include "detect/output_view.h"
#include "inlierq/detect.h"
#include "inlierq/error.h"
#include "inlierq/graph.h"

namespace inlierq::inlier {

namespace {
at::Tensor logit_of_probability(const at::Tensor& p) {
  const at::Tensor c = p.clamp(1e-7, 1 - 1e-7);
  return at::log(c) - at::log1p(-c);
}
}  // namespace

at::Tensor heatmap_logits(const nlohmann::json& definition, const rt::TensorMap& outputs) {
  if (!ModelProfile::declares_heatmap(definition))
    throw Error("the model profile declares no heatmap (\"heatmap\": {\"sources\": [...]}); InlierQ and Fisher weighting need it");
  std::vector<at::Tensor> parts;
  detect::validate_heatmap(definition, "heatmap");
  for (const auto& src : definition["sources"]) {
    const std::string name = src.at("output").get<std::string>();
    const std::string where = "heatmap source '" + name + "'";
    const auto find = [&](const std::string& n) {
      auto it = outputs.find(n);
      if (it == outputs.end()) throw Error(where + ": '" + n + "' is not an output of the model");
      return it->second;
    };
    const detect::OutputLayout layout = detect::parse_layout(src.value("layout", "positions_channels"), where);
    at::Tensor t = detect::positions_channels(find(name), layout, where).transpose(1, 2);  // [N, C, M]
    const auto ch = src.at("channels").get<std::vector<int64_t>>();
    if (ch.size() != 2 || ch[0] < 0 || ch[1] > t.size(1) || ch[0] >= ch[1])
      throw Error("heatmap source '" + name + "': channels range out of bounds for " + std::to_string(t.size(1)) + " channels");
    at::Tensor cls = t.narrow(1, ch[0], ch[1] - ch[0]);
    const bool probs = src.value("values", "probabilities") == "probabilities";
    if (src.contains("objectness_channel")) {
      // The objectness channel is in the same output unless objectness_output names another one with the
      // same layout and positions.
      const int64_t oc = src["objectness_channel"].get<int64_t>();
      at::Tensor o = src.contains("objectness_output")
                         ? detect::positions_channels(find(src["objectness_output"].get<std::string>()), layout, where)
                               .transpose(1, 2)
                         : t;
      if (oc < 0 || oc >= o.size(1) || o.size(2) != t.size(2))
        throw Error(where + ": objectness_channel " + std::to_string(oc) + " does not fit " + shape_str(o.sizes().vec()));
      at::Tensor obj = o.narrow(1, oc, 1);
      if (!probs) obj = at::sigmoid(obj), cls = at::sigmoid(cls);
      parts.push_back(logit_of_probability(obj * cls));
    } else if (probs) {
      parts.push_back(logit_of_probability(cls));
    } else {
      parts.push_back(cls);
    }
  }
  for (size_t i = 1; i < parts.size(); ++i)
    if (parts[i].size(0) != parts[0].size(0) || parts[i].size(1) != parts[0].size(1))
      throw Error("heatmap sources give [N, C, M] = " + shape_str(parts[0].sizes().vec()) + " and " +
                  shape_str(parts[i].sizes().vec()) + ": every source must have the same batch and class count");
  return at::cat(parts, 2);
}

at::Tensor topk_aux_loss(const at::Tensor& h, const AuxLossOptions& o) {
  if (h.dim() != 3) throw Error("heatmap must be [N, C, M]");
  at::Tensor sel;  // selected logits, [N, ...]
  if (o.selection == TopkSelection::PerClass) {
    sel = std::get<0>(at::topk(h, std::min<int64_t>(o.k, h.size(2)), 2));  // top by logit = top by σ
  } else if (o.selection == TopkSelection::Global) {
    sel = std::get<0>(at::topk(h.flatten(1), std::min<int64_t>(o.k, h.size(1) * h.size(2)), 1));
  } else {  // MaxClass
    sel = std::get<0>(at::topk(std::get<0>(h.max(1)), std::min<int64_t>(o.k, h.size(2)), 1));
  }
  at::Tensor l;
  if (o.form == AuxLoss::Bce) {
    l = at::softplus(-sel);  // −log σ(h)
  } else if (o.form == AuxLoss::Focal) {
    l = at::pow(1 - at::sigmoid(sel), o.focal_gamma) * at::softplus(-sel);
  } else {  // NegLogit
    l = -sel;
  }
  return l.flatten(1).mean(1).sum();
}

void aux_loss_reduce(const rt::Executor& ex, const nlohmann::json& heatmap, const std::vector<at::Tensor>& images,
                     const std::vector<std::string>& values, const AuxLossOptions& opts, int batch,
                     const GradientReducer& reduce,
                     const std::function<void(const std::string&, const std::vector<at::Tensor>&)>& sink,
                     bool with_values) {
  const std::unordered_set<std::string> wanted(values.begin(), values.end());
  std::map<std::string, std::vector<std::vector<at::Tensor>>> parts;
  const std::string input = ex.graph().inputs.at(0).name;
  const size_t b = static_cast<size_t>(std::max(1, batch));
  for (size_t i = 0; i < images.size(); i += b) {
    std::vector<at::Tensor> xs(images.begin() + static_cast<long>(i), images.begin() + static_cast<long>(std::min(images.size(), i + b)));
    std::map<std::string, at::Tensor> captured;
    rt::RunOptions ro;
    ro.track_grad = true;
    ro.value_hook = [&](const std::string& name, const at::Tensor& t) -> at::Tensor {
      if (wanted.count(name)) captured[name] = t;
      return t;
    };
    const auto outs = ex.run({{input, at::cat(xs, 0).to(ex.options().device)}}, ro);
    const at::Tensor loss = topk_aux_loss(heatmap_logits(heatmap, outs), opts);
    std::vector<at::Tensor> targets;
    for (const auto& v : values) {
      auto it = captured.find(v);
      if (it == captured.end()) throw Error("value '" + v + "' was not computed (fused away?) during the saliency pass");
      targets.push_back(it->second);
    }
    const auto grads = torch::autograd::grad({loss}, targets, {}, false, false, true);
    for (size_t k = 0; k < values.size(); ++k) {
      const at::Tensor g = (grads[k].defined() ? grads[k] : at::zeros_like(targets[k])).detach().to(at::kCPU).to(at::kFloat);
      auto kept = reduce(values[k], g, with_values ? targets[k].detach().to(at::kCPU).to(at::kFloat) : at::Tensor());
      auto& slots = parts[values[k]];
      slots.resize(kept.size());
      for (size_t j = 0; j < kept.size(); ++j) slots[j].push_back(kept[j].defined() ? kept[j].contiguous() : at::Tensor());
    }
  }
  for (auto& [v, slots] : parts) {
    std::vector<at::Tensor> joined;
    for (auto& ps : slots) {
      joined.push_back(!ps.empty() && ps.front().defined() ? at::cat(ps, 0) : at::Tensor());
      ps.clear();
    }
    sink(v, joined);
  }
}

void aux_loss_gradients(const rt::Executor& ex, const nlohmann::json& heatmap, const std::vector<at::Tensor>& images,
                        const std::vector<std::string>& values, const AuxLossOptions& opts, int batch,
                        const std::function<void(const std::string&, const at::Tensor&, const at::Tensor&)>& sink,
                        bool with_values) {
  aux_loss_reduce(
      ex, heatmap, images, values, opts, batch,
      [&](const std::string&, const at::Tensor& g, const at::Tensor& z) {
        // bfloat16 while all images are collected: halves the peak of this pass; float32's exponent range
        // keeps gradients of 1e-12 (float16 would flush them to 0 and fake "zero-gradient" volumes).
        std::vector<at::Tensor> kept{g.to(at::kBFloat16)};
        if (with_values) kept.push_back(z);
        return kept;
      },
      [&](const std::string& v, const std::vector<at::Tensor>& kept) {
        sink(v, kept[0].to(at::kFloat), with_values ? kept[1] : at::Tensor());
      },
      with_values);
}

}  // namespace inlierq::inlier
