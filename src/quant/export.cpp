// QDQ ONNX, encodings JSON and TensorRT calibration cache from a plan and its encodings.
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <set>

#include <fmt/format.h>

#include "inlierq/error.h"
#include "inlierq/quant.h"
#include "inlierq/transforms.h"
#include "quant/grid_ops.h"

namespace inlierq::quant {
namespace {

TensorData scalar_or_vector(DType dt, const std::vector<int64_t>& shape, size_t n) {
  TensorData t;
  t.dtype = dt;
  t.shape = shape;
  t.bytes.resize(n * dtype_size(dt));
  return t;
}

TensorData float_tensor(const std::vector<float>& v, bool scalar) {
  TensorData t = scalar_or_vector(DType::Float, scalar ? std::vector<int64_t>{} : std::vector<int64_t>{(int64_t)v.size()}, v.size());
  std::memcpy(t.bytes.data(), v.data(), v.size() * sizeof(float));
  return t;
}

// Zero points are uint8 for grids starting at 0 and int8 otherwise, the types QuantizeLinear accepts.
TensorData zero_point_tensor(const std::vector<int64_t>& z, int64_t qn, bool scalar) {
  const DType dt = qn >= 0 ? DType::UInt8 : DType::Int8;
  TensorData t = scalar_or_vector(dt, scalar ? std::vector<int64_t>{} : std::vector<int64_t>{(int64_t)z.size()}, z.size());
  for (size_t i = 0; i < z.size(); ++i) {
    if (dt == DType::UInt8) t.as<uint8_t>()[i] = static_cast<uint8_t>(z[i]);
    else t.as<int8_t>()[i] = static_cast<int8_t>(z[i]);
  }
  return t;
}

std::string unique_name(std::set<std::string>& used, const std::string& base) {
  std::string n = base;
  for (int i = 1; used.count(n); ++i) n = base + "_" + std::to_string(i);
  used.insert(n);
  return n;
}

bool usable_scale(float s) { return std::isfinite(s) && s >= std::numeric_limits<float>::min(); }

// Before any code is computed from them (a NaN scale or weight would make the float-to-int conversion
// undefined). calibrate() refuses non-finite weights already; a graph from elsewhere (reconstruction, an
// embedder's own weights) is checked here.
void check_encoding_scales(const Graph& g, const QuantPlan& plan, const Encodings& enc) {
  for (const auto& w : plan.weights) {
    const auto& we = enc.weights.at(w.tensor);
    if (auto it = g.initializers.find(w.tensor); it != g.initializers.end() && it->second.dtype == DType::Float)
      for (int64_t i = 0; i < it->second.numel(); ++i)
        if (!std::isfinite(it->second.as<float>()[i]))
          throw Error(fmt::format("export: weight '{}' of node '{}' is {} at index {}", w.tensor, w.node,
                                  it->second.as<float>()[i], i));
    for (size_t c = 0; c < we.scale.size(); ++c)
      if (!usable_scale(we.scale[c]))
        throw Error(fmt::format("export: weight '{}' of node '{}' has scale {} in channel {}; a scale must be a normal "
                                "positive float", w.tensor, w.node, we.scale[c], c));
  }
  for (const auto& a : plan.activations) {
    const float s = enc.activations.at(a.value).scale;
    if (!usable_scale(s))
      throw Error(fmt::format("export: activation '{}' has scale {}; a scale must be a normal positive float", a.value, s));
  }
}

// The last guard before a file is written: calibration and reconstruction keep scales in [1e-8, ∞) and
// refuse non-finite weights, biases and activations by name, so a failure here is a bug upstream; it is
// still reported by tensor rather than written as a model that silently computes NaN.
void check_qdq_numbers(const Graph& out, const QuantPlan& plan) {
  std::set<std::string> quantized_nodes;
  for (const auto& w : plan.weights) quantized_nodes.insert(w.node);
  auto float_values = [&](const std::string& name) -> const TensorData* {
    auto it = out.initializers.find(name);
    return it == out.initializers.end() || it->second.dtype != DType::Float ? nullptr : &it->second;
  };
  for (const auto& n : out.nodes) {
    if (n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear") {
      const TensorData* s = n.inputs.size() > 1 ? float_values(n.inputs[1]) : nullptr;
      if (!s) continue;
      for (int64_t i = 0; i < s->numel(); ++i) {
        const float v = s->as<float>()[i];
        if (!usable_scale(v))
          throw Error(fmt::format("export: scale '{}' of {} node '{}' is {} at index {}; a scale must be a normal positive float",
                                  n.inputs[1], n.op_type, n.name, v, i));
      }
    } else if (quantized_nodes.count(n.name)) {
      for (const auto& in : n.inputs)
        if (const TensorData* t = float_values(in))
          for (int64_t i = 0; i < t->numel(); ++i)
            if (!std::isfinite(t->as<float>()[i]))
              throw Error(fmt::format("export: initializer '{}' of node '{}' is {} at index {}", in, n.name, t->as<float>()[i], i));
    }
  }
}

}  // namespace

size_t add_requantizers(const Graph& g, QuantPlan& plan, Encodings& enc) {
  GraphIndex index(g);
  std::map<std::string, const ActEncoding*> grid_of;  // quantized value -> its encoding
  for (const auto& a : plan.activations) grid_of[a.value] = &enc.activations.at(a.value);
  std::vector<ActSite> added;
  for (const auto& n : g.nodes) {
    if (!is_passthrough(n, g)) continue;
    const ActEncoding* e = nullptr;
    bool same = true;
    for (const auto& in : passthrough_data_inputs(n)) {
      auto it = grid_of.find(in);
      if (it == grid_of.end()) { same = false; break; }
      const ActEncoding* x = it->second;
      if (e && (x->scale != e->scale || x->zero_point != e->zero_point || x->bits != e->bits)) { same = false; break; }
      e = x;
    }
    if (!same || !e) continue;
    for (const auto& o : n.outputs) {
      if (o.empty() || grid_of.count(o) || index.is_graph_output(o) || index.consumers(o).empty()) continue;
      ActEncoding r = *e;
      r.value = o;
      enc.activations[o] = r;
      grid_of[o] = &enc.activations.at(o);
      ActSite a;
      a.value = o;
      a.producer = n.name;
      a.bits = r.bits;
      a.symmetric = r.symmetric;
      a.group = r.group;
      a.reason = "requantized " + n.op_type + " output (same grid as its input)";
      added.push_back(std::move(a));
    }
  }
  plan.activations.insert(plan.activations.end(), added.begin(), added.end());
  return added.size();
}

Graph make_qdq_graph(const Graph& g, const QuantPlan& plan, const Encodings& enc, const ExportOptions& opts) {
  if (g.opset < 13) throw Error("QDQ export needs opset ≥ 13 (per-axis DequantizeLinear); the graph is opset " + std::to_string(g.opset));
  check_encoding_scales(g, plan, enc);
  Graph out = g;
  std::set<std::string> used;
  for (const auto& [k, v] : out.initializers) used.insert(k);
  for (const auto& n : out.nodes) {
    used.insert(n.name);
    for (const auto& o : n.outputs) used.insert(o);
  }
  for (const auto& i : out.inputs) used.insert(i.name);

  // The grid scale each quantized compute node reads: its input's site, through value-preserving ops.
  GraphIndex index(g);
  std::function<const ActEncoding*(const std::string&, int)> input_encoding = [&](const std::string& v, int depth) -> const ActEncoding* {
    auto it = enc.activations.find(v);
    if (it != enc.activations.end()) return &it->second;
    const Node* p = index.producer(v);
    if (!p || depth > 1000 || !is_passthrough(*p, g)) return nullptr;
    const ActEncoding* first = nullptr;
    for (const auto& in : passthrough_data_inputs(*p)) {
      const ActEncoding* e = input_encoding(in, depth + 1);
      if (!e || (first && (e->scale != first->scale || e->zero_point != first->zero_point))) return nullptr;
      first = e;
    }
    return first;
  };

  std::map<std::string, const Node*> node_by_name;
  for (const auto& x : out.nodes) node_by_name[x.name] = &x;
  std::vector<Node> weight_dq;
  std::set<std::string> done_weights;
  // Biases of quantized convs whose input grid is known become int32 with scale s_in·s_w (zero point 0),
  // the QDQ convention ONNX Runtime's integer kernels assume: with it, ORT's fused QLinearConv and the
  // float Q/DQ semantics of the file compute the same thing.
  for (const auto& w : plan.weights) {
    const Node* n = node_by_name.count(w.node) ? node_by_name.at(w.node) : nullptr;
    if (!n || n->op_type != "Conv" || n->inputs.size() < 3 || n->inputs[2].empty()) continue;
    auto bit = out.initializers.find(n->inputs[2]);
    if (bit == out.initializers.end() || bit->second.dtype != DType::Float) continue;
    if (index.consumers(n->inputs[2]).size() != 1) continue;  // shared bias: leave it alone
    const ActEncoding* in = input_encoding(n->inputs[0], 0);
    if (!in) continue;
    const WeightEncoding& we = enc.weights.at(w.tensor);
    const TensorData& b = bit->second;
    if (b.numel() != static_cast<int64_t>(we.scale.size())) continue;
    std::vector<float> scale(we.scale.size());
    TensorData q = scalar_or_vector(DType::Int32, b.shape, b.numel());
    bool fits = true;
    for (size_t c = 0; c < scale.size(); ++c) {
      scale[c] = in->scale * we.scale[c];
      const double code = std::nearbyint(static_cast<double>(b.as<float>()[c] / scale[c]));
      // A product that underflows or overflows float is no usable scale either: the bias stays float.
      if (!(std::fabs(code) < 2147483647.0) || !usable_scale(scale[c])) fits = false;
      else q.as<int32_t>()[c] = static_cast<int32_t>(code);
    }
    if (!fits) continue;
    const std::string bias = n->inputs[2];
    const std::string qn = unique_name(used, bias + "_quantized"), sn = unique_name(used, bias + "_scale"),
                      zn = unique_name(used, bias + "_zero_point");
    out.initializers.erase(bias);
    out.initializers[qn] = std::move(q);
    out.initializers[sn] = float_tensor(scale, false);
    TensorData zp = scalar_or_vector(DType::Int32, {static_cast<int64_t>(scale.size())}, scale.size());
    std::memset(zp.bytes.data(), 0, zp.bytes.size());
    out.initializers[zn] = std::move(zp);
    Node dq;
    dq.name = unique_name(used, bias + "_DequantizeLinear");
    dq.op_type = "DequantizeLinear";
    dq.inputs = {qn, sn, zn};
    dq.outputs = {bias};
    dq.attrs["axis"].kind = Attribute::Kind::Int;
    dq.attrs["axis"].i = 0;
    weight_dq.push_back(std::move(dq));
  }

  for (const auto& w : plan.weights) {
    if (!done_weights.insert(w.tensor).second) continue;
    const WeightEncoding& we = enc.weights.at(w.tensor);
    const TensorData& t = out.initializers.at(w.tensor);
    const int64_t rank = static_cast<int64_t>(t.shape.size()), channels = t.shape.at(we.axis);
    if (static_cast<int64_t>(we.scale.size()) != channels)
      throw Error("encoding of weight '" + w.tensor + "' has " + std::to_string(we.scale.size()) + " scales for " +
                  std::to_string(channels) + " channels");
    int64_t inner = 1, outer = 1;
    for (int64_t d = we.axis + 1; d < rank; ++d) inner *= t.shape[d];
    for (int64_t d = 0; d < we.axis; ++d) outer *= t.shape[d];
    const bool shifted = opts.unsigned_weights && we.qn() < 0 && we.qn() >= -128 && we.qp() <= 127;  // stored as code + 128
    const bool unsigned_codes = we.qn() >= 0 || shifted;
    const int64_t shift = shifted ? 128 : 0;
    TensorData q = scalar_or_vector(unsigned_codes ? DType::UInt8 : DType::Int8, t.shape, t.numel());
    const float* src = t.as<float>();
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t i = 0; i < inner; ++i) {
          const int64_t idx = (o * channels + c) * inner + i;
          const double code = std::nearbyint(static_cast<double>(src[idx] / we.scale[c])) + static_cast<double>(we.zero_point[c]);
          const int64_t qc = static_cast<int64_t>(std::min<double>(std::max<double>(code, we.qn()), we.qp()));
          if (unsigned_codes) q.as<uint8_t>()[idx] = static_cast<uint8_t>(qc + shift);
          else q.as<int8_t>()[idx] = static_cast<int8_t>(qc);
        }
    const std::string qn = unique_name(used, w.tensor + "_quantized"), sn = unique_name(used, w.tensor + "_scale"),
                      zn = unique_name(used, w.tensor + "_zero_point");
    out.initializers.erase(w.tensor);
    out.initializers[qn] = std::move(q);
    out.initializers[sn] = float_tensor(we.scale, false);
    if (shifted) {
      std::vector<int64_t> z(we.zero_point.size());
      for (size_t c = 0; c < z.size(); ++c) z[c] = we.zero_point[c] + shift;
      out.initializers[zn] = zero_point_tensor(z, 0, false);
    } else {
      out.initializers[zn] = zero_point_tensor(we.zero_point, we.qn(), false);
    }
    Node dq;
    dq.name = unique_name(used, w.tensor + "_DequantizeLinear");
    dq.op_type = "DequantizeLinear";
    dq.inputs = {qn, sn, zn};
    dq.outputs = {w.tensor};  // the weight keeps its name: consumers are unchanged
    dq.attrs["axis"].kind = Attribute::Kind::Int;
    dq.attrs["axis"].i = we.axis;
    weight_dq.push_back(std::move(dq));
  }

