#include "quant/fake_quant.h"

#include <cmath>

namespace inlierq::quant {

at::Tensor fake_quant(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qn,
                      int64_t qp, double grad_scale) {
  // The gradient-scaled step has the value of `scale` but passes only grad_scale of the gradient.
  at::Tensor s = scale;
  if (grad_scale != 1.0 && scale.requires_grad()) s = scale * grad_scale + (scale - scale * grad_scale).detach();
  const at::Tensor z = zero_point.to(x.scalar_type());
  const at::Tensor u = x / s;
  // Value: clamp(round(u) + z, qn, qp), rounding u itself (not u + z) as ONNX QuantizeLinear does, so
  // that halves round identically. Gradient: that of clamp(u + z, qn, qp), so the clamp range is decided
  // by the unrounded u as LSQ defines it; autograd then gives exactly the derivatives in the header.
  const double lo = static_cast<double>(qn), hi = static_cast<double>(qp);
  const at::Tensor v = at::clamp(u + z, lo, hi);
  const at::Tensor q = v + (at::clamp(at::round(u) + z, lo, hi) - v).detach();
  return (q - z) * s;
}

double lsq_grad_scale(int64_t numel, int64_t qp) {
  return 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(numel, 1)) * static_cast<double>(std::max<int64_t>(qp, 1)));
}

at::Tensor channel_view(const at::Tensor& v, int64_t axis, int64_t rank) {
  std::vector<int64_t> shape(rank, 1);
  shape[axis < 0 ? axis + rank : axis] = v.numel();
  return v.reshape(shape);
}

at::Tensor quantize_codes(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qn,
                          int64_t qp) {
  return at::clamp(at::round(x / scale) + zero_point.to(x.scalar_type()), static_cast<double>(qn),
                   static_cast<double>(qp));
}

}  // namespace inlierq::quant

// ---- fused QDrop fake quantization ------------------------------------------------------------------
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

#include "quant/qdrop_kernel.h"

namespace inlierq::quant {
namespace {

std::atomic<int64_t> backward_ns{0};

// Dense memory (contiguous or channels-last) can be walked linearly; the mask follows memory order.
bool dense(const at::Tensor& t) {
  return t.is_contiguous() || (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast));
}
at::Tensor densify(const at::Tensor& t) { return dense(t) ? t : t.contiguous(); }

// Work in fixed chunks (multiples of 8, so packed bits never straddle two threads), whatever the thread count.
template <class F>
void for_chunks(int64_t n, F&& body) {
  const int64_t chunks = (n + kernel::kChunk - 1) / kernel::kChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) body(c, c * kernel::kChunk, std::min(n, (c + 1) * kernel::kChunk));
  });
}

