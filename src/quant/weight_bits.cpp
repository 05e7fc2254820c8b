// `--budget weight-bits=B`: which weights of a low-bit plan go to 8 bits (docs/QUANTIZATION.md §4c). Each weight's
// harm is measured alone, as the output noise power it causes with every other tensor in floating point; the noise
// of an assignment is modelled as the sum over its low-bit weights (errors of different layers are close to
// uncorrelated), and raising a weight removes almost all of its share (an 8-bit grid has 16× finer steps than a
// 4-bit one, 1/256 of the noise power). Maximising the removed noise within the bit budget is a knapsack; greedy by
// noise per added bit is within one item of its optimum, and every point of the path is measured, not modelled.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include <fmt/format.h>

#include "inlierq/error.h"
#include "inlierq/quant.h"
#include "quant/fake_quant.h"
#include "quant/sqnr.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"

namespace inlierq::quant {

const NameTable<SensitivityError>& sensitivity_error_names() {
  static const NameTable<SensitivityError> t{{{SensitivityError::Output, "output"}, {SensitivityError::Inlier, "inlier"}}};
  return t;
}

nlohmann::json WeightBitsChoice::to_json() const {
  nlohmann::json j = {{"budget_bits", budget_bits}, {"average_bits_before", average_bits_before},
                      {"average_bits", average_bits}, {"high_bits", high_bits}, {"params", params}};
  j["layers"] = nlohmann::json::array();
  for (const auto& l : layers)
    j["layers"].push_back({{"node", l.node}, {"tensor", l.tensor}, {"params", l.params}, {"bits", l.bits},
                           {"sqnr_db", l.sqnr_db}, {"raised", l.raised}});
  for (size_t i = 0; i < layers.size(); ++i)
    if (!std::isnan(layers[i].inlier_sqnr_db)) j["layers"][i]["inlier_sqnr_db"] = layers[i].inlier_sqnr_db;
  j["ranked_by"] = sensitivity_error_names().name(ranked_by);
  j["frontier"] = nlohmann::json::array();
  for (const auto& p : frontier)
    j["frontier"].push_back({{"average_bits", p.average_bits}, {"sqnr_db", p.sqnr_db}, {"chosen", p.chosen}});
  return j;
}

double average_weight_bits(const Graph& g, const QuantPlan& plan) {
  std::map<std::string, int> bits;  // a tensor two nodes share counts once, at the higher bits
  for (const auto& w : plan.weights) bits[w.tensor] = std::max(bits[w.tensor], w.bits);
  double total = 0, params = 0;
  for (const auto& [t, b] : bits) {
    const auto it = g.initializers.find(t);
    if (it == g.initializers.end()) throw Error("weight '" + t + "' is not a constant");
    total += static_cast<double>(it->second.numel()) * b;
    params += static_cast<double>(it->second.numel());
  }
  return params > 0 ? total / params : 0.0;
}

void check_weight_bits_budget(const Graph& g, const QuantPlan& plan, double max_average_bits, int high_bits) {
  const double before = average_weight_bits(g, plan);
  if (before > max_average_bits + 1e-9)
    throw Error(fmt::format("--budget weight-bits={}: the plan's weights already average {:.2f} bits (the preset's bits, "
                            "and 8 for the first layer and config overrides); the budget raises low-bit weights to {} "
                            "bits, it does not lower any (use a lower --preset)",
                            max_average_bits, before, high_bits));
}

namespace {

at::Tensor fake_quantized_weight(const at::Tensor& w, const WeightEncoding& e) {
  const at::Tensor scale = at::tensor(e.scale, w.options());
  std::vector<float> zp(e.zero_point.begin(), e.zero_point.end());
  const at::Tensor zero = at::tensor(zp, w.options());
  return fake_quant(w, channel_view(scale, e.axis, w.dim()), channel_view(zero, e.axis, w.dim()), e.qn(), e.qp());
}

}  // namespace

WeightBitsChoice assign_weight_bits(const Graph& g, const QuantPlan& plan, const std::vector<TensorData>& inputs,
                                    double max_average_bits, const std::string& weight_method, const std::string& device,
                                    const std::set<std::string>& fixed, int high_bits,
                                    const std::function<void(size_t, size_t)>& progress,
                                    const OutputWeights& inlier_weights, SensitivityError rank_by) {
  if (rank_by == SensitivityError::Inlier && inlier_weights.empty())
    throw Error("the weight-bits budget ranks by the inlier-weighted output error, but no output weights were given "
                "(the model profile needs a heatmap)");
  if (inputs.empty()) throw Error("the weight-bits budget measures each weight's harm on calibration images; none given");
  WeightBitsChoice out;
  out.budget_bits = max_average_bits;
  out.high_bits = high_bits;
  // One entry per weight tensor (a tensor two nodes share is stored once, at the higher of their bits).
  struct Tensor {
    std::vector<std::string> nodes;
    int64_t params = 0;
    int bits = 0;
  };
  std::map<std::string, Tensor> tensors;
  for (const auto& w : plan.weights) {
    const auto it = g.initializers.find(w.tensor);
    if (it == g.initializers.end()) throw Error("weight-bits budget: node '" + w.node + "': weight '" + w.tensor + "' is not a constant");
    Tensor& t = tensors[w.tensor];
    t.nodes.push_back(w.node);
    t.params = it->second.numel();
    t.bits = std::max(t.bits, w.bits);
  }
  double total_bits = 0;
  for (const auto& [name, t] : tensors) {
    out.params += t.params;
    total_bits += static_cast<double>(t.params) * t.bits;
  }
  if (out.params == 0) throw Error("weight-bits budget: the plan quantizes no weights");
  out.average_bits_before = total_bits / out.params;
  check_weight_bits_budget(g, plan, max_average_bits, high_bits);

  const Encodings low{calibrate_weights(g, plan, weight_method), {}, {}};
  std::vector<std::string> candidates;
  for (const auto& [name, t] : tensors) {
    bool pinned = false;
    for (const auto& n : t.nodes) pinned |= fixed.count(n) > 0;
    if (t.bits < high_bits && !pinned) candidates.push_back(name);
  }

  rt::ExecutorOptions eo;
  eo.device = at::Device(device);
  for (const auto& [name, t] : tensors) eo.replaceable.insert(name);
  rt::Executor ex(g, eo);
  const at::Tensor x = rt::to_aten_batch(inputs).to(eo.device);
  const std::string in = g.inputs.at(0).name;
  const auto reference = ex.run({{in, x}});
  std::map<std::string, at::Tensor> fp, quantized;  // per tensor: FP32, and at its plan bits
  for (const auto& [name, t] : tensors) {
    fp[name] = rt::to_aten(g.initializers.at(name)).to(eo.device);
    quantized[name] = fake_quantized_weight(fp[name], low.weights.at(name));
  }
  std::vector<std::string> outputs;
  for (const auto& o : g.outputs) outputs.push_back(o.name);
  std::map<std::string, at::Tensor> weights;
  for (const auto& [name, w] : inlier_weights) weights[name] = rt::to_aten(w).to(eo.device);
  const auto both_sqnr = [&](const rt::TensorMap& overrides) {
    rt::RunOptions ro;
    ro.overrides = &overrides;
    return quant::output_sqnr(outputs, reference, ex.run({{in, x}}, ro), weights);
  };
  const auto output_sqnr = [&](const rt::TensorMap& overrides) { return both_sqnr(overrides).plain; };
  out.ranked_by = rank_by;
  const size_t steps = candidates.size() + candidates.size() + 1;
  size_t done = 0;
  for (const auto& name : candidates) {
    const Tensor& t = tensors.at(name);
    rt::TensorMap one{{name, quantized.at(name)}};
    const OutputSqnr s = both_sqnr(one);
    WeightLayerSensitivity l;
    l.node = inlierq::join_names(t.nodes, ""), l.tensor = name, l.params = t.params, l.bits = t.bits;
    l.sqnr_db = s.plain, l.inlier_sqnr_db = s.inlier;
    out.layers.push_back(l);
    if (progress) progress(++done, steps);
  }
  // Noise removed per added bit, highest first.
  const auto noise = [&](const WeightLayerSensitivity& l) {
    return std::pow(10.0, -(rank_by == SensitivityError::Inlier ? l.inlier_sqnr_db : l.sqnr_db) / 10.0);
  };
  const auto per_bit = [&](const WeightLayerSensitivity& l) {
    return noise(l) / (static_cast<double>(l.params) * (high_bits - l.bits));
  };
  std::stable_sort(out.layers.begin(), out.layers.end(),
                   [&](const WeightLayerSensitivity& a, const WeightLayerSensitivity& b) { return per_bit(a) > per_bit(b); });
  const double allowed = max_average_bits * out.params;
  for (auto& l : out.layers) {
    const double added = static_cast<double>(l.params) * (high_bits - l.bits);
    if (total_bits + added <= allowed + 1e-6) {
      l.raised = true;
      total_bits += added;
    }
  }
  out.average_bits = total_bits / out.params;
  for (const auto& l : out.layers)
    if (l.raised)
      for (const auto& w : plan.weights)
        if (w.tensor == l.tensor) out.node_bits[w.node] = high_bits;

  // The frontier: every weight quantized, the candidates raised one by one in that order; and the assignment itself.
  rt::TensorMap assigned;
  for (const auto& [name, t] : tensors) assigned[name] = quantized.at(name);
  QuantPlan raised_plan = plan;
  for (auto& w : raised_plan.weights) w.bits = high_bits;
  const auto high_enc = calibrate_weights(g, raised_plan, weight_method);
  std::map<std::string, at::Tensor> high;
  for (const auto& l : out.layers) high[l.tensor] = fake_quantized_weight(fp.at(l.tensor), high_enc.at(l.tensor));
  double bits = out.average_bits_before * out.params;
  rt::TensorMap path = assigned;
  out.frontier.push_back({out.average_bits_before, output_sqnr(path), false});
  if (progress) progress(++done, steps);
  for (const auto& l : out.layers) {
    path[l.tensor] = high.at(l.tensor);
    bits += static_cast<double>(l.params) * (high_bits - l.bits);
    out.frontier.push_back({bits / out.params, output_sqnr(path), false});
    if (progress) progress(++done, steps);
  }
  for (const auto& l : out.layers)
    if (l.raised) assigned[l.tensor] = high.at(l.tensor);
  out.frontier.push_back({out.average_bits, output_sqnr(assigned), true});
  return out;
}

}  // namespace inlierq::quant
