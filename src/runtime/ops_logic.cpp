// Comparisons, boolean logic and Where.
#include "runtime/op_registry.h"

namespace inlierq::rt {
namespace {

using BinaryFn = at::Tensor (*)(const at::Tensor&, const at::Tensor&);

void add_binary(OpRegistry& r, const std::string& op, BinaryFn fn) {
  r.add(op, [fn](const OpContext& ctx) -> Kernel {
    return [fn, ctx](const Tensors& in) -> Tensors { return {fn(required(in, 0, ctx), required(in, 1, ctx))}; };
  });
}

}  // namespace

void register_logic_ops(OpRegistry& r) {
  add_binary(r, "Equal", [](const at::Tensor& a, const at::Tensor& b) { return at::eq(a, b); });
  add_binary(r, "Greater", [](const at::Tensor& a, const at::Tensor& b) { return at::gt(a, b); });
  add_binary(r, "Less", [](const at::Tensor& a, const at::Tensor& b) { return at::lt(a, b); });
  add_binary(r, "GreaterOrEqual", [](const at::Tensor& a, const at::Tensor& b) { return at::ge(a, b); });
  add_binary(r, "LessOrEqual", [](const at::Tensor& a, const at::Tensor& b) { return at::le(a, b); });
  add_binary(r, "And", [](const at::Tensor& a, const at::Tensor& b) { return at::logical_and(a, b); });
  add_binary(r, "Or", [](const at::Tensor& a, const at::Tensor& b) { return at::logical_or(a, b); });
  add_binary(r, "Xor", [](const at::Tensor& a, const at::Tensor& b) { return at::logical_xor(a, b); });
  r.add("Not", [](const OpContext& ctx) -> Kernel {
    return [ctx](const Tensors& in) -> Tensors { return {at::logical_not(required(in, 0, ctx))}; };
  });
  r.add("Where", [](const OpContext& ctx) -> Kernel {
    return [ctx](const Tensors& in) -> Tensors {
      at::Tensor cond = required(in, 0, ctx);
      return {at::where(cond.to(at::kBool), required(in, 1, ctx), required(in, 2, ctx))};
    };
  });
}

}  // namespace inlierq::rt
