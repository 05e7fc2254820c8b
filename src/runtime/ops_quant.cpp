// QuantizeLinear and DequantizeLinear, per tensor or per axis.
#include "runtime/op_registry.h"

namespace inlierq::rt {
namespace {

// A per-axis scale/zero point (1-D) shaped to broadcast along `axis` of x; scalars pass through.
at::Tensor along_axis(const at::Tensor& p, const at::Tensor& x, int64_t axis_attr, const OpContext& ctx) {
  if (p.dim() == 0 || p.numel() == 1) return p.reshape({});
  const int64_t axis = normalize_axis(axis_attr, x.dim(), ctx);
  if (p.dim() != 1 || p.numel() != x.size(axis))
    ctx.fail("per-axis parameter has " + std::to_string(p.numel()) + " values for an axis of length " +
             std::to_string(x.size(axis)));
  std::vector<int64_t> s(x.dim(), 1);
  s[axis] = -1;
  return p.reshape(s);
}

Kernel make_quantize(const OpContext& ctx) {
  const int64_t axis = ctx.node.get_int("axis", 1);
  if (ctx.node.get_int("block_size", 0) != 0) ctx.fail("blocked quantization is not supported");
  return [=](const Tensors& in) -> Tensors {
    const at::Tensor x = required(in, 0, ctx), scale = required(in, 1, ctx);
    const bool has_zp = in.size() > 2 && in[2].defined();
    const at::ScalarType qt = has_zp ? in[2].scalar_type() : at::kByte;
    double lo, hi;
    switch (qt) {
      case at::kByte: lo = 0, hi = 255; break;
      case at::kChar: lo = -128, hi = 127; break;
      case at::kShort: lo = -32768, hi = 32767; break;
      default: ctx.fail(std::string("unsupported quantized type ") + c10::toString(qt));
    }
    // at::round rounds halves to even, as ONNX requires.
    at::Tensor q = at::round(x.to(at::kFloat) / along_axis(scale, x, axis, ctx).to(at::kFloat));
    if (has_zp) q = q + along_axis(in[2], x, axis, ctx).to(at::kFloat);
    return {at::clamp(q, lo, hi).to(qt)};
  };
}

Kernel make_dequantize(const OpContext& ctx) {
  const int64_t axis = ctx.node.get_int("axis", 1);
  if (ctx.node.get_int("block_size", 0) != 0) ctx.fail("blocked quantization is not supported");
  return [=](const Tensors& in) -> Tensors {
    const at::Tensor x = required(in, 0, ctx), scale = required(in, 1, ctx);
    if (at::isFloatingType(x.scalar_type())) ctx.fail("input must be an integer tensor");
    // Subtract in integers so int32 inputs (bias) stay exact until the final scaling.
    at::Tensor v = x.to(at::kInt);
    if (in.size() > 2 && in[2].defined()) v = v - along_axis(in[2], x, axis, ctx).to(at::kInt);
    const at::Tensor s = along_axis(scale, x, axis, ctx);
    return {(v.to(at::kFloat) * s.to(at::kFloat)).to(scale.scalar_type())};
  };
}

}  // namespace

void register_quant_ops(OpRegistry& r) {
  r.add("QuantizeLinear", make_quantize);
  r.add("DequantizeLinear", make_dequantize);
}

}  // namespace inlierq::rt
