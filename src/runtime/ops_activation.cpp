// Pointwise activations: Relu, LeakyRelu, Sigmoid, HardSigmoid, HardSwish, Tanh, Clip, Erf, Softmax,
// Elu, Selu, Softplus, Mish, Gelu-free subset used by detectors.
#include "runtime/op_registry.h"

namespace inlierq::rt {
namespace {

using UnaryFn = at::Tensor (*)(const at::Tensor&);

void add_unary(OpRegistry& r, const std::string& op, UnaryFn fn) {
  r.add(op, [fn](const OpContext& ctx) -> Kernel {
    return [fn, ctx](const Tensors& in) -> Tensors { return {fn(required(in, 0, ctx))}; };
  });
}

Kernel make_clip(const OpContext& ctx) {
  // Opset < 11 carries the bounds as attributes, later opsets as optional inputs.
  const bool attr_form = ctx.opset < 11;
  const float amin = ctx.node.get_float("min", -std::numeric_limits<float>::infinity());
  const float amax = ctx.node.get_float("max", std::numeric_limits<float>::infinity());
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    if (attr_form) return {at::clamp(x, amin, amax)};
    at::Tensor lo = in.size() > 1 && in[1].defined() ? in[1] : at::Tensor();
    at::Tensor hi = in.size() > 2 && in[2].defined() ? in[2] : at::Tensor();
    // Tensor bounds keep autograd exact for learnable clipping; ONNX applies min then max.
    if (lo.defined()) x = at::max(x, lo.to(x.scalar_type()));
    if (hi.defined()) x = at::min(x, hi.to(x.scalar_type()));
    return {x};
  };
}

Kernel make_softmax(const OpContext& ctx, bool log) {
  const int64_t default_axis = ctx.opset >= 13 ? -1 : 1;
  const int64_t axis_attr = ctx.node.get_int("axis", default_axis);
  const bool legacy = ctx.opset < 13;  // coerces to 2-D at axis
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    int64_t axis = normalize_axis(axis_attr, x.dim(), ctx);
    if (legacy) {
      auto shape = x.sizes().vec();
      at::Tensor flat = x.reshape({c10::multiply_integers(shape.begin(), shape.begin() + axis), -1});
      at::Tensor y = log ? at::log_softmax(flat, 1) : at::softmax(flat, 1);
      return {y.reshape(shape)};
    }
    return {log ? at::log_softmax(x, axis) : at::softmax(x, axis)};
  };
}

}  // namespace

void register_activation_ops(OpRegistry& r) {
  add_unary(r, "Relu", [](const at::Tensor& x) { return at::relu(x); });
  add_unary(r, "Sigmoid", [](const at::Tensor& x) { return at::sigmoid(x); });
  add_unary(r, "Tanh", [](const at::Tensor& x) { return at::tanh(x); });
  add_unary(r, "Erf", [](const at::Tensor& x) { return at::erf(x); });
  add_unary(r, "Softsign", [](const at::Tensor& x) { return x / (at::abs(x) + 1); });
  add_unary(r, "Softplus", [](const at::Tensor& x) { return at::softplus(x); });
  add_unary(r, "HardSwish", [](const at::Tensor& x) { return x * at::clamp(x / 6 + 0.5, 0, 1); });
  add_unary(r, "Mish", [](const at::Tensor& x) { return x * at::tanh(at::softplus(x)); });
  r.add("LeakyRelu", [](const OpContext& ctx) -> Kernel {
    const double alpha = ctx.node.get_float("alpha", 0.01f);
    return [=](const Tensors& in) -> Tensors { return {at::leaky_relu(required(in, 0, ctx), alpha)}; };
  });
  r.add("Elu", [](const OpContext& ctx) -> Kernel {
    const double alpha = ctx.node.get_float("alpha", 1.f);
    return [=](const Tensors& in) -> Tensors { return {at::elu(required(in, 0, ctx), alpha)}; };
  });
  r.add("Selu", [](const OpContext& ctx) -> Kernel {
    const double alpha = ctx.node.get_float("alpha", 1.67326319217681884765625f);
    const double gamma = ctx.node.get_float("gamma", 1.05070102214813232421875f);
    return [=](const Tensors& in) -> Tensors {
      at::Tensor x = required(in, 0, ctx);
      return {gamma * at::where(x > 0, x, alpha * (at::exp(x) - 1))};
    };
  });
  r.add("HardSigmoid", [](const OpContext& ctx) -> Kernel {
    const double alpha = ctx.node.get_float("alpha", 0.2f), beta = ctx.node.get_float("beta", 0.5f);
    return [=](const Tensors& in) -> Tensors { return {at::clamp(required(in, 0, ctx) * alpha + beta, 0, 1)}; };
  });
  r.add("PRelu", [](const OpContext& ctx) -> Kernel {
    return [=](const Tensors& in) -> Tensors {
      at::Tensor x = required(in, 0, ctx), s = required(in, 1, ctx);
      return {at::where(x >= 0, x, x * s)};
    };
  });
  r.add("Clip", make_clip);
  r.add("Softmax", [](const OpContext& ctx) { return make_softmax(ctx, false); });
  r.add("LogSoftmax", [](const OpContext& ctx) { return make_softmax(ctx, true); });
}

}  // namespace inlierq::rt
