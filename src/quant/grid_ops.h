#pragma once
// Ops through which a quantization grid carries over unchanged (internal; torch-free).
#include <functional>
#include <string>
#include <vector>

#include "inlierq/graph.h"
#include "inlierq/transforms.h"

namespace inlierq::quant {

// Ops whose outputs are values of their (first) input, so a quantization grid on the input carries over.
bool is_passthrough(const Node& n, const Graph& g);
// Data inputs of a pass-through node (not its shape/index/pad operands).
std::vector<std::string> passthrough_data_inputs(const Node& n);
// Whether v is a source, or computed by pass-through ops from sources alone (every path back ends at one).
bool from_sources_through_passthrough(const Graph& g, const GraphIndex& index, const std::string& v,
                                      const std::function<bool(const std::string&)>& is_source);

}  // namespace inlierq::quant
