// Layout and indexing: Concat, Split, Slice, Reshape, Transpose, SpaceToDepth, DepthToSpace, Flatten, Squeeze, Unsqueeze, Gather,
// GatherElements, Shape, Expand, ConstantOfShape, Cast, CastLike, Identity, Tile, Range.
#include <ATen/ExpandUtils.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "runtime/op_registry.h"
#include "runtime/tensor_convert.h"

namespace inlierq::rt {
namespace {

bool has_input(const OpContext& ctx, size_t i) { return i < ctx.node.inputs.size() && !ctx.node.inputs[i].empty(); }

// An integer input (shape, axes, repeats, ...): read once when it is constant, else on every run.
class IntsInput {
 public:
  IntsInput(const OpContext& ctx, size_t i) : index_(i), given_(has_input(ctx, i)) {
    if (const at::Tensor* c = ctx.constant_input(i)) fixed_ = to_int_vector(*c);
  }
  bool constant() const { return fixed_.has_value(); }
  std::vector<int64_t> get(const Tensors& in, std::vector<int64_t> dflt = {}) const {
    if (fixed_) return *fixed_;
    return given_ && index_ < in.size() && in[index_].defined() ? to_int_vector(in[index_]) : dflt;
  }

 private:
  size_t index_;
  bool given_;
  std::optional<std::vector<int64_t>> fixed_;
};

// Shape-valued outputs live on the data's device so that they mix freely with (device) constants
// in the Concat/Gather/Mul chains exporters emit.
at::Tensor int64_tensor(const std::vector<int64_t>& v, const at::Device& device) {
  return at::tensor(at::IntArrayRef(v), at::TensorOptions().dtype(at::kLong)).to(device);
}

std::vector<int64_t> normalize_axes(std::vector<int64_t> axes, int64_t rank, const OpContext& ctx) {
  for (auto& a : axes) a = normalize_axis(a, rank, ctx);
  return axes;
}

Kernel make_concat(const OpContext& ctx) {
  const int64_t axis = ctx.node.get_int("axis", 0);
  return [=](const Tensors& in) -> Tensors {
    Tensors parts;
    for (size_t i = 0; i < in.size(); ++i) parts.push_back(required(in, i, ctx));
    if (parts.empty()) ctx.fail("needs at least one input");
    return {at::cat(parts, normalize_axis(axis, parts[0].dim(), ctx))};
  };
}

Kernel make_split(const OpContext& ctx) {
  const int64_t axis = ctx.node.get_int("axis", 0);
  const auto n_out = static_cast<int64_t>(ctx.node.outputs.size());
  const int64_t num_outputs = ctx.node.get_int("num_outputs", n_out);
  const std::vector<int64_t> split_attr = ctx.node.get_ints("split");
  const bool split_from_input = ctx.opset >= 13;
  const IntsInput split_in(ctx, 1);
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    const int64_t a = normalize_axis(axis, x.dim(), ctx), dim = x.size(a);
    std::vector<int64_t> sizes = split_from_input ? split_in.get(in) : split_attr;
    if (sizes.empty()) {
      // Equal parts; opset 18's num_outputs lets the last one be smaller.
      const int64_t chunk = (dim + num_outputs - 1) / num_outputs;
      for (int64_t i = 0; i < num_outputs; ++i) sizes.push_back(std::max<int64_t>(0, std::min(chunk, dim - i * chunk)));
    }
    int64_t total = 0;
    for (auto s : sizes) total += s;
    if (total != dim)
      ctx.fail("split sizes " + shape_str(sizes) + " do not add up to dimension " + std::to_string(a) + " of size " +
               std::to_string(dim));
    auto parts = at::split_with_sizes(x, sizes, a);
    return Tensors(parts.begin(), parts.end());
  };
}

// One axis of Slice with ONNX's clamping: out-of-range bounds (INT64_MAX/MIN style) are clipped,
// and a negative step walks backward, which ATen's slice cannot do, so it slices forward and flips.
at::Tensor slice_axis(const at::Tensor& x, int64_t axis, int64_t start, int64_t end, int64_t step, const OpContext& ctx) {
  if (step == 0) ctx.fail("slice step must not be 0");
  const int64_t dim = x.size(axis);
  if (start < 0) start += dim;
  if (end < 0) end += dim;
  if (step > 0) return x.slice(axis, std::clamp<int64_t>(start, 0, dim), std::clamp<int64_t>(end, 0, dim), step);
  start = std::min(std::max<int64_t>(start, 0), dim - 1);
  end = std::min(std::max<int64_t>(end, -1), dim - 1);
  if (start <= end) return x.slice(axis, 0, 0);
  const int64_t s = -step, n = (start - end + s - 1) / s;
  return x.slice(axis, start - (n - 1) * s, start + 1, s).flip({axis});
}

Kernel make_slice(const OpContext& ctx) {
  const bool attr_form = ctx.opset < 10;
  const auto a_starts = ctx.node.get_ints("starts"), a_ends = ctx.node.get_ints("ends"), a_axes = ctx.node.get_ints("axes");
  const IntsInput starts(ctx, 1), ends(ctx, 2), axes_in(ctx, 3), steps_in(ctx, 4);
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    const auto st = attr_form ? a_starts : starts.get(in);
    const auto en = attr_form ? a_ends : ends.get(in);
    auto axes = attr_form ? a_axes : axes_in.get(in);
    if (axes.empty())
      for (size_t i = 0; i < st.size(); ++i) axes.push_back(static_cast<int64_t>(i));
    const auto steps = attr_form ? std::vector<int64_t>(st.size(), 1) : steps_in.get(in, std::vector<int64_t>(st.size(), 1));
    if (en.size() != st.size() || axes.size() != st.size() || steps.size() != st.size())
      ctx.fail("starts, ends, axes and steps differ in length");
    for (size_t i = 0; i < st.size(); ++i)
      x = slice_axis(x, normalize_axis(axes[i], x.dim(), ctx), st[i], en[i], steps[i], ctx);
    return {x};
  };
}

