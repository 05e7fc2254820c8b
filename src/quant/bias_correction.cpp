// Empirical bias correction (docs/QUANTIZATION.md §3a): each quantized conv's bias absorbs the mean error of its
// output (after the activation that follows it), measured against the FP32 model on calibration images, in
// topological order so that every conv sees the inputs its corrected predecessors give it.
#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <set>

#include "inlierq/error.h"
#include "inlierq/quant.h"
#include "inlierq/transforms.h"
#include "quant/fake_quant.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"

namespace inlierq::quant {

namespace {

// Every axis but the channels (1): N, H, W for NCHW.
std::vector<int64_t> non_channel_dims(const at::Tensor& t) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < t.dim(); ++d)
    if (d != 1) dims.push_back(d);
  return dims;
}

at::Tensor broadcast_channels(const at::Tensor& v, const at::Tensor& like) {
  std::vector<int64_t> shape(like.dim(), 1);
  shape[1] = v.numel();
  return v.view(shape);
}

// Every target conv gets a bias of its own (a zero one when it has none; a copy when convs share one), so that the
// QDQ graph the shifts are measured on quantizes each bias as the corrected model's export will.
void give_own_biases(Graph& g, const std::set<std::string>& convs) {
  std::map<std::string, int> readers;
  for (const auto& n : g.nodes)
    for (const auto& i : n.inputs) ++readers[i];
  for (auto& n : g.nodes) {
    if (!convs.count(n.name)) continue;
    const TensorData* w = n.inputs.size() > 1 && g.initializers.count(n.inputs[1]) ? &g.initializers.at(n.inputs[1]) : nullptr;
    if (!w || w->shape.empty()) throw Error(n.describe() + ": bias correction needs a constant weight");
    if (n.inputs.size() < 3 || n.inputs[2].empty()) {
      std::string name = n.name + "_bias";
      for (int k = 1; g.initializers.count(name) || g.find_value(name) || readers.count(name); ++k)
        name = n.name + "_bias_" + std::to_string(k);
      TensorData b;
      b.dtype = DType::Float;
      b.shape = {w->shape[0]};
      b.bytes.assign(w->shape[0] * sizeof(float), 0);
      g.initializers[name] = std::move(b);
      n.inputs.resize(3);
      n.inputs[2] = name;
    } else if (readers[n.inputs[2]] > 1) {
      std::string name = n.inputs[2] + "_" + n.name;
      for (int k = 1; g.initializers.count(name) || g.find_value(name) || readers.count(name); ++k)
        name = n.inputs[2] + "_" + n.name + "_" + std::to_string(k);
      g.initializers[name] = g.initializers.at(n.inputs[2]);
      --readers[n.inputs[2]];
      n.inputs[2] = name;
    }
  }
}

// The conv targets: Convs with quantized weights, by name.
std::set<std::string> target_convs(const Graph& g, const QuantPlan& plan) {
  std::set<std::string> weighted, out;
  for (const auto& w : plan.weights) weighted.insert(w.node);
  for (const auto& n : g.nodes)
    if (n.op_type == "Conv" && weighted.count(n.name) && n.outputs.size() == 1) out.insert(n.name);
  return out;
}

// The activation a conv's output goes through, when that is all that reads it: the correction matches the mean of
// the activation's output (what the next layer reads), not of the pre-activation. Matching the pre-activation
// mean moves a ReLU's active region by the error of its dead region (FastestDet: docs/QUANTIZATION.md §3a).
struct Activation {
  enum class Kind { Identity, Relu, LeakyRelu, Clip, Sigmoid, Silu } kind = Kind::Identity;
  double alpha = 0, lo = 0, hi = 0;
  std::string output;  // the activation's output value (empty for Identity)
  at::Tensor apply(const at::Tensor& x) const {
    switch (kind) {
      case Kind::Identity: return x;
      case Kind::Relu: return at::relu(x);
      case Kind::LeakyRelu: return at::where(x > 0, x, x * alpha);
      case Kind::Clip: return at::clamp(x, lo, hi);
      case Kind::Sigmoid: return at::sigmoid(x);
      case Kind::Silu: return x * at::sigmoid(x);
    }
    return x;
  }
  at::Tensor derivative(const at::Tensor& x) const {
    switch (kind) {
      case Kind::Identity: return at::ones_like(x);
      case Kind::Relu: return (x > 0).to(x.scalar_type());
      case Kind::LeakyRelu: return at::where(x > 0, at::ones_like(x), at::full_like(x, alpha));
      case Kind::Clip: return ((x > lo) & (x < hi)).to(x.scalar_type());
      case Kind::Sigmoid: {
        const at::Tensor sg = at::sigmoid(x);
        return sg * (1 - sg);
      }
      case Kind::Silu: {
        const at::Tensor sg = at::sigmoid(x);
        return sg * (1 + x * (1 - sg));
      }
    }
    return at::ones_like(x);
  }
};

