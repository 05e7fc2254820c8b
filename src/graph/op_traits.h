#pragma once
// What each ONNX op type is for quantization, in one table (docs/QUANTIZATION.md §1): placement, grid
// propagation, reconstruction units, export and MAC counting all read their op lists from here, and the
// tests loop over its rows (tests/test_onnx_node.cpp, OpTraits.*), so a new row is tested without a new test.
#include <string>
#include <vector>

#include "inlierq/graph.h"

namespace inlierq {

enum OpRole : unsigned {
  kCompute = 1u << 0,            // a weighted layer: per-channel weight quantizer, unit compute node, MACs counted
  kGridPreserving = 1u << 1,     // outputs are values of its data inputs, so their grid carries over (see grid_rule)
  kBlockActivation = 1u << 2,    // an element-wise activation that a compute block's quantizer site may follow
  kFoldsIntoQuantize = 1u << 3,  // ONNX Runtime folds it into the QuantizeLinear after it (zero-based range)
  kIntegerKernel = 1u << 4,      // ONNX Runtime has a QLinear kernel: in the ort layout its output is quantized
                                 // when its data inputs are
  kResidualSum = 1u << 5,        // a sum that ends a residual block: the compute output before it is not quantized
};

enum class WeightAxis {
  None,
  Zero,        // Conv: [C_out, C_in/group, k...]
  One,         // ConvTranspose: [C_in, C_out/group, k...]
  GemmTransB,  // Gemm: 0 with transB, else 1
  Last,        // MatMul: [.., K, N]
};

enum class GridRule {
  Always,
  NearestMode,      // Resize / Upsample: only in nearest mode
  ZeroConstantPad,  // Pad: reflect/edge modes, or constant mode with value 0 (every range includes 0)
};

enum class MacRule {
  None,
  PerOutputElement,  // Conv: output numel × (weight numel / C_out)
  PerInputElement,   // ConvTranspose: input numel × (weight numel / C_in)
  MatMul,            // Gemm / MatMul: output numel × K
};

struct OpTraits {
  std::string op_type;
  unsigned roles = 0;
  int data_inputs = 1;  // inputs that carry data (the rest are shapes, indices, pads); -1: all of them
  WeightAxis weight_axis = WeightAxis::None;
  GridRule grid_rule = GridRule::Always;
  MacRule macs = MacRule::None;
  bool has(OpRole r) const { return (roles & r) != 0; }
};

// Every row, in table order.
const std::vector<OpTraits>& op_traits_table();
// The row of a node's op type; nullptr for ops without a quantization role and for non-default domains.
const OpTraits* op_traits(const Node& n);
bool has_role(const Node& n, OpRole role);
// The output-channel axis of a compute node's weight (its input 1); -1 when the node is not a compute op.
int weight_channel_axis(const Node& n, const Graph& g);
// The node's data inputs (not its shape / index / pad operands).
std::vector<std::string> data_inputs(const Node& n);

}  // namespace inlierq