// Resolves 0 (copy the input's dimension, unless allowzero) and -1 (inferred); nullopt when the
// element count cannot match.
std::optional<std::vector<int64_t>> resolve_reshape(std::vector<int64_t> shape, const at::Tensor& x, bool allowzero) {
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0 && !allowzero) {
      if (static_cast<int64_t>(i) >= x.dim()) return std::nullopt;
      shape[i] = x.size(static_cast<int64_t>(i));
    }
    if (shape[i] == -1) {
      if (infer >= 0) return std::nullopt;
      infer = static_cast<int64_t>(i);
    } else if (shape[i] < 0) {
      return std::nullopt;
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || x.numel() % known != 0) return std::nullopt;
    shape[infer] = x.numel() / known;
  } else if (known != x.numel()) {
    return std::nullopt;
  }
  return shape;
}

// A model exported at batch 1 bakes the batch into constant Reshape targets, sometimes merged with
// another axis (FastestDet's channel shuffle reshapes [1,48,44,44] to [24,2,1936]). Fed batch N, the
// input differs from its exported shape in exactly one axis j, by a factor k, as the outer part of
// that axis. The same outer block must then grow in the output: the axis i whose leading elements
// span as many elements as the axes before j is multiplied by k. Returns nullopt when the exported
// shapes do not pin this down.
std::optional<std::vector<int64_t>> rebatched_target(const std::vector<int64_t>& exported_in,
                                                     const std::vector<int64_t>& exported_out,
                                                     const at::Tensor& x) {
  if (exported_in.empty() || exported_out.empty() || static_cast<int64_t>(exported_in.size()) != x.dim())
    return std::nullopt;
  int64_t axis = -1, factor = 1;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (x.size(d) == exported_in[d]) continue;
    if (axis >= 0 || exported_in[d] == 0 || x.size(d) % exported_in[d] != 0) return std::nullopt;
    axis = d;
    factor = x.size(d) / exported_in[d];
  }
  if (axis < 0) return exported_out;
  int64_t outer = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= exported_in[d];
  int64_t prefix = 1;
  for (size_t i = 0; i < exported_out.size(); ++i) {
    if (prefix == outer) {
      auto out = exported_out;
      out[i] *= factor;
      return out;
    }
    prefix *= exported_out[i];
  }
  return std::nullopt;
}

