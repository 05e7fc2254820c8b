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

#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace inlierq::quant {
namespace {

inline bool mask_at(uint64_t seed, int64_t i, uint64_t threshold) {
  return splitmix64(seed ^ (static_cast<uint64_t>(i) * 0xD1B54A32D192ED03ULL)) < threshold;
}
// Round half to even, like std::nearbyint in the default rounding mode but inlined: adding and removing
// 1.5·2²³ leaves the float rounded to an integer. Valid for |u| < 2²²; callers clamp u first, which
// cannot change the clamped result because the grid spans at most 2⁸ codes.
inline float round_half_even(float u) {
  constexpr float magic = 12582912.0f;
  float t = u + magic;
  asm("" : "+x"(t));  // keep the compiler from folding (u + M) − M to u
  return t - magic;
}
// Branch-free clamps: GCC compiles std::min/std::max on floats to compares and jumps here, and on
// activations (random signs around the clamp edges) those mispredict: 10× slower than minss/maxss.
#if defined(__SSE2__)
inline float max_f(float a, float b) { return _mm_cvtss_f32(_mm_max_ss(_mm_set_ss(a), _mm_set_ss(b))); }
inline float min_f(float a, float b) { return _mm_cvtss_f32(_mm_min_ss(_mm_set_ss(a), _mm_set_ss(b))); }
#else
inline float max_f(float a, float b) { return std::max(a, b); }
inline float min_f(float a, float b) { return std::min(a, b); }
#endif
inline float clamp_f(float v, float lo, float hi) { return min_f(max_f(v, lo), hi); }

// m ? a : b without a branch (the compiler turns a ternary on a random mask into a mispredicted jump).
inline float select(bool m, float a, float b) {
  uint32_t ua, ub;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  const uint32_t k = 0u - static_cast<uint32_t>(m);
  const uint32_t r = (ua & k) | (ub & ~k);
  float out;
  std::memcpy(&out, &r, 4);
  return out;
}
inline double select(bool m, double a) { return a * static_cast<double>(m); }
uint64_t threshold_of(double p) {
  if (p >= 1.0) return UINT64_MAX;
  if (p <= 0.0) return 0;
  return static_cast<uint64_t>(std::ldexp(p, 64));
}
// Dense memory (contiguous or channels-last) can be walked linearly; the mask follows memory order.
bool dense(const at::Tensor& t) {
  return t.is_contiguous() || (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast));
}
at::Tensor densify(const at::Tensor& t) { return dense(t) ? t : t.contiguous(); }

struct FakeQuantDropout : public torch::autograd::Function<FakeQuantDropout> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& scale,
                            double z, int64_t qn, int64_t qp, double grad_scale, double p, int64_t seed) {
    const at::Tensor x = densify(x_in);
    at::Tensor out = at::empty_like(x);
    const float s = scale.item<float>(), zf = static_cast<float>(z), lo = static_cast<float>(qn), hi = static_cast<float>(qp);
    const float* xd = x.data_ptr<float>();
    float* od = out.data_ptr<float>();
    const uint64_t thr = threshold_of(p), sd = static_cast<uint64_t>(seed);
    const bool all = p >= 1.0;
    // Branch-free: a random mask makes a branch mispredict on every other element.
    at::parallel_for(0, x.numel(), 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const bool m = all || mask_at(sd, i, thr);
        const float u = clamp_f(xd[i] / s, lo - zf - 1.0f, hi - zf + 1.0f);
        const float q = clamp_f(round_half_even(u) + zf, lo, hi);
        const float fq = (q - zf) * s;
        od[i] = select(m, fq, xd[i]);
      }
    });
    ctx->save_for_backward({x, scale});
    ctx->saved_data["z"] = z;
    ctx->saved_data["qn"] = qn;
    ctx->saved_data["qp"] = qp;
    ctx->saved_data["gs"] = grad_scale;
    ctx->saved_data["p"] = p;
    ctx->saved_data["seed"] = seed;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& scale = saved[1];
    const float zf = static_cast<float>(ctx->saved_data["z"].toDouble());
    const float lo = static_cast<float>(ctx->saved_data["qn"].toInt()), hi = static_cast<float>(ctx->saved_data["qp"].toInt());
    const double gs = ctx->saved_data["gs"].toDouble(), p = ctx->saved_data["p"].toDouble();
    const uint64_t sd = static_cast<uint64_t>(ctx->saved_data["seed"].toInt()), thr = threshold_of(p);
    const bool all = p >= 1.0;
    // The incoming gradient laid out like x, so both walk the same memory order.
    at::Tensor g = grads[0].is_contiguous(x.suggest_memory_format()) && grads[0].strides() == x.strides()
                       ? grads[0]
                       : at::empty_like(x).copy_(grads[0]);
    at::Tensor gx = at::empty_like(x);
    const float s = scale.item<float>();
    const float* xd = x.data_ptr<float>();
    const float* gd = g.data_ptr<float>();
    float* gxd = gx.data_ptr<float>();
    const bool want_s = scale.requires_grad();
    const int64_t n = x.numel();
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 4, (n + 32767) / 32768));
    std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        const int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
        double acc = 0;
        for (int64_t i = b; i < e; ++i) {
          const bool m = all || mask_at(sd, i, thr);
          const float u = xd[i] / s;
          const float v = u + zf;
          const bool below = v < lo, above = v > hi, inside = !below && !above;
          const float ur = clamp_f(u, lo - zf - 1.0f, hi - zf + 1.0f);  // keeps the rounding trick valid
          const float ds = select(below, lo - zf, select(above, hi - zf, round_half_even(ur) - ur));
          gxd[i] = select(!m || inside, gd[i], 0.0f);
          acc += select(m, static_cast<double>(gd[i]) * ds);
        }
        partial[static_cast<size_t>(c)] = acc;
      }
    });
    at::Tensor gscale;
    if (want_s) {
      double total = 0;
      for (double v : partial) total += v;  // fixed order: the same sum for any thread count
      gscale = at::full_like(scale, total * gs);
    }
    return {gx, gscale, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor bernoulli_mask(const at::Tensor& like, double p, uint64_t seed) {
  if (!like.device().is_cpu()) return at::rand_like(like) < p;
  at::Tensor m = at::empty_like(densify(like), like.options().dtype(at::kBool));
  bool* d = m.data_ptr<bool>();
  const uint64_t thr = threshold_of(p);
  const bool all = p >= 1.0;
  at::parallel_for(0, m.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) d[i] = all || mask_at(seed, i, thr);
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
  const uint64_t thr = threshold_of(p);
  at::parallel_for(0, a.numel(), 1 << 15, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) od[i] = select(mask_at(seed, i, thr), ad[i], bd[i]);
  });
  return out;
}

at::Tensor fake_quant_dropout(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qn,
                              int64_t qp, double grad_scale, double p, uint64_t seed) {
  if (x.device().is_cpu() && x.scalar_type() == at::kFloat && scale.numel() == 1 && zero_point.numel() == 1 &&
      scale.scalar_type() == at::kFloat) {
    return FakeQuantDropout::apply(x, scale, zero_point.item<double>(), qn, qp, grad_scale, p, static_cast<int64_t>(seed));
  }
  const at::Tensor q = fake_quant(x, scale, zero_point, qn, qp, grad_scale);
  return p >= 1.0 ? q : at::where(bernoulli_mask(x, p, seed), q, x);
}

}  // namespace inlierq::quant