double scalar_initializer(const Graph& g, const std::string& name, double dflt) {
  if (name.empty() || !g.initializers.count(name)) return dflt;
  const TensorData& t = g.initializers.at(name);
  return t.dtype == DType::Float && t.numel() == 1 ? t.as<float>()[0] : dflt;
}

Activation activation_after(const Graph& g, const GraphIndex& index, const std::string& value) {
  if (index.is_graph_output(value)) return {};
  const std::vector<const Node*>& readers = index.consumers(value);
  Activation a;
  if (readers.size() == 1) {
    const Node& n = *readers[0];
    a.output = n.outputs.at(0);
    if (n.op_type == "Relu") a.kind = Activation::Kind::Relu;
    else if (n.op_type == "LeakyRelu") a.kind = Activation::Kind::LeakyRelu, a.alpha = n.get_float("alpha", 0.01f);
    else if (n.op_type == "Sigmoid") a.kind = Activation::Kind::Sigmoid;
    else if (n.op_type == "Clip" && n.inputs.at(0) == value) {
      a.kind = Activation::Kind::Clip;
      a.lo = scalar_initializer(g, n.inputs.size() > 1 ? n.inputs[1] : "", n.get_float("min", -3.4e38f));
      a.hi = scalar_initializer(g, n.inputs.size() > 2 ? n.inputs[2] : "", n.get_float("max", 3.4e38f));
    }
    if (a.kind == Activation::Kind::Identity) a.output.clear();
  } else if (readers.size() == 2) {  // x·sigmoid(x)
    const Node* sg = readers[0]->op_type == "Sigmoid" ? readers[0] : readers[1];
    const Node* mul = sg == readers[0] ? readers[1] : readers[0];
    if (sg->op_type == "Sigmoid" && mul->op_type == "Mul" && mul->inputs.size() == 2 &&
        ((mul->inputs[0] == value && mul->inputs[1] == sg->outputs[0]) || (mul->inputs[1] == value && mul->inputs[0] == sg->outputs[0])))
      a.kind = Activation::Kind::Silu, a.output = mul->outputs.at(0);
  }
  return a;
}

at::Tensor quantize(const at::Tensor& x, const ActEncoding* e) {
  if (!e) return x;
  return fake_quant(x, at::full({1}, e->scale, x.options()), at::full({1}, static_cast<double>(e->zero_point), x.options()),
                    e->qn(), e->qp());
}

// Per channel, the shift δ that gives what the next layer reads, Q₂(f(Q₁(q + δ))), the FP32 model's mean f(fp): Q₁
// the quantizer on the conv output if it has one (the ORT layout's SiLU input), Q₂ the one on the activation's
// output. Newton's method from the plain mean difference, each step (halved where it overshoots the quantizers'
// fine staircase) kept only where it brings the means closer; f' may vanish (a ReLU channel dead in both has
// nothing to match).
at::Tensor matching_shift(const Activation& f, const ActEncoding* q1, const ActEncoding* q2, const at::Tensor& fp_full,
                          const at::Tensor& q_full) {
  at::Tensor delta = (fp_full.mean(non_channel_dims(q_full)) - q_full.mean(non_channel_dims(q_full))).to(at::kFloat);
  if (f.kind == Activation::Kind::Identity && !q1 && !q2) return delta.to(at::kDouble);
  // The iterations work on [channels, samples]: at most kMatchSamples evenly spaced values per channel, which
  // estimate a mean to well below the bias grid and keep the cost independent of the image size.
  constexpr int64_t kMatchSamples = 16384;
  const auto rows = [](const at::Tensor& t) { return t.transpose(0, 1).reshape({t.size(1), -1}); };
  at::Tensor fp = rows(fp_full), q = rows(q_full);
  if (q.size(1) > kMatchSamples) {
    const at::Tensor idx = at::linspace(0, static_cast<double>(q.size(1) - 1), kMatchSamples, q.options()).to(at::kLong);
    fp = fp.index_select(1, idx);
    q = q.index_select(1, idx);
  }
  const std::vector<int64_t> dims = {1};
  const at::Tensor target = f.apply(fp).mean(dims);
  const auto output = [&](const at::Tensor& x) { return quantize(f.apply(quantize(x, q1)), q2); };
  const auto residual = [&](const at::Tensor& d) { return target - output(q + d.unsqueeze(1)).mean(dims); };
  at::Tensor r = residual(delta);
  // The plain difference is the first guess only where it already helps; elsewhere start from no shift.
  const at::Tensor r0 = residual(at::zeros_like(delta));
  const at::Tensor start_better = r.abs() < r0.abs();
  delta = at::where(start_better, delta, at::zeros_like(delta));
  r = at::where(start_better, r, r0);
  for (int it = 0; it < 8; ++it) {
    const at::Tensor slope = f.derivative(q + delta.unsqueeze(1)).mean(dims);
    const at::Tensor step = at::where(slope > 1e-6, r / slope.clamp_min(1e-6), at::zeros_like(r));
    // A quantizer makes the mean a fine staircase: a full step can overshoot, so halve it where it does.
    for (double damping : {1.0, 0.5, 0.25}) {
      const at::Tensor next = delta + step * damping, rn = residual(next);
      const at::Tensor better = rn.abs() < r.abs();
      delta = at::where(better, next, delta);
      r = at::where(better, rn, r);
    }
  }
  return delta.to(at::kDouble);
}

