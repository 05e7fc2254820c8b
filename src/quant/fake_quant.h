#pragma once
// Differentiable fake quantization on at::Tensor (internal: exposes ATen).
#include <ATen/ATen.h>

#include <cstdint>

namespace inlierq::quant {

// x̂ = (clamp(round(x/s) + z, qn, qp) − z)·s, rounding half to even as ONNX QuantizeLinear does.
// scale and zero_point broadcast against x (per tensor: one element; per channel: see channel_view).
// Gradients use the straight-through estimator for the rounding: ∂x̂/∂x = 1 inside the clamp range and
// 0 outside; if scale requires grad it receives the LSQ gradient (round(u) − u inside, qn − z below,
// qp − z above, u = x/s), multiplied by grad_scale (LSQ's g = 1/sqrt(numel·qp); 1 leaves it unscaled).
at::Tensor fake_quant(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qn,
                      int64_t qp, double grad_scale = 1.0);

// LSQ's gradient scale g = 1/sqrt(N·qp) for a tensor of N elements.
double lsq_grad_scale(int64_t numel, int64_t qp);

// Reshapes a per-channel vector [C] to broadcast along `axis` of a rank-`rank` tensor.
at::Tensor channel_view(const at::Tensor& v, int64_t axis, int64_t rank);

// The integer codes clamp(round(x/s) + z, qn, qp) (float tensor holding integers), no gradient.
at::Tensor quantize_codes(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qn,
                          int64_t qp);

}  // namespace inlierq::quant

namespace inlierq::quant {

// SplitMix64's finaliser: the counter hash behind the masks (and reconstruction's per-unit seeds).
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// QDrop's stochastic fake quantization, fused: x̂ where a Bernoulli(p) mask selects, x elsewhere. The
// mask element at memory index i is fmix32(i·φ ⊕ seed) < p·2³² (murmur3's finaliser), so it is recomputed in backward
// instead of stored, and is the same for any thread count. Gradients as fake_quant() inside the mask,
// identity outside. One pass over memory each way on the CPU (per-tensor float scale); other cases use
// the composite ops. p = 1 is plain fake quantization.
at::Tensor fake_quant_dropout(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qn,
                              int64_t qp, double grad_scale, double p, uint64_t seed);

// Wall time spent in the fused kernel's backward since the process started (the reconstruction's phase
// timing reads differences of it; backward runs inside autograd, out of the caller's sight).
double fused_fake_quant_backward_seconds();

// out[i] = a[i] where the same hashed Bernoulli(p) mask is set, else b[i] (no gradient): QDrop's mix of
// quantized-prefix and FP inputs. a and b must have equal shapes.
at::Tensor random_select(const at::Tensor& a, const at::Tensor& b, double p, uint64_t seed);

// The hashed mask itself, as a bool tensor laid out like `like` (for tests and CUDA).
at::Tensor bernoulli_mask(const at::Tensor& like, double p, uint64_t seed);

}  // namespace inlierq::quant