Kernel make_reshape(const OpContext& ctx) {
  const bool allowzero = ctx.node.get_int("allowzero", 0) != 0;
  const bool attr_form = ctx.opset < 5;
  const auto shape_attr = ctx.node.get_ints("shape");
  const IntsInput shape_in(ctx, 1);
  // Data-dependent targets (Shape -> Concat) already carry the real batch and are left alone.
  const bool rebatch = ctx.batch_polymorphic && (attr_form || shape_in.constant());
  const auto exported_in = ctx.exported_input_shapes.empty() ? std::vector<int64_t>{} : ctx.exported_input_shapes[0];
  const auto exported_out = ctx.exported_output_shapes.empty() ? std::vector<int64_t>{} : ctx.exported_output_shapes[0];
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    const auto target = attr_form ? shape_attr : shape_in.get(in);
    if (rebatch && !exported_in.empty() && x.sizes().vec() != exported_in) {
      auto batched = rebatched_target(exported_in, exported_out, x);
      if (!batched)
        ctx.fail("cannot tell where the batch dimension goes when reshaping " + shape_str(x.sizes().vec()) +
                 " (exported as " + shape_str(exported_in) + ") to " + shape_str(target) +
                 "; run with batch 1 or export the model with a dynamic batch dimension");
      return {x.reshape(*batched)};
    }
    auto s = resolve_reshape(target, x, allowzero);
    if (!s) ctx.fail("cannot reshape " + shape_str(x.sizes().vec()) + " to " + shape_str(target));
    return {x.reshape(*s)};
  };
}

Kernel make_transpose(const OpContext& ctx) {
  const auto perm_attr = ctx.node.get_ints("perm");
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    std::vector<int64_t> perm = perm_attr;
    if (perm.empty())
      for (int64_t d = x.dim() - 1; d >= 0; --d) perm.push_back(d);
    if (static_cast<int64_t>(perm.size()) != x.dim())
      ctx.fail("perm " + shape_str(perm) + " does not match rank " + std::to_string(x.dim()));
    return {x.permute(perm)};
  };
}

// SpaceToDepth / DepthToSpace: block rearrangements, as reshape + permute + reshape (ONNX's definition).
Kernel make_space_to_depth(const OpContext& ctx) {
  const int64_t b = ctx.node.get_int("blocksize", 0);
  if (b < 1) ctx.fail("blocksize must be positive");
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    if (x.dim() != 4 || x.size(2) % b || x.size(3) % b)
      ctx.fail("input " + shape_str(x.sizes().vec()) + " is not 4-D with H and W divisible by blocksize " + std::to_string(b));
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    return {x.reshape({n, c, h / b, b, w / b, b}).permute({0, 3, 5, 1, 2, 4}).reshape({n, c * b * b, h / b, w / b})};
  };
}

Kernel make_depth_to_space(const OpContext& ctx) {
  const int64_t b = ctx.node.get_int("blocksize", 0);
  const std::string mode = ctx.node.get_string("mode", "DCR");
  if (b < 1) ctx.fail("blocksize must be positive");
  if (mode != "DCR" && mode != "CRD") ctx.fail("mode must be DCR or CRD, got '" + mode + "'");
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    if (x.dim() != 4 || x.size(1) % (b * b))
      ctx.fail("input " + shape_str(x.sizes().vec()) + " is not 4-D with C divisible by blocksize² " + std::to_string(b * b));
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    at::Tensor y = mode == "DCR" ? x.reshape({n, b, b, c / (b * b), h, w}).permute({0, 3, 4, 1, 5, 2})
                                 : x.reshape({n, c / (b * b), b, b, h, w}).permute({0, 1, 4, 2, 5, 3});
    return {y.reshape({n, c / (b * b), h * b, w * b})};
  };
}

