// BatchNormalization, InstanceNormalization, LayerNormalization, LpNormalization.
#include "runtime/op_registry.h"

namespace inlierq::rt {
namespace {

// Per-channel parameter of length C shaped to broadcast against [N, C, ...].
at::Tensor channel_view(const at::Tensor& p, int64_t rank) {
  std::vector<int64_t> s(rank, 1);
  s[1] = -1;
  return p.reshape(s);
}

bool output_wanted(const Node& n, size_t i) { return n.outputs.size() > i && !n.outputs[i].empty(); }

Kernel make_batchnorm(const OpContext& ctx) {
  const Node& n = ctx.node;
  const double eps = n.get_float("epsilon", 1e-5f), momentum = n.get_float("momentum", 0.9f);
  // Opset 14+ training mode normalizes with batch statistics and also returns updated running stats.
  const bool training = ctx.opset >= 14 && n.get_int("training_mode", 0) != 0;
  if (!training && (output_wanted(n, 1) || output_wanted(n, 2) || output_wanted(n, 3) || output_wanted(n, 4)))
    ctx.fail("training outputs of BatchNormalization (opset < 14) are not supported");
  return [=](const Tensors& in) -> Tensors {
    const at::Tensor x = required(in, 0, ctx), scale = required(in, 1, ctx), bias = required(in, 2, ctx);
    const at::Tensor mean = required(in, 3, ctx), var = required(in, 4, ctx);
    if (x.dim() < 2) ctx.fail("input must have a channel axis");
    const int64_t r = x.dim();
    auto normalize = [&](const at::Tensor& m, const at::Tensor& v) {
      return (x - channel_view(m, r)) * at::rsqrt(channel_view(v, r) + eps) * channel_view(scale, r) +
             channel_view(bias, r);
    };
    if (!training) {
      // ATen treats running statistics as non-differentiable; spell it out when they need gradients.
      if (mean.requires_grad() || var.requires_grad()) return {normalize(mean, var)};
      return {at::batch_norm(x, scale, bias, mean, var, false, 0, eps, true)};
    }
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < r; ++d) if (d != 1) dims.push_back(d);
    const at::Tensor bmean = x.mean(dims), bvar = (x - channel_view(bmean, r)).pow(2).mean(dims);
    return {normalize(bmean, bvar), mean * momentum + bmean * (1 - momentum), var * momentum + bvar * (1 - momentum)};
  };
}

Kernel make_instancenorm(const OpContext& ctx) {
  const double eps = ctx.node.get_float("epsilon", 1e-5f);
  return [=](const Tensors& in) -> Tensors {
    const at::Tensor x = required(in, 0, ctx), scale = required(in, 1, ctx), bias = required(in, 2, ctx);
    if (x.dim() < 3) ctx.fail("input must be [N, C, D1, ...]");
    return {at::instance_norm(x, scale, bias, {}, {}, true, 0, eps, true)};
  };
}

Kernel make_layernorm(const OpContext& ctx) {
  const Node& n = ctx.node;
  const int64_t axis_attr = n.get_int("axis", -1);
  const double eps = n.get_float("epsilon", 1e-5f);
  // stash_type 1 (the default) asks for float statistics even for half inputs.
  const bool stash_float = n.get_int("stash_type", 1) == 1;
  return [=](const Tensors& in) -> Tensors {
    const at::Tensor x0 = required(in, 0, ctx), scale = required(in, 1, ctx);
    const int64_t axis = normalize_axis(axis_attr, x0.dim(), ctx);
    const at::Tensor x = stash_float && x0.scalar_type() != at::kDouble ? x0.to(at::kFloat) : x0;
    std::vector<int64_t> dims;
    for (int64_t d = axis; d < x.dim(); ++d) dims.push_back(d);
    const at::Tensor mean = x.mean(dims, true);
    const at::Tensor centered = x - mean;
    const at::Tensor inv_std = at::rsqrt(centered.pow(2).mean(dims, true) + eps);
    at::Tensor y = (centered * inv_std).to(x0.scalar_type()) * scale;
    if (in.size() > 2 && in[2].defined()) y = y + in[2];
    return {y, mean, inv_std};
  };
}

Kernel make_lpnorm(const OpContext& ctx) {
  const int64_t axis_attr = ctx.node.get_int("axis", -1), p = ctx.node.get_int("p", 2);
  if (p != 1 && p != 2) ctx.fail("p must be 1 or 2");
  return [=](const Tensors& in) -> Tensors {
    const at::Tensor x = required(in, 0, ctx);
    const int64_t axis = normalize_axis(axis_attr, x.dim(), ctx);
    const std::vector<int64_t> dims{axis};
    return {x / (p == 1 ? x.abs().sum(dims, true) : x.pow(2).sum(dims, true).sqrt())};
  };
}

}  // namespace

void register_norm_ops(OpRegistry& r) {
  r.add("BatchNormalization", make_batchnorm);
  r.add("InstanceNormalization", make_instancenorm);
  r.add("LayerNormalization", make_layernorm);
  r.add("LpNormalization", make_lpnorm);
}

}  // namespace inlierq::rt
