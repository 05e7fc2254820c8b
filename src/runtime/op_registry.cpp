#include "runtime/op_registry.h"

namespace inlierq::rt {

const OpRegistry& OpRegistry::instance() {
  static const OpRegistry registry = [] {
    OpRegistry r;
    register_conv_ops(r);
    register_activation_ops(r);
    register_elementwise_ops(r);
    register_shape_ops(r);
    register_resize_ops(r);
    register_pool_ops(r);
    register_reduce_ops(r);
    register_norm_ops(r);
    register_logic_ops(r);
    register_quant_ops(r);
    return r;
  }();
  return registry;
}

std::vector<std::string> OpRegistry::op_types() const {
  std::vector<std::string> v;
  for (auto& [k, _] : factories_) v.push_back(k);
  return v;
}

std::vector<int64_t> to_int_vector(const at::Tensor& t) {
  auto c = t.to(at::kCPU).to(at::kLong).contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

int64_t normalize_axis(int64_t axis, int64_t rank, const OpContext& ctx) {
  if (axis < -rank || axis >= std::max<int64_t>(rank, 1))
    ctx.fail("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  return axis < 0 ? axis + rank : axis;
}

at::Tensor required(const Tensors& in, size_t i, const OpContext& ctx) {
  if (i >= in.size() || !in[i].defined()) ctx.fail("required input " + std::to_string(i) + " is missing");
  return in[i];
}

}  // namespace inlierq::rt