Kernel make_flatten(const OpContext& ctx) {
  const int64_t axis_attr = ctx.node.get_int("axis", 1);
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    const int64_t axis = axis_attr < 0 ? axis_attr + x.dim() : axis_attr;  // may equal the rank
    if (axis < 0 || axis > x.dim())
      ctx.fail("axis " + std::to_string(axis_attr) + " is out of range for rank " + std::to_string(x.dim()));
    auto s = x.sizes();
    int64_t outer = c10::multiply_integers(s.begin(), s.begin() + axis);
    return {x.reshape({outer, c10::multiply_integers(s.begin() + axis, s.end())})};
  };
}

Kernel make_squeeze(const OpContext& ctx) {
  const bool attr_form = ctx.opset < 13;
  const auto axes_attr = ctx.node.get_ints("axes");
  const IntsInput axes_in(ctx, 1);
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    const auto axes = normalize_axes(attr_form ? axes_attr : axes_in.get(in), x.dim(), ctx);
    std::vector<bool> drop(x.dim(), axes.empty());
    for (auto a : axes) {
      if (x.size(a) != 1) ctx.fail("cannot squeeze axis " + std::to_string(a) + " of shape " + shape_str(x.sizes().vec()));
      drop[a] = true;
    }
    std::vector<int64_t> shape;
    for (int64_t d = 0; d < x.dim(); ++d)
      if (!drop[d] || x.size(d) != 1) shape.push_back(x.size(d));
    return {x.reshape(shape)};
  };
}

Kernel make_unsqueeze(const OpContext& ctx) {
  const bool attr_form = ctx.opset < 13;
  const auto axes_attr = ctx.node.get_ints("axes");
  const IntsInput axes_in(ctx, 1);
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    const auto raw = attr_form ? axes_attr : axes_in.get(in);
    const int64_t rank = x.dim() + static_cast<int64_t>(raw.size());
    std::vector<bool> inserted(rank, false);
    for (auto a : normalize_axes(raw, rank, ctx)) {
      if (inserted[a]) ctx.fail("axis " + std::to_string(a) + " is repeated");
      inserted[a] = true;
    }
    std::vector<int64_t> shape;
    for (int64_t d = 0, src = 0; d < rank; ++d) shape.push_back(inserted[d] ? 1 : x.size(src++));
    return {x.reshape(shape)};
  };
}

at::Tensor wrap_indices(const at::Tensor& idx, int64_t dim, const at::Device& device) {
  at::Tensor i = idx.to(device, at::kLong);
  return at::where(i < 0, i + dim, i);
}

Kernel make_gather(const OpContext& ctx) {
  const int64_t axis_attr = ctx.node.get_int("axis", 0);
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx), idx = required(in, 1, ctx);
    const int64_t axis = normalize_axis(axis_attr, x.dim(), ctx);
    // index_select takes 1-D indices; the indices' shape replaces the gathered axis.
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().begin() + axis);
    for (auto s : idx.sizes()) shape.push_back(s);
    shape.insert(shape.end(), x.sizes().begin() + axis + 1, x.sizes().end());
    at::Tensor flat = wrap_indices(idx, x.size(axis), x.device()).reshape({-1});
    return {at::index_select(x, axis, flat).reshape(shape)};
  };
}

Kernel make_gather_elements(const OpContext& ctx) {
  const int64_t axis_attr = ctx.node.get_int("axis", 0);
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx), idx = required(in, 1, ctx);
    const int64_t axis = normalize_axis(axis_attr, x.dim(), ctx);
    return {at::gather(x, axis, wrap_indices(idx, x.size(axis), x.device()))};
  };
}

Kernel make_shape(const OpContext& ctx) {
  const int64_t start_attr = ctx.node.get_int("start", 0);
  const auto end_attr = ctx.node.has("end") ? std::optional<int64_t>(ctx.node.get_int("end", 0)) : std::nullopt;
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    const int64_t rank = x.dim();
    auto clip = [rank](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + rank : v, 0, rank); };
    const int64_t start = clip(start_attr), end = std::max(start, clip(end_attr.value_or(rank)));
    return {int64_tensor(std::vector<int64_t>(x.sizes().begin() + start, x.sizes().begin() + end), x.device())};
  };
}

