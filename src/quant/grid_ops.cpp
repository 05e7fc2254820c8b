// Which ops keep a quantization grid: shared by placement and export.
#include "quant/grid_ops.h"

#include "graph/op_traits.h"

namespace inlierq::quant {

// Ops whose outputs are values of their (first) input, so a quantization grid on the input carries over.
bool is_passthrough(const Node& n, const Graph& g) {
  const OpTraits* t = op_traits(n);
  if (!t || !t->has(kGridPreserving)) return false;
  if (t->grid_rule == GridRule::Always) return true;
  if (t->grid_rule == GridRule::NearestMode) return n.get_string("mode", "nearest") == "nearest";
  // GridRule::ZeroConstantPad: constant padding with 0 keeps the grid (every range includes 0).
  if (n.get_string("mode", "constant") != "constant") return true;
  if (n.inputs.size() < 3 || n.inputs[2].empty()) return true;
  auto it = g.initializers.find(n.inputs[2]);
  return it != g.initializers.end() && it->second.dtype == DType::Float && it->second.numel() == 1 &&
         it->second.as<float>()[0] == 0.0f;
}

bool from_sources_through_passthrough(const Graph& g, const GraphIndex& index, const std::string& v,
                                      const std::function<bool(const std::string&)>& is_source) {
  if (is_source(v)) return true;
  const Node* p = index.producer(v);
  if (!p || !is_passthrough(*p, g)) return false;
  for (const auto& i : passthrough_data_inputs(*p))
    if (!from_sources_through_passthrough(g, index, i, is_source)) return false;
  return true;
}

// Data inputs of a pass-through node (not its shape/index/pad operands).
std::vector<std::string> passthrough_data_inputs(const Node& n) {
  if (n.inputs.empty()) return {};
  return data_inputs(n);
}

}  // namespace inlierq::quant
