#pragma once
// AdaRound's learnable rounding (ALGORITHMS.md §4), on at::Tensor. Internal header (exposes ATen).
// The reconstruction loop that uses it is src/recon/reconstruct.cpp.
#include <ATen/ATen.h>

namespace inlierq::recon {

struct AdaRoundConfig {
  double zeta = 1.1, gamma = -0.1;  // stretch of the rectified sigmoid
  double lambda = 0.01;             // weight of the rounding regulariser
  double beta_start = 20, beta_end = 2;
  double warmup = 0.2;              // fraction of iterations without the regulariser
};

// h(V) = clamp(sigmoid(V)·(ζ − γ) + γ, 0, 1).
at::Tensor rectified_sigmoid(const at::Tensor& v, const AdaRoundConfig& cfg = {});

// V such that h(V) = r = w/s − floor(w/s), so the soft weight starts at w (up to the clamp).
// scale broadcasts against w (per channel: quant::channel_view).
at::Tensor init_rounding_logits(const at::Tensor& w, const at::Tensor& scale, const AdaRoundConfig& cfg = {});

// w̃ = s·(clamp(floor(w/s) + h(V) + z, qn, qp) − z): differentiable in V.
at::Tensor soft_weight(const at::Tensor& w, const at::Tensor& v, const at::Tensor& scale, const at::Tensor& zero_point,
                       int64_t qn, int64_t qp, const AdaRoundConfig& cfg = {});
// The final weight: floor(w/s) + 1[V ≥ 0], clamped to the grid.
at::Tensor hard_weight(const at::Tensor& w, const at::Tensor& v, const at::Tensor& scale, const at::Tensor& zero_point,
                       int64_t qn, int64_t qp);

// Σ (1 − |2h(V) − 1|^β): pushes every h to 0 or 1.
at::Tensor rounding_regularizer(const at::Tensor& v, double beta, const AdaRoundConfig& cfg = {});
// β at iteration `iter` of `iters`: β_start until the warm-up ends, then linear down to β_end.
double beta_at(int64_t iter, int64_t iters, const AdaRoundConfig& cfg = {});
// Whether the regulariser is on at this iteration (off during the warm-up).
bool regularizer_active(int64_t iter, int64_t iters, const AdaRoundConfig& cfg = {});

}  // namespace inlierq::recon