Kernel make_expand(const OpContext& ctx) {
  const IntsInput shape_in(ctx, 1);
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    required(in, 1, ctx);
    return {x.expand(at::infer_size(x.sizes(), shape_in.get(in)))};
  };
}

Kernel make_constant_of_shape(const OpContext& ctx) {
  at::Tensor value = at::zeros({1}, at::kFloat);
  if (ctx.node.has("value")) {
    auto it = ctx.node.attrs.find("value");
    if (it->second.kind != Attribute::Kind::Tensor) ctx.fail("attribute 'value' must be a tensor");
    value = to_aten(it->second.t);
    if (value.numel() != 1) ctx.fail("attribute 'value' must hold one element");
  }
  const IntsInput shape_in(ctx, 0);
  return [=](const Tensors& in) -> Tensors {
    at::Tensor shape = required(in, 0, ctx);
    return {at::full(shape_in.get(in), value.item(), value.options().device(shape.device()))};
  };
}

Kernel make_cast(const OpContext& ctx) {
  if (!ctx.node.has("to")) ctx.fail("attribute 'to' is missing");
  const at::ScalarType to = to_scalar_type(static_cast<DType>(ctx.node.get_int("to", 0)));
  return [=](const Tensors& in) -> Tensors { return {required(in, 0, ctx).to(to)}; };
}

Kernel make_tile(const OpContext& ctx) {
  const IntsInput repeats_in(ctx, 1);
  return [=](const Tensors& in) -> Tensors {
    at::Tensor x = required(in, 0, ctx);
    required(in, 1, ctx);
    const auto repeats = repeats_in.get(in);
    if (static_cast<int64_t>(repeats.size()) != x.dim())
      ctx.fail("repeats " + shape_str(repeats) + " does not match rank " + std::to_string(x.dim()));
    return {x.repeat(repeats)};
  };
}

Kernel make_range(const OpContext& ctx) {
  return [=](const Tensors& in) -> Tensors {
    at::Tensor start = required(in, 0, ctx), limit = required(in, 1, ctx), delta = required(in, 2, ctx);
    const auto type = start.scalar_type();
    const auto opts = start.options().dtype(at::isFloatingType(type) ? at::kDouble : at::kLong);
    const double d = delta.item<double>();
    if (d == 0) ctx.fail("delta must not be 0");
    const auto n = static_cast<int64_t>(std::max(0.0, std::ceil((limit.item<double>() - start.item<double>()) / d)));
    // start + i * delta in double (or exact int64), as ONNX defines it; at::arange rejects
    // empty ranges whose bounds disagree with the step's sign.
    at::Tensor steps = at::arange(n, opts);
    at::Tensor out = at::isFloatingType(type) ? steps * d + start.item<double>()
                                              : steps * delta.item<int64_t>() + start.item<int64_t>();
    return {out.to(type)};
  };
}

}  // namespace

void register_shape_ops(OpRegistry& r) {
  r.add("Concat", make_concat);
  r.add("Split", make_split);
  r.add("Slice", make_slice);
  r.add("Reshape", make_reshape);
  r.add("Transpose", make_transpose);
  r.add("Flatten", make_flatten);
  r.add("SpaceToDepth", make_space_to_depth);
  r.add("DepthToSpace", make_depth_to_space);
  r.add("Squeeze", make_squeeze);
  r.add("Unsqueeze", make_unsqueeze);
  r.add("Gather", make_gather);
  r.add("GatherElements", make_gather_elements);
  r.add("Shape", make_shape);
  r.add("Expand", make_expand);
  r.add("ConstantOfShape", make_constant_of_shape);
  r.add("Cast", make_cast);
  r.add("CastLike", [](const OpContext& ctx) -> Kernel {
    return [=](const Tensors& in) -> Tensors { return {required(in, 0, ctx).to(required(in, 1, ctx).scalar_type())}; };
  });
  r.add("Identity", [](const OpContext& ctx) -> Kernel {
    return [=](const Tensors& in) -> Tensors { return {required(in, 0, ctx)}; };
  });
  r.add("Tile", make_tile);
  r.add("Range", make_range);
}

}  // namespace inlierq::rt