// The FP32 graph and the QDQ graph as one, each original node's FP32 copy (values and initializers under "fp/")
// just before its QDQ counterpart: one pass computes both, and each FP32 conv output is alive when the QDQ one is
// made, without storing every activation of the model.
Graph paired_graph(const Graph& fp, const Graph& qdq, const std::string& prefix) {
  for (const auto& n : fp.nodes)
    for (const auto& [k, a] : n.attrs)
      if (a.kind == Attribute::Kind::Graph) throw Error(n.describe() + ": bias correction does not support subgraphs");
  Graph out = qdq;
  std::set<std::string> inputs;
  for (const auto& i : fp.inputs) inputs.insert(i.name);
  const auto rename = [&](const std::string& v) { return v.empty() || inputs.count(v) ? v : prefix + v; };
  for (const auto& [k, t] : fp.initializers) out.initializers[prefix + k] = t;
  for (const auto& [k, v] : fp.value_info) {
    ValueInfo c = v;
    c.name = rename(k);
    out.value_info[c.name] = c;
  }
  std::map<std::string, const Node*> fp_node;
  for (const auto& n : fp.nodes) fp_node[n.name] = &n;
  out.nodes.clear();
  for (const auto& n : qdq.nodes) {
    auto it = fp_node.find(n.name);
    if (it != fp_node.end()) {
      Node c = *it->second;
      c.name = prefix + c.name;
      for (auto& i : c.inputs) i = rename(i);
      for (auto& o : c.outputs) o = rename(o);
      out.nodes.push_back(std::move(c));
    }
    out.nodes.push_back(n);
  }
  for (const auto& o : fp.outputs) {
    ValueInfo c = o;
    c.name = rename(o.name);
    out.outputs.push_back(c);
  }
  return out;
}

}  // namespace

