// Where quantizers go, derived from the graph alone (ALGORITHMS.md §3).
#include <algorithm>
#include <functional>
#include <map>
#include <numeric>
#include <set>

#include <fmt/format.h>

#include "inlierq/error.h"
#include "inlierq/quant.h"
#include "inlierq/transforms.h"
#include "graph/op_traits.h"
#include "quant/grid_ops.h"

namespace inlierq::quant {
namespace {

bool is_compute(const Node& n, const Graph& g) {
  if (!has_role(n, kCompute) || n.inputs.size() < 2) return false;
  auto it = g.initializers.find(n.inputs[1]);
  return it != g.initializers.end() && it->second.dtype == DType::Float;
}

// Element-wise activations a compute block may end with.
bool is_unary_activation(const Node& n) { return has_role(n, kBlockActivation) && !n.outputs.empty(); }

// The Mul of x·sigmoid(x) when v's consumers are exactly Sigmoid(v) and v · Sigmoid(v), the Sigmoid feeding
// nothing else; nullptr otherwise.
const Node* silu_mul(const GraphIndex& index, const std::string& v) {
  const auto& cons = index.consumers(v);
  if (cons.size() != 2 || index.is_graph_output(v)) return nullptr;
  const Node* sig = cons[0]->op_type == "Sigmoid" ? cons[0] : cons[1]->op_type == "Sigmoid" ? cons[1] : nullptr;
  const Node* mul = cons[0]->op_type == "Mul" ? cons[0] : cons[1]->op_type == "Mul" ? cons[1] : nullptr;
  if (!sig || !mul || sig->inputs[0] != v || mul->inputs.size() != 2) return nullptr;
  const auto& sig_cons = index.consumers(sig->outputs[0]);
  if (sig_cons.size() != 1 || sig_cons[0] != mul) return nullptr;
  const bool pair = (mul->inputs[0] == v && mul->inputs[1] == sig->outputs[0]) || (mul->inputs[1] == v && mul->inputs[0] == sig->outputs[0]);
  return pair ? mul : nullptr;
}

// The Relu or Clip that ONNX Runtime folds into the QuantizeLinear after it (ReluQuantFusion,
// ClipQuantFusion, when the quantized range starts at zero): v's only consumer, reading v. nullptr otherwise.
const Node* foldable_activation(const GraphIndex& index, const std::string& v) {
  const auto& cons = index.consumers(v);
  if (index.is_graph_output(v) || cons.size() != 1 || cons[0]->inputs.empty() || cons[0]->inputs[0] != v ||
      !has_role(*cons[0], kFoldsIntoQuantize))
    return nullptr;
  return cons[0];
}

// Spatial part of a value's inferred shape (empty when unknown or not 4-D).
std::vector<int64_t> spatial_shape(const Graph& g, const std::string& v) {
  const ValueInfo* vi = g.find_value(v);
  if (!vi || !vi->has_shape || vi->shape.size() < 3) return {};
  std::vector<int64_t> s;
  for (size_t i = 2; i < vi->shape.size(); ++i) s.push_back(vi->shape[i].value);
  return s;
}

}  // namespace

std::vector<std::string> find_head_nodes(const Graph& g) {
  GraphIndex index(g);
  std::vector<const Node*> compute;
  std::map<std::string, int> id;
  for (const auto& n : g.nodes)
    if (is_compute(n, g)) {
      id[n.name] = static_cast<int>(compute.size());
      compute.push_back(&n);
    }
  const int nc = static_cast<int>(compute.size());
  if (nc == 0) return {};
  // next[i]: compute nodes reached from i's outputs without passing another compute node.
  std::vector<std::set<int>> next(nc);
  for (int i = 0; i < nc; ++i) {
    std::set<const Node*> seen;
    std::function<void(const Node*)> walk = [&](const Node* n) {
      for (const auto& o : n->outputs)
        for (const Node* c : index.consumers(o)) {
          if (!seen.insert(c).second) continue;
          auto it = id.find(c->name);
          if (it != id.end() && is_compute(*c, g)) next[i].insert(it->second);
          else walk(c);
        }
    };
    walk(compute[i]);
  }
  // Nodes are topologically sorted, so a reverse sweep sees successors first.
  std::vector<std::set<int>> leaves_of(nc);
  std::vector<int> depth(nc, 0);
  for (int i = nc - 1; i >= 0; --i) {
    if (next[i].empty()) leaves_of[i] = {i};
    for (int j : next[i]) {
      leaves_of[i].insert(leaves_of[j].begin(), leaves_of[j].end());
      depth[i] = std::max(depth[i], depth[j] + 1);
    }
  }
  // Prediction convs (leaves) grouped into pyramid levels by their output's spatial size.
  std::map<std::vector<int64_t>, std::set<int>> levels;
  for (int i = 0; i < nc; ++i)
    if (next[i].empty()) levels[spatial_shape(g, compute[i]->outputs[0])].insert(i);
  std::set<int> all_leaves;
  for (auto& [k, v] : levels) all_leaves.insert(v.begin(), v.end());

  std::vector<std::string> head;
  auto in_level = [&](int i, const std::set<int>& lv) {
    return std::includes(lv.begin(), lv.end(), leaves_of[i].begin(), leaves_of[i].end());
  };
  if (levels.size() >= 2) {
    // A level's region: compute nodes that feed only that level's predictions. The shallowest level's
    // region is its head alone (its neck output also feeds the next level); its depth bounds the head
    // of the deepest level, whose region also contains the neck above it.
    int head_depth = std::numeric_limits<int>::max();
    for (auto& [k, lv] : levels) {
      int d = 0;
      for (int i = 0; i < nc; ++i)
        if (in_level(i, lv)) d = std::max(d, depth[i]);
      head_depth = std::min(head_depth, d);
    }
    for (int i = 0; i < nc; ++i)
      for (auto& [k, lv] : levels)
        if (in_level(i, lv) && depth[i] <= head_depth) head.push_back(compute[i]->name);
  } else {
    // One level: the branches that feed only some of the predictions (e.g. objectness / box / class).
    for (int i = 0; i < nc; ++i)
      if (leaves_of[i] != all_leaves || (all_leaves.size() == 1 && next[i].empty())) head.push_back(compute[i]->name);
  }
  return head;
}

std::vector<std::string> integer_compute_nodes(const Graph& g, const QuantPlan& plan) {
  GraphIndex index(g);
  std::set<std::string> sites, int8_outputs;
  for (const auto& a : plan.activations) {
    sites.insert(a.value);
    if (a.bits == 8) int8_outputs.insert(a.value);  // a sub-8-bit Q has a Clip before it, which stops the fusion
  }
  auto on_grid = [&](const std::string& v) {
    return from_sources_through_passthrough(g, index, v, [&](const std::string& x) { return sites.count(x) > 0; });
  };
  std::map<std::string, const Node*> node_by_name;
  for (const auto& x : g.nodes) node_by_name[x.name] = &x;
  std::vector<std::string> out;
  for (const auto& w : plan.weights) {
    auto it = node_by_name.find(w.node);
    if (it == node_by_name.end() || it->second->outputs.empty() || !on_grid(it->second->inputs[0])) continue;
    std::string v = it->second->outputs[0];
    if (const Node* act = foldable_activation(index, v); act && !sites.count(v)) v = act->outputs[0];
    if (int8_outputs.count(v)) out.push_back(w.node);
  }
  return out;
}

QuantPlan derive_plan(const Graph& g, const PlacementOptions& opts) {
  for (int b : {opts.weight_bits, opts.act_bits, opts.first_layer_bits, opts.head_last_bits})
    if (b < 2 || b > 8) throw Error("bit width " + std::to_string(b) + " is outside 2..8");
  GraphIndex index(g);
  QuantPlan plan;
  const QdqLayout layout =
      opts.layout != QdqLayout::Auto ? opts.layout : opts.act_bits >= 8 ? QdqLayout::Ort : QdqLayout::Block;
  plan.layout = layout;
  std::set<std::string> node_names, value_names;
  for (const auto& n : g.nodes) {
    node_names.insert(n.name);
    value_names.insert(n.outputs.begin(), n.outputs.end());
  }
  std::set<std::string> excluded(opts.exclude.begin(), opts.exclude.end());
  std::map<std::string, int> weight_bits_override, act_bits_override;
  if (!opts.overrides.is_null()) {
    if (!opts.overrides.is_object() || (opts.overrides.contains("nodes") && !opts.overrides["nodes"].is_object()))
      throw Error("quantization config: expected {\"nodes\": {\"<name>\": {...}}}");
    for (auto& [k, v] : opts.overrides.items())
      if (k != "nodes" && k != "exclude") throw Error("quantization config: unknown key '" + k + "'");
    if (opts.overrides.contains("exclude"))
      for (const auto& e : opts.overrides["exclude"]) excluded.insert(e.get<std::string>());
    if (opts.overrides.contains("nodes"))
      for (auto& [name, o] : opts.overrides["nodes"].items()) {
        if (!node_names.count(name) && !value_names.count(name))
          throw Error("quantization config: no node or value named '" + name + "'");
        for (auto& [k, v] : o.items()) {
          if (k == "weight_bits") weight_bits_override[name] = v.get<int>();
          else if (k == "act_bits") act_bits_override[name] = v.get<int>();
          else if (k == "exclude") { if (v.get<bool>()) excluded.insert(name); }
          else throw Error("quantization config: node '" + name + "': unknown key '" + k + "'");
        }
      }
    for (auto* m : {&weight_bits_override, &act_bits_override})
      for (auto& [name, b] : *m)
        if (b < 2 || b > 8) throw Error("quantization config: node '" + name + "': bit width " + std::to_string(b) + " is outside 2..8");
  }
  for (const auto& e : excluded)
    if (!node_names.count(e) && !value_names.count(e)) throw Error("--exclude: no node or value named '" + e + "'");

  const auto head_list = find_head_nodes(g);
  const std::set<std::string> head(head_list.begin(), head_list.end());
  plan.head_nodes = head_list;

  // Convs reading the network input (through non-compute ops only).
  std::set<std::string> graph_inputs;
  for (const auto& in : g.inputs) graph_inputs.insert(in.name);
  std::map<std::string, bool> reads_input_memo;
  std::function<bool(const std::string&)> reads_input = [&](const std::string& v) -> bool {
    if (graph_inputs.count(v)) return true;
    auto it = reads_input_memo.find(v);
    if (it != reads_input_memo.end()) return it->second;
    reads_input_memo[v] = false;
    const Node* p = index.producer(v);
    bool r = false;
    if (p && !is_compute(*p, g))
      for (const auto& i : p->inputs)
        if (!i.empty() && !g.is_initializer(i) && reads_input(i)) r = true;
    return reads_input_memo[v] = r;
  };

  // Leaves of the head: compute nodes with no compute node after them.
  std::set<std::string> head_leaves;
  {
    std::set<std::string> feeds_compute;
    for (const auto& n : g.nodes)
      if (is_compute(n, g)) {
        std::set<const Node*> seen;
        bool found = false;
        std::function<void(const Node*)> walk = [&](const Node* x) {
          for (const auto& o : x->outputs)
            for (const Node* c : index.consumers(o)) {
              if (found || !seen.insert(c).second) continue;
              if (is_compute(*c, g)) found = true;
              else walk(c);
            }
        };
        walk(&n);
        if (!found) head_leaves.insert(n.name);
      }
  }

  // Whether a value reaches a compute node that will be quantized, through non-compute ops only. A block
  // end read only by floating-point nodes (the detection head, exclusions) feeds no integer compute, and
  // QDrop's COCO code leaves such FPN outputs unquantized; here that is an option, because on FastestDet
  // W4A4 the 4-bit grid there scored better (docs/RECONSTRUCTION.md, "Faithful to the references").
  auto will_quantize = [&](const Node& c) {
    return is_compute(c, g) && !excluded.count(c.name) && (opts.quantize_head || !head.count(c.name));
  };
  std::map<std::string, bool> reaches_memo;
  std::function<bool(const std::string&)> reaches_quantized_compute = [&](const std::string& v) -> bool {
    auto it = reaches_memo.find(v);
    if (it != reaches_memo.end()) return it->second;
    reaches_memo[v] = false;
    bool r = false;
    for (const Node* c : index.consumers(v)) {
      if (is_compute(*c, g)) r = r || will_quantize(*c);
      else
        for (const auto& o : c->outputs) r = r || reaches_quantized_compute(o);
      if (r) break;
    }
    return reaches_memo[v] = r;
  };

  auto float_node = [&](const std::string& n, const std::string& why) {
    plan.float_nodes.push_back(n);
    plan.float_reasons.push_back(why);
  };

  // ---- weights and block outputs
  struct Candidate {
    std::string value, reason, block;  // block: the compute node whose block ends here, if any
    bool image = false;
    bool silu_input = false;
  };
  std::vector<Candidate> sites;
  std::set<std::string> site_values;
  auto add_site = [&](const std::string& v, const std::string& why, const std::string& block, bool image = false,
                      bool silu_input = false) {
    if (site_values.insert(v).second) sites.push_back({v, why, block, image, silu_input});
  };
  std::set<std::string> quantized_compute;
  for (const auto& n : g.nodes) {
    if (!is_compute(n, g)) continue;
    if (excluded.count(n.name)) { float_node(n.name, "excluded"); continue; }
    const bool in_head = head.count(n.name) != 0;
    if (in_head && !opts.quantize_head) { float_node(n.name, "detection head"); continue; }
    WeightSite w;
    w.node = n.name;
    w.tensor = n.inputs[1];
    w.symmetric = opts.weight_symmetric;
    const bool first = reads_input(n.inputs[0]);
    if (first) plan.first_nodes.push_back(n.name);
    w.axis = weight_channel_axis(n, g);
    if (weight_bits_override.count(n.name)) { w.bits = weight_bits_override[n.name]; w.reason = "config override"; }
    else if (opts.budget_weight_bits.count(n.name)) { w.bits = opts.budget_weight_bits.at(n.name); w.reason = "weight-bits budget"; }
    else if (first) { w.bits = opts.first_layer_bits; w.reason = "first layer"; }
    else if (in_head && head_leaves.count(n.name)) { w.bits = opts.head_last_bits; w.reason = "head prediction layer"; }
    else { w.bits = opts.weight_bits; w.reason = in_head ? "head" : "backbone/neck"; }
    plan.weights.push_back(w);
    quantized_compute.insert(n.name);
    if (in_head && head_leaves.count(n.name)) continue;  // prediction outputs stay in floating point

    std::string v = n.outputs[0];
    std::string why = n.op_type + " output";
    if (layout == QdqLayout::Ort) {
      // The compute output itself, so that the backend's QLinearConv writes it; after a Relu / Clip that ORT
      // folds into the QuantizeLinear (an asymmetric range over a Relu's output starts at zero).
      if (const Node* act = foldable_activation(index, v); act && !opts.act_symmetric) {
        v = act->outputs[0];
        why += "+" + act->op_type;
      }
      if (!index.is_graph_output(v)) add_site(v, why, n.name, false, silu_mul(index, v) != nullptr);
      continue;
    }
    // Block end: follow the fused activation (unary or x·sigmoid(x)), then a residual Add.
    auto follow_activation = [&]() {
      for (;;) {
        const auto& cons = index.consumers(v);
        if (index.is_graph_output(v)) return;
        if (cons.size() == 1 && is_unary_activation(*cons[0]) && cons[0]->inputs[0] == v) {
          v = cons[0]->outputs[0];
          why = n.op_type + "+" + cons[0]->op_type;
          continue;
        }
        if (const Node* mul = silu_mul(index, v)) {
          v = mul->outputs[0];
          why = n.op_type + "+SiLU";
          continue;
        }
        return;
      }
    };
    follow_activation();
    const auto& cons = index.consumers(v);
    if (cons.size() == 1 && !index.is_graph_output(v) && has_role(*cons[0], kResidualSum) &&
        cons[0]->inputs.size() == 2 && !g.is_initializer(cons[0]->inputs[0]) && !g.is_initializer(cons[0]->inputs[1])) {
      v = cons[0]->outputs[0];
      why += " → residual Add";
      follow_activation();
    }
    if (index.is_graph_output(v)) continue;
    if (opts.float_inputs_of_float_nodes && !reaches_quantized_compute(v)) {
      plan.float_activations.push_back(v);
      plan.float_activation_reasons.push_back(n.op_type + " output read only by floating-point nodes (" + n.name + ")");
      continue;
    }
    add_site(v, why, n.name);
  }

  // ---- ORT layout: element-wise and pooling ops with an integer kernel, whose data inputs are all
  // quantized, write quantized outputs too (QLinearSigmoid / LeakyRelu / Mul / Add / AveragePool), so that
  // x·sigmoid(x) and residual Adds between quantized convs run on integers. Nodes are in topological
  // order, so one sweep follows chains.
  if (layout == QdqLayout::Ort) {
    auto on_grid = [&](const std::string& v) {
      return from_sources_through_passthrough(g, index, v, [&](const std::string& x) { return site_values.count(x) > 0; });
    };
    for (const auto& n : g.nodes) {
      if (!has_role(n, kIntegerKernel) || n.outputs.empty() || excluded.count(n.name)) continue;
      const std::string& out = n.outputs[0];
      if (site_values.count(out) || index.is_graph_output(out) || index.consumers(out).empty()) continue;
      const auto data = data_inputs(n);
      if (data.size() < static_cast<size_t>(op_traits(n)->data_inputs)) continue;
      bool ok = true;
      for (const auto& in : data) ok = ok && !g.is_initializer(in) && on_grid(in);
      if (ok) add_site(out, n.op_type + " output (QLinear" + n.op_type + ")", "");
    }
  }

  // ---- every quantized compute node reads a value on a grid (or the raw network input)
  std::function<void(const std::string&, const std::string&)> ensure_grid = [&](const std::string& v,
                                                                                const std::string& user) {
    if (v.empty() || g.is_initializer(v) || site_values.count(v)) return;
    if (graph_inputs.count(v)) {
      // A float network input would leave the first layer (and the pooling after it) in float in ORT.
      if (layout == QdqLayout::Ort) add_site(v, "network input, read by " + user, "", true);
      return;
    }
    const Node* p = index.producer(v);
    if (p && p->op_type == "Concat" && layout == QdqLayout::Ort && !opts.share_concat_scales && !index.is_graph_output(v)) {
      // Inputs on different grids: the Concat's output gets a grid of its own (QLinearConcat requantizes).
      add_site(v, "Concat output (requantized), input of " + user, "");
      return;
    }
    if (p && is_passthrough(*p, g)) {
      for (const auto& i : passthrough_data_inputs(*p)) ensure_grid(i, user);
      return;
    }
    if (index.is_graph_output(v)) return;
    add_site(v, "input of " + user, "");
  };
  // Values computed from the network input by grid-preserving ops alone (YOLOX's Focus: four strided Slices
  // and a Concat). Quantizing the compute node's input there, not the raw input, leaves those ops in float,
  // where ORT fuses them into one SpaceToDepth; on uint8 they stay Slices (1.5 ms of YOLOX-Nano's 25 ms).
  auto image_only = [&](const std::string& v) {
    return from_sources_through_passthrough(g, index, v, [&](const std::string& x) { return graph_inputs.count(x) > 0; });
  };
  for (const auto& n : g.nodes) {
    if (!quantized_compute.count(n.name)) continue;
    const std::string& in = n.inputs[0];
    if (layout == QdqLayout::Ort && !site_values.count(in) && !graph_inputs.count(in) && image_only(in)) {
      add_site(in, "network input after grid-preserving ops, read by " + n.name, "", true);
      continue;
    }
    ensure_grid(in, n.name);
  }

  // ---- exclusions by value name, and per-value bit overrides
  std::vector<ActSite> acts;
  for (const auto& [v, why, block, image, silu_input] : sites) {
    const Node* p = index.producer(v);
    if (excluded.count(v) || (p && excluded.count(p->name))) continue;
    ActSite a;
    a.value = v;
    a.producer = p ? p->name : "";
    a.symmetric = opts.act_symmetric;
    a.bits = opts.act_bits;
    a.reason = why;
    a.image = image;
    a.silu_input = silu_input;
    if (image) a.bits = opts.first_layer_bits;  // pixels, read by the first layer
    if (act_bits_override.count(v)) a.bits = act_bits_override[v], a.reason += ", config override";
    else if (p && act_bits_override.count(p->name)) a.bits = act_bits_override[p->name], a.reason += ", config override";
    else if (!block.empty() && act_bits_override.count(block)) a.bits = act_bits_override[block], a.reason += ", config override";
    acts.push_back(a);
  }

  // ---- Concat inputs share one scale: union the sites that reach one Concat through pass-through ops.
  std::map<std::string, int> site_index;
  for (size_t i = 0; i < acts.size(); ++i) site_index[acts[i].value] = static_cast<int>(i);
  std::vector<int> parent(acts.size());
  std::iota(parent.begin(), parent.end(), 0);
  std::function<int(int)> find = [&](int x) { return parent[x] == x ? x : parent[x] = find(parent[x]); };
  std::function<void(const std::string&, std::vector<int>&)> sources = [&](const std::string& v, std::vector<int>& out) {
    auto it = site_index.find(v);
    if (it != site_index.end()) { out.push_back(it->second); return; }
    const Node* p = index.producer(v);
    if (p && is_passthrough(*p, g))
      for (const auto& i : passthrough_data_inputs(*p)) sources(i, out);
  };
  for (const auto& n : g.nodes) {
    if (!opts.share_concat_scales || n.op_type != "Concat" || head.count(n.name)) continue;
    std::vector<int> src;
    for (const auto& i : n.inputs) sources(i, src);
    for (size_t k = 1; k < src.size(); ++k) parent[find(src[k])] = find(src[0]);
  }
  std::map<int, int> group_id;
  for (size_t i = 0; i < acts.size(); ++i) {
    int r = find(static_cast<int>(i));
    if (!group_id.count(r)) group_id[r] = static_cast<int>(group_id.size());
    acts[i].group = group_id[r];
  }
  // A shared scale needs one bit width: the group takes its widest member's.
  std::map<int, int> group_bits;
  for (const auto& a : acts) group_bits[a.group] = std::max(group_bits[a.group], a.bits);
  for (auto& a : acts) a.bits = group_bits[a.group];
  plan.num_groups = static_cast<int>(group_id.size());
  plan.activations = std::move(acts);
  return plan;
}

const NameTable<QdqLayout>& layout_names() {
  static const NameTable<QdqLayout> t{{{QdqLayout::Auto, "auto"}, {QdqLayout::Ort, "ort"}, {QdqLayout::Block, "block"}}};
  return t;
}
const char* layout_name(QdqLayout l) { return layout_names().name(l).c_str(); }
QdqLayout parse_layout(const std::string& name) { return layout_names().parse(name, "--layout"); }

nlohmann::json QuantPlan::to_json() const {
  nlohmann::json j;
  j["layout"] = layout_name(layout);
  j["weights"] = nlohmann::json::array();
  for (const auto& w : weights)
    j["weights"].push_back({{"node", w.node}, {"tensor", w.tensor}, {"bits", w.bits}, {"symmetric", w.symmetric},
                            {"axis", w.axis}, {"reason", w.reason}});
  j["activations"] = nlohmann::json::array();
  for (const auto& a : activations)
    j["activations"].push_back({{"value", a.value}, {"producer", a.producer}, {"bits", a.bits},
                                {"symmetric", a.symmetric}, {"group", a.group}, {"image", a.image}, {"silu_input", a.silu_input}, {"reason", a.reason}});
  j["head_nodes"] = head_nodes;
  j["first_nodes"] = first_nodes;
  j["float_nodes"] = nlohmann::json::array();
  for (size_t i = 0; i < float_nodes.size(); ++i) j["float_nodes"].push_back({{"node", float_nodes[i]}, {"reason", float_reasons[i]}});
  j["groups"] = num_groups;
  j["float_activations"] = nlohmann::json::array();
  for (size_t i = 0; i < float_activations.size(); ++i)
    j["float_activations"].push_back({{"value", float_activations[i]}, {"reason", float_activation_reasons[i]}});
  return j;
}

std::string QuantPlan::format() const {
  std::string s = fmt::format("layout {}; weights: {} quantized, {} in floating point; activations: {} quantizers in {} scale groups\n",
                              layout_name(layout), weights.size(), float_nodes.size(), activations.size(), num_groups);
  s += fmt::format("detection head ({} compute nodes): ", head_nodes.size());
  for (size_t i = 0; i < head_nodes.size(); ++i) s += (i ? ", " : "") + head_nodes[i];
  s += "\n\nweight quantizers\n";
  s += fmt::format("  {:<28} {:<36} {:>4} {:>5} {:>4}  {}\n", "node", "tensor", "bits", "sym", "axis", "why");
  for (const auto& w : weights)
    s += fmt::format("  {:<28} {:<36} {:>4} {:>5} {:>4}  {}\n", w.node, w.tensor, w.bits, w.symmetric ? "yes" : "no", w.axis, w.reason);
  s += "\nactivation quantizers\n";
  s += fmt::format("  {:<28} {:<28} {:>4} {:>5} {:>5}  {}\n", "value", "producer", "bits", "sym", "group", "why");
  for (const auto& a : activations)
    s += fmt::format("  {:<28} {:<28} {:>4} {:>5} {:>5}  {}\n", a.value, a.producer, a.bits, a.symmetric ? "yes" : "no", a.group, a.reason);
  if (!float_activations.empty()) {
    s += "\nactivations left in floating point\n";
    for (size_t i = 0; i < float_activations.size(); ++i)
      s += fmt::format("  {:<28} {}\n", float_activations[i], float_activation_reasons[i]);
  }
  if (!float_nodes.empty()) {
    s += "\nfloating-point compute nodes\n";
    for (size_t i = 0; i < float_nodes.size(); ++i) s += fmt::format("  {:<28} {}\n", float_nodes[i], float_reasons[i]);
  }
  return s;
}

}  // namespace inlierq::quant
