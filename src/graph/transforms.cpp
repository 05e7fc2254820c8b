#include "inlierq/transforms.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "inlierq/error.h"
#include "inlierq/onnx_io.h"

namespace inlierq {

GraphIndex::GraphIndex(const Graph& g) {
  for (const auto& n : g.nodes) {
    for (const auto& o : n.outputs)
      if (!o.empty()) producer_[o] = &n;
    for (const auto& i : n.inputs)
      if (!i.empty()) consumers_[i].push_back(&n);
  }
  for (const auto& o : g.outputs) outputs_.push_back(o.name);
}

const Node* GraphIndex::producer(const std::string& value) const {
  auto it = producer_.find(value);
  return it == producer_.end() ? nullptr : it->second;
}

const std::vector<const Node*>& GraphIndex::consumers(const std::string& value) const {
  static const std::vector<const Node*> none;
  auto it = consumers_.find(value);
  return it == consumers_.end() ? none : it->second;
}

bool GraphIndex::is_graph_output(const std::string& value) const {
  return std::find(outputs_.begin(), outputs_.end(), value) != outputs_.end();
}

namespace {

const TensorData* float_initializer(const Graph& g, const std::string& name) {
  auto it = g.initializers.find(name);
  if (it == g.initializers.end() || it->second.dtype != DType::Float) return nullptr;
  return &it->second;
}

// A name not yet used by any initializer or value of g.
std::string fresh_name(const Graph& g, const std::string& base) {
  std::set<std::string> used;
  for (const auto& [k, v] : g.initializers) used.insert(k);
  for (const auto& n : g.nodes)
    for (const auto& o : n.outputs) used.insert(o);
  std::string name = base;
  for (int i = 1; used.count(name); ++i) name = base + "_" + std::to_string(i);
  return name;
}

}  // namespace

int fold_batchnorm(Graph& g) {
  int folded = 0;
  for (bool changed = true; changed;) {
    changed = false;
    GraphIndex index(g);
    for (size_t bi = 0; bi < g.nodes.size() && !changed; ++bi) {
      const Node& bn = g.nodes[bi];
      if (bn.op_type != "BatchNormalization" || !bn.domain.empty() || bn.inputs.size() != 5) continue;
      if (std::count_if(bn.outputs.begin(), bn.outputs.end(), [](const std::string& o) { return !o.empty(); }) != 1 ||
          bn.outputs[0].empty() || bn.get_int("training_mode", 0) != 0)
        continue;
      const Node* conv = index.producer(bn.inputs[0]);
      if (!conv || conv->op_type != "Conv" || !conv->domain.empty() || index.consumers(bn.inputs[0]).size() != 1 ||
          index.is_graph_output(bn.inputs[0]))
        continue;
      const TensorData* w = float_initializer(g, conv->inputs.at(1));
      const TensorData *gamma = float_initializer(g, bn.inputs[1]), *beta = float_initializer(g, bn.inputs[2]),
                       *mean = float_initializer(g, bn.inputs[3]), *var = float_initializer(g, bn.inputs[4]);
      if (!w || !gamma || !beta || !mean || !var || w->shape.empty()) continue;
      const int64_t cout = w->shape[0];
      for (const TensorData* t : {gamma, beta, mean, var})
        if (t->numel() != cout)
          throw Error(bn.describe() + ": parameter has " + std::to_string(t->numel()) + " elements but " +
                      conv->describe() + " has " + std::to_string(cout) + " output channels");
      const TensorData* b = conv->inputs.size() > 2 && !conv->inputs[2].empty() ? float_initializer(g, conv->inputs[2]) : nullptr;
      if (conv->inputs.size() > 2 && !conv->inputs[2].empty() && !b) continue;  // bias computed at run time
      const float eps = bn.get_float("epsilon", 1e-5f);

      TensorData new_w = *w, new_b;
      new_b.dtype = DType::Float;
      new_b.shape = {cout};
      new_b.bytes.resize(cout * sizeof(float));
      const int64_t per_channel = w->numel() / cout;
      for (int64_t c = 0; c < cout; ++c) {
        const double k = gamma->as<float>()[c] / std::sqrt(static_cast<double>(var->as<float>()[c]) + eps);
        float* wc = new_w.as<float>() + c * per_channel;
        for (int64_t i = 0; i < per_channel; ++i) wc[i] = static_cast<float>(wc[i] * k);
        const double bias = b ? b->as<float>()[c] : 0.0;
        new_b.as<float>()[c] = static_cast<float>((bias - mean->as<float>()[c]) * k + beta->as<float>()[c]);
      }
      // Weights shared with another node must not change under it.
      const std::string w_name = fresh_name(g, conv->inputs[1] + "_bnfold");
      const std::string b_name = fresh_name(g, conv->name + "_bnfold_bias");
      g.initializers[w_name] = std::move(new_w);
      g.initializers[b_name] = std::move(new_b);
      const std::string out = bn.outputs[0], conv_name = conv->name;
      g.nodes.erase(g.nodes.begin() + bi);
      for (auto& n : g.nodes) {
        if (n.name != conv_name) continue;
        n.inputs.resize(3);
        n.inputs[1] = w_name;
        n.inputs[2] = b_name;
        n.outputs[0] = out;
      }
      // Drop initializers nobody uses any more.
      std::set<std::string> used;
      for (const auto& n : g.nodes) used.insert(n.inputs.begin(), n.inputs.end());
      for (auto it = g.initializers.begin(); it != g.initializers.end();)
        it = used.count(it->first) || std::any_of(g.outputs.begin(), g.outputs.end(),
                                                  [&](const ValueInfo& o) { return o.name == it->first; })
                 ? std::next(it)
                 : g.initializers.erase(it);
      ++folded;
      changed = true;
    }
  }
  return folded;
}

int drop_empty_resize_scales(Graph& g) {
  int changed = 0;
  for (auto& n : g.nodes) {
    if (n.op_type != "Resize" || n.inputs.size() < 4 || n.inputs[2].empty() || n.inputs[3].empty()) continue;
    auto it = g.initializers.find(n.inputs[2]);
    if (it != g.initializers.end() && it->second.numel() == 0) {
      n.inputs[2].clear();
      ++changed;
    }
  }
  return changed;
}

Graph prepare_for_quantization(const Graph& g, const std::string& origin, PrepareReport* report) {
  Graph out = g;
  PrepareReport r;
  r.original_opset = g.opset;
  r.folded_batchnorms = fold_batchnorm(out);
  if (out.opset < 13) {
    out = convert_opset(out, 13, origin);
    drop_empty_resize_scales(out);
  }
  r.opset = out.opset;
  if (report) *report = r;
  return out;
}

}  // namespace inlierq