// Forward saves what backward needs instead of x: one pass bit per element (the gradient to x is g or 0)
// and, when the step is learned, ∂x̂/∂s. Backward is then a plain streaming pass.
struct FakeQuantDropout : public torch::autograd::Function<FakeQuantDropout> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& scale,
                            double z, int64_t qn, int64_t qp, double grad_scale, double p, int64_t seed, bool grad) {
    const at::Tensor x = densify(x_in);
    at::Tensor out = at::empty_like(x);
    kernel::FakeQuantArgs a;
    a.scale = scale.item<float>(), a.zero = static_cast<float>(z), a.qn = static_cast<float>(qn), a.qp = static_cast<float>(qp);
    a.mask = kernel::Mask::make(p, static_cast<uint64_t>(seed));
    // (forward runs with grad mode off; `grad` says whether the caller records autograd)
    const bool want_x = grad && x_in.requires_grad(), want_s = grad && scale.requires_grad();
    const int64_t n = x.numel();
    at::Tensor bits = want_x ? at::zeros({(n + 7) / 8}, x.options().dtype(at::kByte)) : at::Tensor();
    at::Tensor ds = want_s ? at::empty_like(x) : at::Tensor();
    const float* xd = x.data_ptr<float>();
    float* od = out.data_ptr<float>();
    uint8_t* bd = want_x ? bits.data_ptr<uint8_t>() : nullptr;
    float* dd = want_s ? ds.data_ptr<float>() : nullptr;
    for_chunks(n, [&](int64_t, int64_t b, int64_t e) { kernel::fake_quant_forward(xd, od, bd, dd, b, e, a); });
    ctx->save_for_backward({bits, ds, scale});
    ctx->saved_data["sizes"] = x.sizes().vec();
    ctx->saved_data["strides"] = x.strides().vec();
    ctx->saved_data["gs"] = grad_scale;
    ctx->saved_data["want_x"] = want_x;
    ctx->saved_data["want_s"] = want_s;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& bits = saved[0];
    const at::Tensor& ds = saved[1];
    const at::Tensor& scale = saved[2];
    const auto sizes = ctx->saved_data["sizes"].toIntVector(), strides = ctx->saved_data["strides"].toIntVector();
    const bool want_x = ctx->saved_data["want_x"].toBool(), want_s = ctx->saved_data["want_s"].toBool();
    // The incoming gradient laid out like x, so both walk the same memory order.
    at::Tensor g = grads[0].strides() == at::IntArrayRef(strides) ? grads[0]
                                                                   : at::empty_strided(sizes, strides, grads[0].options()).copy_(grads[0]);
    at::Tensor gx = want_x ? at::empty_strided(sizes, strides, g.options()) : at::Tensor();
    const float* gd = g.data_ptr<float>();
    float* gxd = want_x ? gx.data_ptr<float>() : nullptr;
    const uint8_t* bd = want_x ? bits.data_ptr<uint8_t>() : nullptr;
    const float* dd = want_s ? ds.data_ptr<float>() : nullptr;
    const int64_t n = g.numel();
    std::vector<std::array<double, 8>> lanes(static_cast<size_t>((n + kernel::kChunk - 1) / kernel::kChunk));
    for_chunks(n, [&](int64_t c, int64_t b, int64_t e) {
      auto& l = lanes[static_cast<size_t>(c)];
      l.fill(0.0);
      kernel::fake_quant_backward(gd, bd, dd, gxd, l.data(), b, e);
    });
    at::Tensor gscale;
    if (want_s) {
      double total = 0;
      for (const auto& l : lanes)
        for (double v : l) total += v;  // fixed order: the same sum for any thread count
      gscale = at::full_like(scale, total * ctx->saved_data["gs"].toDouble());
    }
    backward_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    return {gx, gscale, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

double fused_fake_quant_backward_seconds() { return static_cast<double>(backward_ns.load()) * 1e-9; }

at::Tensor bernoulli_mask(const at::Tensor& like, double p, uint64_t seed) {
  if (!like.device().is_cpu()) return at::rand_like(like) < p;
  at::Tensor m = at::empty_like(densify(like), like.options().dtype(at::kBool));
  bool* d = m.data_ptr<bool>();
  const kernel::Mask mk = kernel::Mask::make(p, seed);
  at::parallel_for(0, m.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) d[i] = kernel::mask_at(mk, i);
  });
  return m;
}

at::Tensor random_select(const at::Tensor& a_in, const at::Tensor& b_in, double p, uint64_t seed) {
  if (!a_in.device().is_cpu() || a_in.scalar_type() != at::kFloat || b_in.scalar_type() != at::kFloat)
    return at::where(bernoulli_mask(a_in, p, seed), a_in, b_in);
  const at::Tensor a = densify(a_in);
  const at::Tensor b = b_in.strides() == a.strides() ? b_in : at::empty_like(a).copy_(b_in);
  at::Tensor out = at::empty_like(a);
  const float* ad = a.data_ptr<float>();
  const float* bd = b.data_ptr<float>();
  float* od = out.data_ptr<float>();
  const kernel::Mask mk = kernel::Mask::make(p, seed);
  for_chunks(a.numel(), [&](int64_t, int64_t s, int64_t e) { kernel::mask_select(ad, bd, od, s, e, mk); });
  return out;
}

at::Tensor fake_quant_dropout(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qn,
                              int64_t qp, double grad_scale, double p, uint64_t seed) {
  if (x.device().is_cpu() && x.scalar_type() == at::kFloat && scale.numel() == 1 && zero_point.numel() == 1 &&
      scale.scalar_type() == at::kFloat) {
    return FakeQuantDropout::apply(x, scale, zero_point.item<double>(), qn, qp, grad_scale, p, static_cast<int64_t>(seed),
                                   at::GradMode::is_enabled());
  }
  const at::Tensor q = fake_quant(x, scale, zero_point, qn, qp, grad_scale);
  return p >= 1.0 ? q : at::where(bernoulli_mask(x, p, seed), q, x);
}

}  // namespace inlierq::quant
