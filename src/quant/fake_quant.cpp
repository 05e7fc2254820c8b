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