BiasCorrection compute_bias_correction(const Graph& original, const QuantPlan& plan, const Encodings& enc,
                                       const std::vector<TensorData>& inputs, const std::string& device) {
  if (inputs.empty()) throw Error("bias correction needs at least one calibration image");
  BiasCorrection out;
  const std::set<std::string> convs = target_convs(original, plan);
  if (convs.empty()) return out;
  Graph g = original;
  give_own_biases(g, convs);
  std::map<std::string, const Node*> conv_of_output;
  std::map<std::string, Activation> activation;
  const GraphIndex index(g);
  for (const auto& n : g.nodes)
    if (convs.count(n.name)) {
      conv_of_output[n.outputs[0]] = &n;
      activation[n.outputs[0]] = activation_after(g, index, n.outputs[0]);
    }
  // Each hooked conv output is shifted before any consumer reads it, which is what the corrected bias will do. Where
  // the export stores a bias as int32 codes (scale s_in·s_w), the shift is rounded to that grid, so that later convs
  // are corrected for what the written file computes (at 4 bits the grid step is about half a typical shift).
  const Graph qdq = make_qdq_graph(g, plan, enc);
  std::map<std::string, std::vector<float>> bias_grid;  // bias value -> per-channel code step
  for (const auto& n : qdq.nodes)
    if (n.op_type == "DequantizeLinear" && n.inputs.size() >= 2 && qdq.initializers.count(n.inputs[1])) {
      const TensorData& sc = qdq.initializers.at(n.inputs[1]);
      if (sc.dtype == DType::Float) bias_grid[n.outputs[0]].assign(sc.as<float>(), sc.as<float>() + sc.numel());
    }
  // A prefix no name of the QDQ graph starts with, so the FP32 copy's names cannot collide with it.
  std::string prefix = "fp/";
  const auto taken = [&](const std::string& p) {
    const auto starts = [&](const std::string& n) { return n.compare(0, p.size(), p) == 0; };
    for (const auto& [k, v] : qdq.initializers)
      if (starts(k)) return true;
    for (const auto& n : qdq.nodes) {
      if (starts(n.name)) return true;
      for (const auto& o : n.outputs)
        if (starts(o)) return true;
    }
    return false;
  };
  while (taken(prefix)) prefix = "_" + prefix;
  const Graph both = paired_graph(g, qdq, prefix);

  rt::ExecutorOptions eo;
  eo.device = at::Device(device);
  for (const auto& [v, n] : conv_of_output) eo.hooked.insert(v), eo.hooked.insert(prefix + v);
  rt::Executor ex(both, eo);
  std::map<std::string, at::Tensor> fp_value;  // FP32 conv outputs whose QDQ counterpart is not made yet
  rt::RunOptions ro;
  ro.value_hook = [&](const std::string& name, const at::Tensor& t) -> at::Tensor {
    if (name.compare(0, prefix.size(), prefix) == 0) {
      if (conv_of_output.count(name.substr(prefix.size()))) fp_value[name.substr(prefix.size())] = t;
      return t;
    }
    auto it = fp_value.find(name);
    if (it == fp_value.end()) return t;
    const Node& conv = *conv_of_output.at(name);
    const at::Tensor qf = t.to(at::kFloat), ff = it->second.to(at::kFloat);
    const auto site = [&](const std::string& v) -> const ActEncoding* {
      auto e = enc.activations.find(v);
      return v.empty() || e == enc.activations.end() ? nullptr : &e->second;
    };
    const Activation& act = activation.at(name);
    at::Tensor shift = matching_shift(act, site(name), site(act.output), ff, qf).to(at::kCPU).contiguous();
    fp_value.erase(it);
    auto grid = bias_grid.find(conv.inputs[2]);
    if (grid != bias_grid.end() && static_cast<int64_t>(grid->second.size()) == shift.numel()) {
      const at::Tensor step = at::tensor(grid->second, at::kDouble);
      shift = at::round(shift / step) * step;
    }
    BiasShift& s = out.shifts[conv.name];
    s.shift.assign(shift.data_ptr<double>(), shift.data_ptr<double>() + shift.numel());
    const at::Tensor spread = qf.std(non_channel_dims(qf)).to(at::kCPU).to(at::kDouble);
    s.relative = std::sqrt(shift.pow(2).sum().item<double>() / (spread.pow(2).sum().item<double>() + 1e-30));
    return t + broadcast_channels(shift.to(t.device()).to(t.scalar_type()), t);
  };
  ex.run({{g.inputs.at(0).name, rt::to_aten_batch(inputs).to(eo.device)}}, ro);
  return out;
}

void apply_bias_correction(Graph& g, const BiasCorrection& bc) {
  std::set<std::string> convs;
  for (const auto& [node, s] : bc.shifts) convs.insert(node);
  give_own_biases(g, convs);
  std::map<std::string, const Node*> by_name;
  for (const auto& n : g.nodes) by_name[n.name] = &n;
  for (const auto& [node, s] : bc.shifts) {
    auto it = by_name.find(node);
    if (it == by_name.end()) throw Error("bias correction names node '" + node + "', which the graph does not have");
    const Node& n = *it->second;
    TensorData& b = g.initializers.at(n.inputs[2]);
    if (b.dtype != DType::Float || b.numel() != static_cast<int64_t>(s.shift.size()))
      throw Error(n.describe() + ": bias '" + n.inputs[2] + "' is not a float initializer of " + std::to_string(s.shift.size()) +
                  " values; cannot correct it");
    float* v = b.as<float>();
    for (size_t c = 0; c < s.shift.size(); ++c) v[c] = static_cast<float>(v[c] + s.shift[c]);
  }
}

}  // namespace inlierq::quant