  // Activation Q/DQ pairs, inserted right after each producer so the node list stays topological.
  std::map<std::string, std::vector<Node>> after;  // producer output value -> nodes to insert
  std::map<std::string, std::string> renamed;      // value -> dequantized value seen by consumers
  for (const auto& a : plan.activations) {
    const ActEncoding& ae = enc.activations.at(a.value);
    std::string x = a.value;
    std::vector<Node> chain;
    const std::string sn = unique_name(used, a.value + "_scale"), zn = unique_name(used, a.value + "_zero_point");
    out.initializers[sn] = float_tensor({ae.scale}, true);
    out.initializers[zn] = zero_point_tensor({ae.zero_point}, ae.qn(), true);
    if (ae.bits < 8) {
      // Sub-8-bit grids inside int8 Q/DQ: clip to the b-bit range first, so the int8 codes stay inside it.
      const std::string lo = unique_name(used, a.value + "_clip_min"), hi = unique_name(used, a.value + "_clip_max");
      out.initializers[lo] = float_tensor({static_cast<float>((ae.qn() - ae.zero_point) * static_cast<double>(ae.scale))}, true);
      out.initializers[hi] = float_tensor({static_cast<float>((ae.qp() - ae.zero_point) * static_cast<double>(ae.scale))}, true);
      Node clip;
      clip.name = unique_name(used, a.value + "_Clip");
      clip.op_type = "Clip";
      clip.inputs = {x, lo, hi};
      clip.outputs = {unique_name(used, a.value + "_clipped")};
      x = clip.outputs[0];
      chain.push_back(std::move(clip));
    }
    Node q;
    q.name = unique_name(used, a.value + "_QuantizeLinear");
    q.op_type = "QuantizeLinear";
    q.inputs = {x, sn, zn};
    q.outputs = {unique_name(used, a.value + "_quantized")};
    Node dq;
    dq.name = unique_name(used, a.value + "_DequantizeLinear");
    dq.op_type = "DequantizeLinear";
    dq.inputs = {q.outputs[0], sn, zn};
    dq.outputs = {unique_name(used, a.value + "_dequantized")};
    renamed[a.value] = dq.outputs[0];
    // The new values keep the quantized value's shape: the executor's batch-1 Reshape rule reads exported shapes.
    if (const ValueInfo* vi = g.find_value(a.value)) {
      for (const auto& n : chain) {
        ValueInfo c = *vi;
        c.name = n.outputs[0];
        out.value_info[c.name] = c;
      }
      ValueInfo c = *vi;
      c.name = dq.outputs[0];
      out.value_info[c.name] = c;
    }
    chain.push_back(std::move(q));
    chain.push_back(std::move(dq));
    after[a.value] = std::move(chain);
  }

