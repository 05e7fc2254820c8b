#pragma once
// Ops through which a quantization grid carries over unchanged (internal; torch-free).
#include <string>
#include <vector>

#include "inlierq/graph.h"

namespace inlierq::quant {

// Ops whose outputs are values of their (first) input, so a quantization grid on the input carries over.
bool is_passthrough(const Node& n, const Graph& g);
// Data inputs of a pass-through node (not its shape/index/pad operands).
std::vector<std::string> passthrough_data_inputs(const Node& n);

}  // namespace inlierq::quant
