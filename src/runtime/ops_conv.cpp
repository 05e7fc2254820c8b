// Conv, ConvTranspose, Gemm, MatMul.
#include "runtime/op_registry.h"

namespace inlierq::rt {
namespace {

// ONNX pads are [x1_begin, x2_begin, ..., x1_end, x2_end]; ATen wants one symmetric pad per axis, so
// asymmetric padding is applied explicitly with constant_pad_nd first.
struct SpatialPadding {
  std::vector<int64_t> symmetric;
  std::vector<int64_t> extra;  // at::constant_pad_nd layout (last axis first), empty when none
};

SpatialPadding resolve_pads(const OpContext& ctx, const std::vector<int64_t>& in_spatial,
                            const std::vector<int64_t>& kernel, const std::vector<int64_t>& strides,
                            const std::vector<int64_t>& dilations) {
  const size_t nd = kernel.size();
  std::vector<int64_t> pads = ctx.node.get_ints("pads", std::vector<int64_t>(2 * nd, 0));
  const std::string autopad = ctx.node.get_string("auto_pad", "NOTSET");
  if (autopad == "SAME_UPPER" || autopad == "SAME_LOWER") {
    for (size_t i = 0; i < nd; ++i) {
      int64_t out = (in_spatial[i] + strides[i] - 1) / strides[i];
      int64_t total = std::max<int64_t>(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_spatial[i]);
      int64_t small = total / 2, big = total - small;
      pads[i] = autopad == "SAME_UPPER" ? small : big;
      pads[i + nd] = autopad == "SAME_UPPER" ? big : small;
    }
  } else if (autopad == "VALID") {
    std::fill(pads.begin(), pads.end(), 0);
  }
  if (pads.size() != 2 * nd) ctx.fail("pads has " + std::to_string(pads.size()) + " entries, expected " + std::to_string(2 * nd));
  SpatialPadding p;
  bool asym = false;
  for (size_t i = 0; i < nd; ++i) asym |= pads[i] != pads[i + nd];
  if (!asym) {
    p.symmetric.assign(pads.begin(), pads.begin() + nd);
  } else {
    p.symmetric.assign(nd, 0);
    for (size_t i = nd; i-- > 0;) {
      p.extra.push_back(pads[i]);
      p.extra.push_back(pads[i + nd]);
    }
  }
  return p;
}

std::vector<int64_t> spatial_of(const at::Tensor& x) {
  auto s = x.sizes().vec();
  return std::vector<int64_t>(s.begin() + 2, s.end());
}

Kernel make_conv(const OpContext& ctx) {
  const Node& n = ctx.node;
  const int64_t group = n.get_int("group", 1);
  return [&n, group, ctx](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx), w = required(in, 1, ctx);
    at::Tensor b = in.size() > 2 ? in[2] : at::Tensor();
    const size_t nd = static_cast<size_t>(w.dim()) - 2;
    if (x.dim() != w.dim()) ctx.fail("input rank " + std::to_string(x.dim()) + " does not match weight rank " + std::to_string(w.dim()));
    auto kernel = n.get_ints("kernel_shape", std::vector<int64_t>(w.sizes().begin() + 2, w.sizes().end()));
    auto strides = n.get_ints("strides", std::vector<int64_t>(nd, 1));
    auto dil = n.get_ints("dilations", std::vector<int64_t>(nd, 1));
    auto pad = resolve_pads(ctx, spatial_of(x), kernel, strides, dil);
    if (!pad.extra.empty()) x = at::constant_pad_nd(x, pad.extra, 0);
    return {at::convolution(x, w, b.defined() ? c10::optional<at::Tensor>(b) : c10::nullopt, strides, pad.symmetric, dil,
                            false, std::vector<int64_t>(nd, 0), group)};
  };
}

Kernel make_conv_transpose(const OpContext& ctx) {
  const Node& n = ctx.node;
  const int64_t group = n.get_int("group", 1);
  return [&n, group, ctx](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx), w = required(in, 1, ctx);
    at::Tensor b = in.size() > 2 ? in[2] : at::Tensor();
    const size_t nd = static_cast<size_t>(w.dim()) - 2;
    auto kernel = n.get_ints("kernel_shape", std::vector<int64_t>(w.sizes().begin() + 2, w.sizes().end()));
    auto strides = n.get_ints("strides", std::vector<int64_t>(nd, 1));
    auto dil = n.get_ints("dilations", std::vector<int64_t>(nd, 1));
    auto out_pad = n.get_ints("output_padding", std::vector<int64_t>(nd, 0));
    auto pads = n.get_ints("pads", std::vector<int64_t>(2 * nd, 0));
    auto in_sp = spatial_of(x);
    const std::string autopad = n.get_string("auto_pad", "NOTSET");
    if (n.has("output_shape") || autopad == "SAME_UPPER" || autopad == "SAME_LOWER") {
      std::vector<int64_t> out_shape = n.get_ints("output_shape");
      if (out_shape.size() > nd) out_shape.erase(out_shape.begin(), out_shape.end() - nd);
      if (out_shape.empty())
        for (size_t i = 0; i < nd; ++i) out_shape.push_back(in_sp[i] * strides[i]);
      for (size_t i = 0; i < nd; ++i) {
        int64_t total = strides[i] * (in_sp[i] - 1) + out_pad[i] + ((kernel[i] - 1) * dil[i] + 1) - out_shape[i];
        if (total < 0) {  // the requested output is larger than the kernel covers: grow via output_padding
          out_pad[i] += -total;
          total = 0;
        }
        if (autopad == "SAME_UPPER") { pads[i] = total / 2; pads[i + nd] = total - total / 2; }
        else { pads[i] = total - total / 2; pads[i + nd] = total / 2; }
      }
    }
    // ATen pads both sides equally; the difference of an asymmetric pair is cropped afterwards.
    std::vector<int64_t> sym(nd);
    for (size_t i = 0; i < nd; ++i) sym[i] = std::min(pads[i], pads[i + nd]);
    at::Tensor y = at::convolution(x, w, b.defined() ? c10::optional<at::Tensor>(b) : c10::nullopt, strides, sym, dil,
                                   true, out_pad, group);
    for (size_t i = 0; i < nd; ++i) {
      int64_t extra_begin = pads[i] - sym[i], extra_end = pads[i + nd] - sym[i];
      if (extra_begin || extra_end) y = y.narrow(2 + i, extra_begin, y.size(2 + i) - extra_begin - extra_end);
    }
    return {y};
  };
}

Kernel make_gemm(const OpContext& ctx) {
  const float alpha = ctx.node.get_float("alpha", 1.f), beta = ctx.node.get_float("beta", 1.f);
  const bool ta = ctx.node.get_int("transA", 0) != 0, tb = ctx.node.get_int("transB", 0) != 0;
  return [=](const Tensors& in) -> Tensors {
    at::Tensor a = required(in, 0, ctx), b = required(in, 1, ctx);
    if (ta) a = a.t();
    if (tb) b = b.t();
    at::Tensor y = at::matmul(a, b);
    if (alpha != 1.f) y = y * alpha;
    if (in.size() > 2 && in[2].defined()) y = beta != 1.f ? y + in[2] * beta : y + in[2];
    return {y};
  };
}

}  // namespace

void register_conv_ops(OpRegistry& r) {
  r.add("Conv", make_conv);
  r.add("ConvTranspose", make_conv_transpose);
  r.add("Gemm", make_gemm);
  r.add("MatMul", [](const OpContext& ctx) -> Kernel {
    return [ctx](const Tensors& in) -> Tensors { return {at::matmul(required(in, 0, ctx), required(in, 1, ctx))}; };
  });
}

}  // namespace inlierq::rt