  std::vector<Node> nodes = std::move(weight_dq);
  std::set<std::string> graph_inputs;
  for (const auto& i : out.inputs) graph_inputs.insert(i.name);
  for (const auto& i : out.inputs)
    if (after.count(i.name)) nodes.insert(nodes.end(), after[i.name].begin(), after[i.name].end());
  for (auto& n : out.nodes) {
    for (auto& i : n.inputs) {
      auto it = renamed.find(i);
      if (it != renamed.end()) i = it->second;
    }
    nodes.push_back(n);
    for (const auto& o : n.outputs)
      if (after.count(o)) nodes.insert(nodes.end(), after[o].begin(), after[o].end());
  }
  out.nodes = std::move(nodes);
  for (const auto& o : out.outputs)
    if (renamed.count(o.name)) throw Error("activation quantizer on graph output '" + o.name + "' is not supported");
  check_qdq_numbers(out, plan);
  return out;
}

nlohmann::json encodings_json(const Encodings& enc) {
  nlohmann::json j;
  j["version"] = "inlierq-encodings-1";
  j["convention"] = "x_hat = (q - zero_point) * scale = (q + offset) * scale; q in [qmin, qmax]";
  j["meta"] = enc.meta;
  auto& acts = j["activation_encodings"] = nlohmann::json::object();
  for (const auto& [name, a] : enc.activations) {
    acts[name] = {{"bitwidth", a.bits}, {"symmetric", a.symmetric}, {"axis", nullptr},
                  {"scale", {a.scale}}, {"zero_point", {a.zero_point}}, {"offset", {-a.zero_point}},
                  {"qmin", a.qn()}, {"qmax", a.qp()},
                  {"min", {(a.qn() - a.zero_point) * static_cast<double>(a.scale)}},
                  {"max", {(a.qp() - a.zero_point) * static_cast<double>(a.scale)}},
                  {"observed_min", a.observed_min}, {"observed_max", a.observed_max}, {"group", a.group}};
  }
  auto& params = j["param_encodings"] = nlohmann::json::object();
  for (const auto& [name, w] : enc.weights) {
    std::vector<double> mn, mx;
    std::vector<int64_t> offset;
    for (size_t c = 0; c < w.scale.size(); ++c) {
      mn.push_back((w.qn() - w.zero_point[c]) * static_cast<double>(w.scale[c]));
      mx.push_back((w.qp() - w.zero_point[c]) * static_cast<double>(w.scale[c]));
      offset.push_back(-w.zero_point[c]);
    }
    params[name] = {{"bitwidth", w.bits}, {"symmetric", w.symmetric}, {"axis", w.axis}, {"scale", w.scale},
                    {"zero_point", w.zero_point}, {"offset", offset}, {"qmin", w.qn()}, {"qmax", w.qp()},
                    {"min", mn}, {"max", mx}};
  }
  return j;
}

std::string tensorrt_cache(const Encodings& enc) {
  // TensorRT's calibration cache: a header line, then "tensor: <hex of the float32 scale>" where
  // scale = amax / 127 for its symmetric int8; amax covers our (possibly asymmetric) range.
  std::string s = "TRT-8601-EntropyCalibration2\n";
  for (const auto& [name, a] : enc.activations) {
    if (a.bits != 8) continue;
    const double lo = (a.qn() - a.zero_point) * static_cast<double>(a.scale);
    const double hi = (a.qp() - a.zero_point) * static_cast<double>(a.scale);
    const float scale = static_cast<float>(std::max(std::fabs(lo), std::fabs(hi)) / 127.0);
    uint32_t bits;
    std::memcpy(&bits, &scale, sizeof bits);
    s += fmt::format("{}: {:08x}\n", name, bits);
  }
  return s;
}

}  // namespace inlierq::quant
