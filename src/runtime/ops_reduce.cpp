// Reductions (ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceL1, ReduceL2,
// ReduceSumSquare, ReduceLogSum, ReduceLogSumExp) and ArgMax/ArgMin.
#include <optional>

#include "runtime/op_registry.h"

namespace inlierq::rt {
namespace {

// Reduces over `dims` (sorted, unique, never empty unless the input is a scalar), keeping them.
using ReduceFn = at::Tensor (*)(const at::Tensor& x, at::IntArrayRef dims);

void add_reduce(OpRegistry& r, const std::string& op, ReduceFn fn) {
  r.add(op, [fn](const OpContext& ctx) -> Kernel {
    const bool keepdims = ctx.node.get_int("keepdims", 1) != 0;
    const bool noop_if_empty = ctx.node.get_int("noop_with_empty_axes", 0) != 0;
    // Axes move from the attribute to input 1 (ReduceSum at opset 13, the others at 18).
    const bool axes_input = ctx.node.inputs.size() > 1 && !ctx.node.inputs[1].empty();
    const std::vector<int64_t> axes_attr = ctx.node.get_ints("axes");
    std::optional<std::vector<int64_t>> axes_const;
    if (const at::Tensor* c = ctx.constant_input(1)) axes_const = to_int_vector(*c);
    return [=](const Tensors& in) -> Tensors {
      at::Tensor x = required(in, 0, ctx);
      const auto axes = !axes_input ? axes_attr : axes_const ? *axes_const : to_int_vector(required(in, 1, ctx));
      if (axes.empty() && noop_if_empty) return {x};
      std::vector<bool> reduced(x.dim(), axes.empty());
      for (auto a : axes) reduced[normalize_axis(a, x.dim(), ctx)] = true;
      std::vector<int64_t> dims, kept_shape;
      for (int64_t d = 0; d < x.dim(); ++d) {
        if (reduced[d]) dims.push_back(d);
        else kept_shape.push_back(x.size(d));
      }
      // ATen widens integer sums to int64; ONNX keeps the input type.
      at::Tensor y = fn(x, dims).to(x.scalar_type());
      return {keepdims ? y : y.reshape(kept_shape)};
    };
  });
}

Kernel make_arg(const OpContext& ctx, bool max) {
  const int64_t axis_attr = ctx.node.get_int("axis", 0);
  const bool keepdims = ctx.node.get_int("keepdims", 1) != 0;
  const bool last = ctx.node.get_int("select_last_index", 0) != 0;
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    const int64_t axis = normalize_axis(axis_attr, x.dim(), ctx);
    // ATen returns the first extreme index; the last one is the first of the flipped tensor.
    at::Tensor src = last ? x.flip({axis}) : x;
    at::Tensor idx = max ? at::argmax(src, axis, keepdims) : at::argmin(src, axis, keepdims);
    return {last ? (x.size(axis) - 1) - idx : idx};
  };
}

at::Tensor prod(const at::Tensor& x, at::IntArrayRef dims) {
  at::Tensor y = x;
  for (auto d : dims) y = at::prod(y, d, /*keepdim=*/true);
  return y;
}

at::Tensor l2(const at::Tensor& x, at::IntArrayRef dims) {
  // The norm's subgradient at zero is 0, where sqrt(sum(x^2)) would give NaN gradients.
  if (at::isFloatingType(x.scalar_type())) return at::linalg_vector_norm(x, 2, dims, true);
  return at::sqrt(at::sum(x * x, dims, true).to(at::kDouble));
}

}  // namespace

void register_reduce_ops(OpRegistry& r) {
  add_reduce(r, "ReduceSum", [](const at::Tensor& x, at::IntArrayRef d) { return at::sum(x, d, true); });
  add_reduce(r, "ReduceMean", [](const at::Tensor& x, at::IntArrayRef d) {
    return at::mean(at::isFloatingType(x.scalar_type()) ? x : x.to(at::kDouble), d, true);  // ATen has no integer mean
  });
  add_reduce(r, "ReduceMax", [](const at::Tensor& x, at::IntArrayRef d) { return at::amax(x, d, true); });
  add_reduce(r, "ReduceMin", [](const at::Tensor& x, at::IntArrayRef d) { return at::amin(x, d, true); });
  add_reduce(r, "ReduceProd", prod);
  add_reduce(r, "ReduceL1", [](const at::Tensor& x, at::IntArrayRef d) { return at::sum(at::abs(x), d, true); });
  add_reduce(r, "ReduceL2", l2);
  add_reduce(r, "ReduceSumSquare", [](const at::Tensor& x, at::IntArrayRef d) { return at::sum(x * x, d, true); });
  add_reduce(r, "ReduceLogSum", [](const at::Tensor& x, at::IntArrayRef d) { return at::log(at::sum(x, d, true)); });
  add_reduce(r, "ReduceLogSumExp", [](const at::Tensor& x, at::IntArrayRef d) { return at::logsumexp(x, d, true); });
  r.add("ArgMax", [](const OpContext& ctx) { return make_arg(ctx, true); });
  r.add("ArgMin", [](const OpContext& ctx) { return make_arg(ctx, false); });
}

}  // namespace inlierq::rt
