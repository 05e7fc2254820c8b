// The op-traits table (op_traits.h).
#include "graph/op_traits.h"

#include <map>

namespace inlierq {

const std::vector<OpTraits>& op_traits_table() {
  static const std::vector<OpTraits> table = [] {
    std::vector<OpTraits> t = {
        {"Conv", kCompute, 1, WeightAxis::Zero, GridRule::Always, MacRule::PerOutputElement},
        {"ConvTranspose", kCompute, 1, WeightAxis::One, GridRule::Always, MacRule::PerInputElement},
        {"Gemm", kCompute, 1, WeightAxis::GemmTransB, GridRule::Always, MacRule::MatMul},
        {"MatMul", kCompute, 1, WeightAxis::Last, GridRule::Always, MacRule::MatMul},
        {"Concat", kGridPreserving, -1},
        {"Resize", kGridPreserving, 1, WeightAxis::None, GridRule::NearestMode},
        {"Upsample", kGridPreserving, 1, WeightAxis::None, GridRule::NearestMode},
        {"Pad", kGridPreserving, 1, WeightAxis::None, GridRule::ZeroConstantPad},
        // Integer element-wise kernels (QLinearSigmoid, QLinearLeakyRelu, QLinearMul, QLinearAdd, QLinearAveragePool);
        // Relu and Clip fold into the QuantizeLinear instead.
        {"Relu", kBlockActivation | kFoldsIntoQuantize | kIntegerKernel},
        {"Clip", kBlockActivation | kFoldsIntoQuantize | kIntegerKernel},
        {"Sigmoid", kBlockActivation | kIntegerKernel},
        {"LeakyRelu", kBlockActivation | kIntegerKernel},
        {"Add", kIntegerKernel | kResidualSum, 2},
        {"Sum", kResidualSum, 2},
        {"Mul", kIntegerKernel, 2},
        {"AveragePool", kIntegerKernel},
        {"GlobalAveragePool", kIntegerKernel},
    };
    for (const char* op : {"MaxPool", "Slice", "Reshape", "Transpose", "Split", "Flatten", "Squeeze", "Unsqueeze",
                           "Identity", "Gather", "DepthToSpace", "SpaceToDepth", "Expand", "Tile"})
      t.push_back({op, kGridPreserving});
    for (const char* op : {"HardSwish", "HardSigmoid", "Tanh", "PRelu", "Elu", "Selu", "Softplus", "Softsign", "Mish"})
      t.push_back({op, kBlockActivation});
    return t;
  }();
  return table;
}

const OpTraits* op_traits(const Node& n) {
  static const std::map<std::string, const OpTraits*> by_op = [] {
    std::map<std::string, const OpTraits*> m;
    for (const auto& r : op_traits_table()) m[r.op_type] = &r;
    return m;
  }();
  if (!n.domain.empty()) return nullptr;
  auto it = by_op.find(n.op_type);
  return it == by_op.end() ? nullptr : it->second;
}

bool has_role(const Node& n, OpRole role) {
  const OpTraits* t = op_traits(n);
  return t && t->has(role);
}

int weight_channel_axis(const Node& n, const Graph& g) {
  const OpTraits* t = op_traits(n);
  if (!t || !t->has(kCompute)) return -1;
  switch (t->weight_axis) {
    case WeightAxis::Zero: return 0;
    case WeightAxis::One: return 1;
    case WeightAxis::GemmTransB: return n.get_int("transB", 0) ? 0 : 1;
    case WeightAxis::Last: {
      auto it = n.inputs.size() > 1 ? g.initializers.find(n.inputs[1]) : g.initializers.end();
      return it == g.initializers.end() ? -1 : static_cast<int>(it->second.shape.size()) - 1;
    }
    case WeightAxis::None: break;
  }
  return -1;
}

std::vector<std::string> data_inputs(const Node& n) {
  const OpTraits* t = op_traits(n);
  const int k = t ? t->data_inputs : 1;
  if (k < 0) return n.inputs;
  return {n.inputs.begin(), n.inputs.begin() + std::min<size_t>(n.inputs.size(), static_cast<size_t>(k))};
}

}  // namespace inlierq
