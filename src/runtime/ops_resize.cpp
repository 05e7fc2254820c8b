// Resize (opsets 10-19, without antialias) and Upsample (opsets 7-9).
//
// Each resized axis is computed on the host as a list of source taps (index + weight) and applied
// with one index_select per axis, so every mode stays differentiable w.r.t. X. When a configuration
// is provably identical to an ATen upsampling kernel (the common detector cases: nearest 2x,
// bilinear half_pixel/align_corners) that fused kernel is used instead.
#include <algorithm>
#include <cmath>

#include "runtime/op_registry.h"

namespace inlierq::rt {
namespace {

enum class Mode { Nearest, Linear, Cubic };
enum class Coord { HalfPixel, PytorchHalfPixel, AlignCorners, Asymmetric, TfHalfPixelForNN, TfCropAndResize };
enum class Rounding { PreferFloor, PreferCeil, Floor, Ceil, Simple };

struct ResizeAttrs {
  Mode mode = Mode::Nearest;
  Coord coord = Coord::Asymmetric;
  Rounding rounding = Rounding::Simple;
  float cubic_a = -0.75f;
  bool exclude_outside = false;
  double extrapolation = 0;
  std::vector<int64_t> axes;  // opset 18: roi/scales/sizes cover only these axes
};

// What one axis needs: source coordinate per output index, and whether it lies outside the crop
// (tf_crop_and_resize only).
struct AxisCoords {
  int64_t in = 0, out = 0;
  float scale = 1;
  std::vector<float> x;
  std::vector<uint8_t> outside;
  bool any_outside = false;
  bool identity() const {
    if (in != out || any_outside) return false;
    for (int64_t i = 0; i < out; ++i)
      if (x[i] != static_cast<float>(i)) return false;
    return true;
  }
};

// Float arithmetic as in onnxruntime, so that ties at exact halves/integers round like the reference.
AxisCoords axis_coords(const ResizeAttrs& a, int64_t in, int64_t out, float scale, bool from_sizes, float roi0, float roi1) {
  AxisCoords c{in, out, scale, std::vector<float>(out), std::vector<uint8_t>(out, 0)};
  // Given scales, the reference takes the resized length as in * scale, not the rounded output size;
  // that matters for align_corners / tf_crop_and_resize with a non-integral scale.
  const float fin = static_cast<float>(in), fout = from_sizes ? static_cast<float>(out) : fin * scale;
  for (int64_t i = 0; i < out; ++i) {
    const float xr = static_cast<float>(i);
    float& x = c.x[i];
    switch (a.coord) {
      case Coord::HalfPixel: x = (xr + 0.5f) / scale - 0.5f; break;
      case Coord::PytorchHalfPixel: x = fout > 1 ? (xr + 0.5f) / scale - 0.5f : 0.f; break;
      case Coord::AlignCorners: x = fout == 1 ? 0.f : xr * (fin - 1) / (fout - 1); break;
      case Coord::Asymmetric: x = xr / scale; break;
      case Coord::TfHalfPixelForNN: x = (xr + 0.5f) / scale; break;
      case Coord::TfCropAndResize:
        x = fout > 1 ? roi0 * (fin - 1) + xr * (roi1 - roi0) * (fin - 1) / (fout - 1) : 0.5f * (roi0 + roi1) * (fin - 1);
        if (x < 0 || x > fin - 1) c.outside[i] = 1, c.any_outside = true;
        break;
    }
  }
  return c;
}

int64_t nearest_index(float x, Rounding r, bool downsampling, int64_t in) {
  float v = 0;
  switch (r) {
    case Rounding::PreferFloor: v = x == std::floor(x) + 0.5f ? std::floor(x) : std::round(x); break;
    case Rounding::PreferCeil: v = std::round(x); break;  // halves of negatives clamp to 0 anyway
    case Rounding::Floor: v = std::floor(x); break;
    case Rounding::Ceil: v = std::ceil(x); break;
    case Rounding::Simple: v = downsampling ? std::ceil(x) : std::floor(x); break;  // Resize-10 / Upsample
  }
  return std::clamp<int64_t>(static_cast<int64_t>(v), 0, in - 1);
}

// The source index ATen's upsample_nearest kernels use (scales not passed), to decide the fast path.
int64_t aten_nearest_index(int64_t i, int64_t in, int64_t out) {
  if (out == in) return i;
  if (out == 2 * in) return i >> 1;
  const float s = static_cast<float>(in) / out;
  return std::min(static_cast<int64_t>(std::floor(i * s)), in - 1);
}

std::vector<float> cubic_coeffs(float s, float A) {
  const float t = 1 - s;
  return {((A * (s + 1) - 5 * A) * (s + 1) + 8 * A) * (s + 1) - 4 * A, ((A + 2) * s - (A + 3)) * s * s + 1,
          ((A + 2) * t - (A + 3)) * t * t + 1, ((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A};
}

// Shape [1, .., n, .., 1] (n at axis d, rank dims) for broadcasting per-position values.
std::vector<int64_t> along(int64_t rank, int64_t d, int64_t n) {
  std::vector<int64_t> s(rank, 1);
  s[d] = n;
  return s;
}

at::Tensor resize_axis(const at::Tensor& x, int64_t d, const AxisCoords& c, const ResizeAttrs& a) {
  const int64_t out = c.out, in = c.in;
  const int64_t taps = a.mode == Mode::Nearest ? 1 : a.mode == Mode::Linear ? 2 : 4;
  std::vector<int64_t> idx(out * taps);
  std::vector<float> w(out * taps, 1.f);
  for (int64_t i = 0; i < out; ++i) {
    const float xi = c.x[i];
    if (a.mode == Mode::Nearest) {
      idx[i] = nearest_index(xi, a.rounding, c.scale < 1, in);
      continue;
    }
    const float f = std::floor(xi), s = xi - f;
    const int64_t base = static_cast<int64_t>(f) - (taps == 4 ? 1 : 0);
    std::vector<float> coef = taps == 2 ? std::vector<float>{1 - s, s} : cubic_coeffs(s, a.cubic_a);
    float total = 0;
    for (int64_t k = 0; k < taps; ++k) {
      const int64_t j = base + k;
      if (a.exclude_outside && (j < 0 || j >= in)) coef[k] = 0;
      total += coef[k];
      idx[i * taps + k] = std::clamp<int64_t>(j, 0, in - 1);  // edge replication, as the reference pads
    }
    for (int64_t k = 0; k < taps; ++k) w[i * taps + k] = a.exclude_outside ? coef[k] / total : coef[k];
  }
  const auto dev = x.device();
  at::Tensor index = at::tensor(idx, at::TensorOptions().dtype(at::kLong)).to(dev);
  at::Tensor y = x.index_select(d, index);
  if (taps > 1) {
    auto shape = x.sizes().vec();
    shape[d] = out;
    shape.insert(shape.begin() + d + 1, taps);
    auto wshape = along(x.dim() + 1, d, out);
    wshape[d + 1] = taps;
    at::Tensor wt = at::tensor(w, at::TensorOptions().dtype(at::kFloat)).to(dev, x.scalar_type()).view(wshape);
    y = (y.reshape(shape) * wt).sum(d + 1);
  }
  if (c.any_outside) {
    at::Tensor mask = at::tensor(std::vector<int64_t>(c.outside.begin(), c.outside.end()), at::kLong)
                          .to(dev).to(at::kBool).view(along(x.dim(), d, out));
    y = at::where(mask, at::scalar_tensor(a.extrapolation, y.options()), y);
  }
  return y;
}

// Fused ATen kernel when it computes exactly the same thing; undefined tensor otherwise.
at::Tensor try_aten(const at::Tensor& x, const std::vector<AxisCoords>& c, const ResizeAttrs& a) {
  const int64_t nd = x.dim() - 2;
  if (nd < 1 || nd > 3 || !at::isFloatingType(x.scalar_type()) || !c[0].identity() || !c[1].identity()) return {};
  std::vector<int64_t> out;
  bool sizes_only = true;  // ATen's default scale in/out equals ONNX's 1/scale, and its length is out
  for (int64_t d = 2; d < x.dim(); ++d) {
    out.push_back(c[d].out);
    sizes_only &= c[d].scale == static_cast<float>(c[d].out) / static_cast<float>(c[d].in);
  }
  auto sc = [&](int64_t d) -> c10::optional<double> {
    if (sizes_only || a.coord == Coord::AlignCorners) return c10::nullopt;
    return static_cast<double>(c[d].scale);
  };
  if (a.mode == Mode::Nearest) {
    for (int64_t d = 2; d < x.dim(); ++d) {
      if (c[d].any_outside) return {};
      for (int64_t i = 0; i < c[d].out; ++i)
        if (nearest_index(c[d].x[i], a.rounding, c[d].scale < 1, c[d].in) != aten_nearest_index(i, c[d].in, c[d].out))
          return {};
    }
    if (nd == 1) return at::upsample_nearest1d(x, out);
    if (nd == 2) return at::upsample_nearest2d(x, out);
    return at::upsample_nearest3d(x, out);
  }
  // ATen's linear/cubic kernels implement half_pixel (align_corners=false) and align_corners only;
  // pytorch_half_pixel differs from half_pixel just for an output length of 1.
  bool aten_coords = a.coord == Coord::HalfPixel || a.coord == Coord::AlignCorners;
  if (a.coord == Coord::PytorchHalfPixel) {
    aten_coords = true;
    for (int64_t d = 2; d < x.dim(); ++d) aten_coords &= c[d].out > 1;
  }
  if (!aten_coords) return {};
  const bool ac = a.coord == Coord::AlignCorners;
  if (ac && !sizes_only) return {};
  if (a.mode == Mode::Linear) {
    if (nd == 1) return at::upsample_linear1d(x, out, ac, sc(2));
    if (nd == 2) return at::upsample_bilinear2d(x, out, ac, sc(2), sc(3));
    return at::upsample_trilinear3d(x, out, ac, sc(2), sc(3), sc(4));
  }
  if (nd == 2 && a.cubic_a == -0.75f && !a.exclude_outside) return at::upsample_bicubic2d(x, out, ac, sc(2), sc(3));
  return {};
}

std::vector<float> to_float_vector(const at::Tensor& t) {
  auto c = t.to(at::kCPU).to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

Mode parse_mode(const OpContext& ctx, const std::string& m) {
  if (m == "nearest") return Mode::Nearest;
  if (m == "linear" || m == "bilinear" || m == "trilinear") return Mode::Linear;
  if (m == "cubic") return Mode::Cubic;
  ctx.fail("unsupported mode '" + m + "'");
}

// The shared kernel: scales_in / sizes_in are input indices (-1 when the op has no such input);
// fixed_scales is the Upsample-7 attribute.
Kernel make_resize_kernel(const OpContext& ctx, ResizeAttrs a, int roi_in, int scales_in, int sizes_in,
                          std::vector<float> fixed_scales) {
  // Constant roi/scales/sizes are read once here so a run does not wait on a device-to-host copy.
  auto host = [&](int i) -> std::shared_ptr<std::vector<float>> {
    const at::Tensor* t = i >= 0 ? ctx.constant_input(i) : nullptr;
    return t ? std::make_shared<std::vector<float>>(to_float_vector(*t)) : nullptr;
  };
  auto c_roi = host(roi_in), c_scales = host(scales_in);
  std::shared_ptr<std::vector<int64_t>> c_sizes;
  if (const at::Tensor* t = sizes_in >= 0 ? ctx.constant_input(sizes_in) : nullptr)
    c_sizes = std::make_shared<std::vector<int64_t>>(to_int_vector(*t));

  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    const int64_t rank = x.dim();
    auto input = [&](int i) { return i >= 0 && static_cast<size_t>(i) < in.size() && in[i].defined() && in[i].numel() > 0; };
    std::vector<float> scales = fixed_scales, roi;
    std::vector<int64_t> sizes;
    if (input(scales_in)) scales = c_scales ? *c_scales : to_float_vector(in[scales_in]);
    if (input(sizes_in)) sizes = c_sizes ? *c_sizes : to_int_vector(in[sizes_in]);
    if (input(roi_in)) roi = c_roi ? *c_roi : to_float_vector(in[roi_in]);
    if (scales.empty() == sizes.empty()) ctx.fail("exactly one of 'scales' and 'sizes' must be given");

    // Expand to one entry per axis (opset 18 may name a subset of axes).
    std::vector<int64_t> axes = a.axes;
    if (axes.empty())
      for (int64_t d = 0; d < rank; ++d) axes.push_back(d);
    for (auto& d : axes) d = normalize_axis(d, rank, ctx);
    const size_t given = scales.empty() ? sizes.size() : scales.size();
    if (given != axes.size())
      ctx.fail((scales.empty() ? "sizes" : "scales") + std::string(" has ") + std::to_string(given) +
               " entries for " + std::to_string(axes.size()) + " axes");
    std::vector<float> scale(rank, 1.f), roi0(rank, 0.f), roi1(rank, 1.f);
    std::vector<int64_t> out = x.sizes().vec();
    for (size_t k = 0; k < axes.size(); ++k) {
      const int64_t d = axes[k], n = x.size(d);
      if (!scales.empty()) {
        if (!(scales[k] > 0)) ctx.fail("scales must be positive");
        scale[d] = scales[k];
        out[d] = static_cast<int64_t>(scales[k] * static_cast<float>(n));
      } else {
        out[d] = sizes[k];
        // A batch exported as 1 stays whatever the caller passed.
        if (d == 0 && ctx.batch_polymorphic && sizes[k] == 1) out[d] = n;
        scale[d] = static_cast<float>(out[d]) / static_cast<float>(n);
      }
      if (roi.size() == 2 * axes.size()) roi0[d] = roi[k], roi1[d] = roi[k + axes.size()];
    }
    if (a.coord == Coord::TfCropAndResize && roi.size() != 2 * axes.size())
      ctx.fail("tf_crop_and_resize needs an roi with " + std::to_string(2 * axes.size()) + " values");

    std::vector<AxisCoords> coords;
    for (int64_t d = 0; d < rank; ++d) {
      if (out[d] <= 0 || x.size(d) == 0) ctx.fail("output and input sizes must be positive");
      coords.push_back(axis_coords(a, x.size(d), out[d], scale[d], scales.empty(), roi0[d], roi1[d]));
    }
    if (at::Tensor y = try_aten(x, coords, a); y.defined()) return {y};

    const bool as_float = a.mode != Mode::Nearest && !at::isFloatingType(x.scalar_type());
    at::Tensor y = as_float ? x.to(at::kFloat) : x;
    for (int64_t d = 0; d < rank; ++d)
      if (!coords[d].identity()) y = resize_axis(y, d, coords[d], a);
    if (as_float) y = y.round().to(x.scalar_type());
    return {y};
  };
}

Kernel make_resize(const OpContext& ctx) {
  const Node& n = ctx.node;
  ResizeAttrs a;
  a.mode = parse_mode(ctx, n.get_string("mode", "nearest"));
  if (ctx.opset < 11)  // Resize-10: asymmetric, with onnxruntime's floor/ceil ("simple") nearest rule
    return make_resize_kernel(ctx, a, -1, 1, -1, {});
  const std::string cm = n.get_string("coordinate_transformation_mode", "half_pixel");
  static const std::map<std::string, Coord> coords = {
      {"half_pixel", Coord::HalfPixel}, {"pytorch_half_pixel", Coord::PytorchHalfPixel},
      {"align_corners", Coord::AlignCorners}, {"asymmetric", Coord::Asymmetric},
      {"tf_half_pixel_for_nn", Coord::TfHalfPixelForNN}, {"tf_crop_and_resize", Coord::TfCropAndResize}};
  static const std::map<std::string, Rounding> roundings = {
      {"round_prefer_floor", Rounding::PreferFloor}, {"round_prefer_ceil", Rounding::PreferCeil},
      {"floor", Rounding::Floor}, {"ceil", Rounding::Ceil}};
  const std::string nm = n.get_string("nearest_mode", "round_prefer_floor");
  if (!coords.count(cm)) ctx.fail("unsupported coordinate_transformation_mode '" + cm + "'");
  if (!roundings.count(nm)) ctx.fail("unsupported nearest_mode '" + nm + "'");
  if (n.get_int("antialias", 0)) ctx.fail("antialias is not supported");
  if (n.get_string("keep_aspect_ratio_policy", "stretch") != "stretch")
    ctx.fail("keep_aspect_ratio_policy other than 'stretch' is not supported");
  a.coord = coords.at(cm);
  a.rounding = roundings.at(nm);
  a.cubic_a = n.get_float("cubic_coeff_a", -0.75f);
  a.exclude_outside = n.get_int("exclude_outside", 0) != 0;
  a.extrapolation = n.get_float("extrapolation_value", 0.f);
  a.axes = n.get_ints("axes");
  return make_resize_kernel(ctx, a, 1, 2, 3, {});
}

Kernel make_upsample(const OpContext& ctx) {
  ResizeAttrs a;
  a.mode = parse_mode(ctx, ctx.node.get_string("mode", "nearest"));
  if (ctx.opset < 9) return make_resize_kernel(ctx, a, -1, -1, -1, ctx.node.get_floats("scales"));
  return make_resize_kernel(ctx, a, -1, 1, -1, {});
}

}  // namespace

void register_resize_ops(OpRegistry& r) {
  r.add("Resize", make_resize);
  r.add("Upsample", make_upsample);
}

}  // namespace inlierq::rt
