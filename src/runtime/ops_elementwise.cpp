// Broadcasting arithmetic and unary math: Add, Sub, Mul, Div, Pow, Exp, Log, Sqrt, Neg, Abs, Min,
// Max, Sum, Mean, Reciprocal, Floor, Ceil, Round, Sign, Mod.
#include "runtime/op_registry.h"

namespace inlierq::rt {
namespace {

using BinaryFn = at::Tensor (*)(const at::Tensor&, const at::Tensor&);
using UnaryFn = at::Tensor (*)(const at::Tensor&);

void add_binary(OpRegistry& r, const std::string& op, BinaryFn fn) {
  r.add(op, [fn](const OpContext& ctx) -> Kernel {
    return [fn, ctx](const Tensors& in) -> Tensors { return {fn(required(in, 0, ctx), required(in, 1, ctx))}; };
  });
}

void add_unary(OpRegistry& r, const std::string& op, UnaryFn fn) {
  r.add(op, [fn](const OpContext& ctx) -> Kernel {
    return [fn, ctx](const Tensors& in) -> Tensors { return {fn(required(in, 0, ctx))}; };
  });
}

// Variadic ops (Min, Max, Sum, Mean) fold pairwise with broadcasting.
void add_variadic(OpRegistry& r, const std::string& op, BinaryFn fn, bool mean) {
  r.add(op, [fn, mean](const OpContext& ctx) -> Kernel {
    return [fn, mean, ctx](const Tensors& in) -> Tensors {
      at::Tensor acc = required(in, 0, ctx);
      for (size_t i = 1; i < in.size(); ++i) acc = fn(acc, required(in, i, ctx));
      if (mean) acc = acc / static_cast<double>(in.size());
      return {acc};
    };
  });
}

at::Tensor integer_div(const at::Tensor& a, const at::Tensor& b) {
  // ONNX integer Div truncates toward zero, like C.
  if (at::isIntegralType(a.scalar_type(), /*includeBool=*/false)) return at::div(a, b, "trunc");
  return at::div(a, b);
}

}  // namespace

void register_elementwise_ops(OpRegistry& r) {
  add_binary(r, "Add", [](const at::Tensor& a, const at::Tensor& b) { return at::add(a, b); });
  add_binary(r, "Sub", [](const at::Tensor& a, const at::Tensor& b) { return at::sub(a, b); });
  add_binary(r, "Mul", [](const at::Tensor& a, const at::Tensor& b) { return at::mul(a, b); });
  add_binary(r, "Div", integer_div);
  add_binary(r, "Pow", [](const at::Tensor& a, const at::Tensor& b) {
    // The result has the base's type (opset 12+ allows a differently typed exponent).
    return at::pow(a, b.to(a.scalar_type())).to(a.scalar_type());
  });
  r.add("Mod", [](const OpContext& ctx) -> Kernel {
    const bool fmod = ctx.node.get_int("fmod", 0) != 0;
    return [=](const Tensors& in) -> Tensors {
      at::Tensor a = required(in, 0, ctx), b = required(in, 1, ctx);
      return {fmod ? at::fmod(a, b) : at::remainder(a, b)};
    };
  });
  add_unary(r, "Exp", [](const at::Tensor& x) { return at::exp(x); });
  add_unary(r, "Log", [](const at::Tensor& x) { return at::log(x); });
  add_unary(r, "Sqrt", [](const at::Tensor& x) { return at::sqrt(x); });
  add_unary(r, "Neg", [](const at::Tensor& x) { return at::neg(x); });
  add_unary(r, "Abs", [](const at::Tensor& x) { return at::abs(x); });
  add_unary(r, "Reciprocal", [](const at::Tensor& x) { return at::reciprocal(x); });
  add_unary(r, "Floor", [](const at::Tensor& x) { return at::floor(x); });
  add_unary(r, "Ceil", [](const at::Tensor& x) { return at::ceil(x); });
  add_unary(r, "Round", [](const at::Tensor& x) { return at::round(x); });  // half to even, as ONNX
  add_unary(r, "Sign", [](const at::Tensor& x) { return at::sign(x); });
  add_unary(r, "Sin", [](const at::Tensor& x) { return at::sin(x); });
  add_unary(r, "Cos", [](const at::Tensor& x) { return at::cos(x); });
  add_variadic(r, "Min", [](const at::Tensor& a, const at::Tensor& b) { return at::minimum(a, b); }, false);
  add_variadic(r, "Max", [](const at::Tensor& a, const at::Tensor& b) { return at::maximum(a, b); }, false);
  add_variadic(r, "Sum", [](const at::Tensor& a, const at::Tensor& b) { return at::add(a, b); }, false);
  add_variadic(r, "Mean", [](const at::Tensor& a, const at::Tensor& b) { return at::add(a, b); }, true);
}

}  // namespace inlierq::rt
