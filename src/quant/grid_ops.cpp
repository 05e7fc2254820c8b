// Which ops keep a quantization grid: shared by placement and export.
#include "quant/grid_ops.h"

#include <set>

namespace inlierq::quant {

// Ops whose outputs are values of their (first) input, so a quantization grid on the input carries over.
bool is_passthrough(const Node& n, const Graph& g) {
  static const std::set<std::string> ops = {"MaxPool", "Concat", "Slice", "Reshape", "Transpose", "Split",
                                            "Flatten", "Squeeze", "Unsqueeze", "Identity", "Gather",
                                            "DepthToSpace", "SpaceToDepth", "Expand", "Tile"};
  if (!n.domain.empty()) return false;
  if (ops.count(n.op_type)) return true;
  if (n.op_type == "Resize" || n.op_type == "Upsample") return n.get_string("mode", "nearest") == "nearest";
  if (n.op_type == "Pad") {
    // Constant padding with 0 keeps the grid (every range includes 0).
    if (n.get_string("mode", "constant") != "constant") return true;
    if (n.inputs.size() < 3 || n.inputs[2].empty()) return true;
    auto it = g.initializers.find(n.inputs[2]);
    return it != g.initializers.end() && it->second.dtype == DType::Float && it->second.numel() == 1 &&
           it->second.as<float>()[0] == 0.0f;
  }
  return false;
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
  if (n.op_type == "Concat") return n.inputs;
  return {n.inputs.at(0)};
}

}  // namespace inlierq::quant
