#pragma once
// Differentiable fake quantization on at::Tensor (internal: exposes ATen).
#include <ATen/ATen.h>

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
