// MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Pad.
#include <algorithm>
#include <limits>

#include "runtime/op_registry.h"

namespace inlierq::rt {
namespace {

struct PoolGeometry {
  std::vector<int64_t> kernel, strides, dilations, begin, end;
  bool ceil_mode = false;
};

PoolGeometry pool_geometry(const OpContext& ctx, const std::vector<int64_t>& in_spatial) {
  const Node& n = ctx.node;
  PoolGeometry g;
  g.kernel = n.get_ints("kernel_shape");
  const size_t nd = g.kernel.size();
  if (nd == 0 || nd != in_spatial.size())
    ctx.fail("kernel_shape has " + std::to_string(nd) + " entries for " + std::to_string(in_spatial.size()) +
             " spatial axes");
  g.strides = n.get_ints("strides", std::vector<int64_t>(nd, 1));
  g.dilations = n.get_ints("dilations", std::vector<int64_t>(nd, 1));
  g.ceil_mode = n.get_int("ceil_mode", 0) != 0;
  auto pads = n.get_ints("pads", std::vector<int64_t>(2 * nd, 0));
  if (g.strides.size() != nd || g.dilations.size() != nd || pads.size() != 2 * nd)
    ctx.fail("strides/dilations/pads do not match kernel_shape");
  const std::string autopad = n.get_string("auto_pad", "NOTSET");
  for (size_t i = 0; i < nd; ++i) {
    if (autopad == "SAME_UPPER" || autopad == "SAME_LOWER") {
      const int64_t out = (in_spatial[i] + g.strides[i] - 1) / g.strides[i];
      const int64_t total = std::max<int64_t>(
          0, (out - 1) * g.strides[i] + (g.kernel[i] - 1) * g.dilations[i] + 1 - in_spatial[i]);
      pads[i] = autopad == "SAME_UPPER" ? total / 2 : total - total / 2;
      pads[i + nd] = total - pads[i];
    } else if (autopad == "VALID") {
      pads[i] = pads[i + nd] = 0;
    }
    g.begin.push_back(pads[i]);
    g.end.push_back(pads[i + nd]);
  }
  return g;
}

// Output length with ATen's (and ONNX >= 1.15's) rule that no window may start in the end padding.
int64_t pool_out_size(const PoolGeometry& g, size_t i, int64_t in) {
  const int64_t span = in + g.begin[i] + g.end[i] - ((g.kernel[i] - 1) * g.dilations[i] + 1), s = g.strides[i];
  int64_t out = (g.ceil_mode ? (span + s - 1) / s : span / s) + 1;
  if (g.ceil_mode && (out - 1) * s >= in + g.begin[i]) --out;
  return out;
}

// ATen pools take one symmetric pad per axis of at most half the kernel; anything else is padded
// explicitly first. Returns the (possibly padded) input and the pads to hand to ATen.
std::pair<at::Tensor, std::vector<int64_t>> prepare_pads(const at::Tensor& x, const PoolGeometry& g, double fill) {
  const size_t nd = g.kernel.size();
  bool aten_ok = true;
  for (size_t i = 0; i < nd; ++i) aten_ok &= g.begin[i] == g.end[i] && g.begin[i] <= g.kernel[i] / 2;
  if (aten_ok) return {x, g.begin};
  std::vector<int64_t> pad_nd;
  for (size_t i = nd; i-- > 0;) pad_nd.insert(pad_nd.end(), {g.begin[i], g.end[i]});
  return {at::constant_pad_nd(x, pad_nd, fill), std::vector<int64_t>(nd, 0)};
}

at::Tensor crop_to(at::Tensor y, const PoolGeometry& g, const at::Tensor& x) {
  for (size_t i = 0; i < g.kernel.size(); ++i) {
    const int64_t want = pool_out_size(g, i, x.size(2 + i));
    if (y.size(2 + i) > want) y = y.narrow(2 + i, 0, want);
  }
  return y;
}

std::vector<int64_t> spatial(const at::Tensor& x) { return std::vector<int64_t>(x.sizes().begin() + 2, x.sizes().end()); }

// ATen indices count within the (padded) spatial plane; ONNX counts over the whole unpadded tensor,
// row- or column-major over the spatial axes.
at::Tensor onnx_indices(const at::Tensor& idx, const at::Tensor& x, const at::Tensor& xp, const std::vector<int64_t>& off,
                        bool column_major) {
  const int64_t nd = x.dim() - 2;
  std::vector<at::Tensor> coord(nd);
  at::Tensor rest = idx;
  for (int64_t i = nd; i-- > 0;) {
    coord[i] = rest.remainder(xp.size(2 + i)) - off[i];
    rest = rest.div(xp.size(2 + i), "floor");
  }
  at::Tensor flat = at::zeros_like(idx);
  int64_t stride = 1;
  for (int64_t k = 0; k < nd; ++k) {
    const int64_t i = column_major ? k : nd - 1 - k;
    flat = flat + coord[i] * stride;
    stride *= x.size(2 + i);
  }
  std::vector<int64_t> plane_shape(x.dim(), 1);
  plane_shape[0] = x.size(0), plane_shape[1] = x.size(1);
  return flat + at::arange(x.size(0) * x.size(1), idx.options()).view(plane_shape) * stride;
}

Kernel make_maxpool(const OpContext& ctx) {
  const bool want_idx = ctx.node.outputs.size() > 1 && !ctx.node.outputs[1].empty();
  const bool column_major = ctx.node.get_int("storage_order", 0) != 0;
  return [=](const Tensors& in) -> Tensors {
    const at::Tensor x = required(in, 0, ctx);
    if (x.dim() < 3 || x.dim() > 5) ctx.fail("MaxPool supports 1-3 spatial axes");
    const PoolGeometry g = pool_geometry(ctx, spatial(x));
    // ATen's CPU pools are float-only; int8/uint8 values are exact in double.
    const at::Tensor xf = at::isFloatingType(x.scalar_type()) ? x : x.to(at::kDouble);
    auto [xp, pad] = prepare_pads(xf, g, -std::numeric_limits<double>::infinity());
    at::Tensor y, idx;
    if (!want_idx) {
      if (g.kernel.size() == 1) y = at::max_pool1d(xp, g.kernel, g.strides, pad, g.dilations, g.ceil_mode);
      else if (g.kernel.size() == 2) y = at::max_pool2d(xp, g.kernel, g.strides, pad, g.dilations, g.ceil_mode);
      else y = at::max_pool3d(xp, g.kernel, g.strides, pad, g.dilations, g.ceil_mode);
    } else {
      const bool one = g.kernel.size() == 1;  // ATen has no 1-D variant with indices
      auto pre = [&](std::vector<int64_t> v, int64_t lead) { if (one) v.insert(v.begin(), lead); return v; };
      at::Tensor xi = one ? xp.unsqueeze(2) : xp;
      std::tie(y, idx) = g.kernel.size() == 3
          ? at::max_pool3d_with_indices(xi, g.kernel, g.strides, pad, g.dilations, g.ceil_mode)
          : at::max_pool2d_with_indices(xi, pre(g.kernel, 1), pre(g.strides, 1), pre(pad, 0), pre(g.dilations, 1), g.ceil_mode);
      if (one) y = y.squeeze(2), idx = idx.squeeze(2);
      std::vector<int64_t> off(g.kernel.size());
      for (size_t i = 0; i < off.size(); ++i) off[i] = g.begin[i] - pad[i];
      idx = crop_to(onnx_indices(idx, x, xp, off, column_major), g, x);
    }
    y = crop_to(y, g, x);
    if (y.scalar_type() != x.scalar_type()) y = y.to(x.scalar_type());
    if (want_idx) return {y, idx};
    return {y};
  };
}

Kernel make_avgpool(const OpContext& ctx) {
  const bool include_pad = ctx.node.get_int("count_include_pad", 0) != 0;
  for (auto d : ctx.node.get_ints("dilations")) if (d != 1) ctx.fail("AveragePool with dilations is not supported");
  return [=](const Tensors& in) -> Tensors {
    const at::Tensor x = required(in, 0, ctx);
    if (x.dim() < 3 || x.dim() > 5) ctx.fail("AveragePool supports 1-3 spatial axes");
    const PoolGeometry g = pool_geometry(ctx, spatial(x));
    auto pool = [&](const at::Tensor& t, const std::vector<int64_t>& pad, bool count_pad) {
      if (g.kernel.size() == 1) return at::avg_pool1d(t, g.kernel, g.strides, pad, g.ceil_mode, count_pad);
      if (g.kernel.size() == 2) return at::avg_pool2d(t, g.kernel, g.strides, pad, g.ceil_mode, count_pad);
      return at::avg_pool3d(t, g.kernel, g.strides, pad, g.ceil_mode, count_pad);
    };
    auto [xp, pad] = prepare_pads(x, g, 0);
    if (xp.is_same(x)) return {pool(x, pad, include_pad)};
    // Explicitly padded: ATen counts every padded cell, so divide out the real-cell share if needed.
    at::Tensor y = pool(xp, pad, true);
    if (!include_pad) {
      std::vector<int64_t> mshape(x.dim(), 1);
      for (int64_t d = 2; d < x.dim(); ++d) mshape[d] = x.size(d);
      at::Tensor mask = prepare_pads(at::ones(mshape, x.options()), g, 0).first;
      y = y / pool(mask, pad, true);
    }
    return {crop_to(y, g, x)};
  };
}

Kernel make_global_pool(const OpContext& ctx, bool max) {
  return [=](const Tensors& in) -> Tensors {
    const at::Tensor x = required(in, 0, ctx);
    std::vector<int64_t> dims;
    for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
    return {max ? x.amax(dims, true) : x.mean(dims, true)};
  };
}

// Source index of padded position j along an axis of length n (reflect / edge / wrap).
int64_t pad_source(int64_t j, int64_t n, const std::string& mode) {
  if (mode == "edge") return std::clamp<int64_t>(j, 0, n - 1);
  if (mode == "wrap") return ((j % n) + n) % n;
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  j = std::abs(j) % period;
  return j < n ? j : period - j;
}

Kernel make_pad(const OpContext& ctx) {
  const Node& n = ctx.node;
  const std::string mode = n.get_string("mode", "constant");
  if (mode != "constant" && mode != "reflect" && mode != "edge" && mode != "wrap") ctx.fail("unsupported mode '" + mode + "'");
  const bool attr_form = ctx.opset < 11;
  std::vector<int64_t> c_pads = attr_form ? n.get_ints("pads") : std::vector<int64_t>{};
  std::vector<int64_t> c_axes;
  bool pads_const = attr_form, axes_const = true;
  if (!attr_form) {
    if (auto* t = ctx.constant_input(1)) c_pads = to_int_vector(*t), pads_const = true;
    if (n.inputs.size() > 3 && !n.inputs[3].empty()) {
      if (auto* t = ctx.constant_input(3)) c_axes = to_int_vector(*t);
      else axes_const = false;
    }
  }
  // The fill value as a host scalar; read once when it is constant.
  c10::optional<at::Scalar> c_value;
  if (attr_form) c_value = at::Scalar(static_cast<double>(n.get_float("value", 0.f)));
  else if (auto* t = ctx.constant_input(2); t && t->numel() > 0) c_value = t->to(at::kCPU).item();
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    const int64_t rank = x.dim();
    std::vector<int64_t> pads = pads_const ? c_pads : to_int_vector(required(in, 1, ctx));
    std::vector<int64_t> axes = axes_const ? c_axes : to_int_vector(in[3]);
    if (axes.empty())
      for (int64_t d = 0; d < rank; ++d) axes.push_back(d);
    if (pads.size() != 2 * axes.size())
      ctx.fail("pads has " + std::to_string(pads.size()) + " entries, expected " + std::to_string(2 * axes.size()));
    std::vector<int64_t> begin(rank, 0), end(rank, 0);
    for (size_t k = 0; k < axes.size(); ++k) {
      const int64_t d = normalize_axis(axes[k], rank, ctx);
      begin[d] = pads[k], end[d] = pads[k + axes.size()];
    }
    if (mode == "constant") {
      at::Scalar value = 0;
      if (c_value) value = *c_value;
      else if (!attr_form && in.size() > 2 && in[2].defined() && in[2].numel() > 0) value = in[2].to(at::kCPU).item();
      std::vector<int64_t> pad_nd;  // last axis first; negative entries crop
      for (int64_t d = rank; d-- > 0;) pad_nd.insert(pad_nd.end(), {begin[d], end[d]});
      return {at::constant_pad_nd(x, pad_nd, value)};
    }
    for (int64_t d = 0; d < rank; ++d) {
      // Negative pads crop first; the rest gathers mirrored or replicated indices.
      const int64_t crop_b = std::max<int64_t>(0, -begin[d]), crop_e = std::max<int64_t>(0, -end[d]);
      if (crop_b || crop_e) x = x.narrow(d, crop_b, x.size(d) - crop_b - crop_e);
      const int64_t b = std::max<int64_t>(0, begin[d]), e = std::max<int64_t>(0, end[d]), len = x.size(d);
      if (!b && !e) continue;
      if (len == 0) ctx.fail("cannot " + mode + "-pad an empty axis");
      std::vector<int64_t> idx;
      for (int64_t j = -b; j < len + e; ++j) idx.push_back(pad_source(j, len, mode));
      x = x.index_select(d, at::tensor(idx, at::TensorOptions().dtype(at::kLong)).to(x.device()));
    }
    return {x};
  };
}

}  // namespace

void register_pool_ops(OpRegistry& r) {
  r.add("MaxPool", make_maxpool);
  r.add("AveragePool", make_avgpool);
  r.add("GlobalAveragePool", [](const OpContext& ctx) { return make_global_pool(ctx, false); });
  r.add("GlobalMaxPool", [](const OpContext& ctx) { return make_global_pool(ctx, true); });
  r.add("Pad", make_pad);
}

}  // namespace inlierq::rt
