// Model statistics for `inlierq inspect`: op histogram, parameters, MACs, unsupported ops.
#include "graph/op_traits.h"
#include "inlierq/runtime.h"

namespace inlierq {
namespace {

// Known element count of a value from shape inference, or -1.
int64_t known_numel(const Graph& g, const std::string& name, std::vector<int64_t>* dims = nullptr) {
  std::vector<int64_t> shape;
  if (auto it = g.initializers.find(name); it != g.initializers.end()) {
    shape = it->second.shape;
  } else {
    const ValueInfo* v = g.find_value(name);
    if (!v || !v->has_shape) return -1;
    for (const auto& d : v->shape) {
      // Symbolic batch dimensions count as 1: MACs are reported per image.
      shape.push_back(d.value >= 0 ? d.value : (&d == &v->shape.front() ? 1 : -1));
      if (shape.back() < 0) return -1;
    }
  }
  if (dims) *dims = shape;
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}


}  // namespace

int64_t node_macs(const Graph& g, const Node& n) {
  const OpTraits* t = op_traits(n);
  if (!t || t->macs == MacRule::None || n.inputs.size() < 2) return 0;
  std::vector<int64_t> w, in;
  // Conv: each output element sums C_in/group × kernel products; ConvTranspose: each input element
  // scatters into C_out/group × kernel outputs. Both are numel × prod(weight dims 1..).
  if (t->macs == MacRule::PerOutputElement || t->macs == MacRule::PerInputElement) {
    int64_t side = known_numel(g, t->macs == MacRule::PerOutputElement ? n.outputs[0] : n.inputs[0]);
    if (side < 0 || known_numel(g, n.inputs[1], &w) < 0 || w.size() < 2) return 0;
    int64_t per_element = 1;
    for (size_t i = 1; i < w.size(); ++i) per_element *= w[i];
    return side * per_element;
  }
  // MacRule::MatMul: every output element sums K products.
  int64_t out = known_numel(g, n.outputs[0]);
  if (out < 0 || known_numel(g, n.inputs[0], &in) < 0 || in.empty()) return 0;
  int64_t k = (n.op_type == "Gemm" && n.get_int("transA", 0)) ? in[0] : in.back();
  return out * k;
}

ModelSummary summarize(const Graph& g) {
  ModelSummary s;
  s.inputs = g.inputs;
  s.outputs = g.outputs;
  for (const auto& [_, t] : g.initializers)
    if (t.dtype == DType::Float || t.dtype == DType::Float16 || t.dtype == DType::Double) s.parameters += t.numel();
  for (const auto& n : g.nodes) {
    s.op_histogram[n.op_type]++;
    s.macs += node_macs(g, n);
    if (!op_supported(n.op_type, n.domain)) s.unsupported.push_back(&n);
  }
  return s;
}

}  // namespace inlierq
