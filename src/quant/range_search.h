#pragma once
// Range calibration numerics (ALGORITHMS.md §1–2), kept free of torch so that it can be unit-tested and
// reused on raw float buffers: the affine quantizer on scalars, a streamed histogram, and the minmax /
// percentile / entropy / mse range searches. Invalid arguments throw inlierq::Error.
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace inlierq::quant {

// Integer grid of a b-bit quantizer (b in 2..8). Asymmetric: [0, 2^b-1]; symmetric: [-2^(b-1), 2^(b-1)-1].
struct QuantGrid {
  int bits = 8;
  bool symmetric = false;
  int64_t qn() const;
  int64_t qp() const;
};

// x_hat = (clamp(round(x/scale) + zero_point, Qn, Qp) - zero_point) * scale.
struct AffineParams {
  float scale = 1.0f;
  int64_t zero_point = 0;
};

// ALGORITHMS §1, computed in float32 as a torch float tensor would be.
// Asymmetric: widen [m, M] to include 0 (a zero-padded conv must represent 0 exactly);
//   s = max((M-m)/(Qp-Qn), 1e-8); z = clamp(Qn - round(m/s), Qn, Qp).
// Symmetric: z = 0 and s = max(max(|m|,|M|) * 2/(Qp-Qn), 1e-8), i.e. [-t, t] is mapped onto the
//   whole grid [Qn, Qp] (the torch observer / BRECQ / QDrop convention), so t/s = 127.5 at 8 bit:
//   +t itself clips to 127*s and -128*s lies slightly beyond -t.
// round() is half-to-even everywhere (std::nearbyint), as ONNX QuantizeLinear and torch.round.
AffineParams range_to_params(float m, float M, QuantGrid g);
// range_to_params, except that exactly [0, 0] (an all-zero weight channel, an activation that is zero on
// every calibration image) gets scale 1: zero is exact with any scale, and with the 1e-8 floor a consumer's
// bias scale s_in·s_w would not fit int32 (docs/QUANTIZATION.md, "Degenerate numbers").
AffineParams calibrated_params(float m, float M, QuantGrid g);
float fake_quant_value(float x, AffineParams p, QuantGrid g);

// Streamed histogram over a fixed range [lo, hi] with `bins` equal bins. Besides the counts it keeps the
// per-bin sum of the values, so the mean of each bin is known (the mse search represents a bin by its
// mean, which is exact for a bin holding a single distinct value). Values below lo / above hi land in
// the first / last bin; hi <= lo puts everything below-or-at lo in bin 0 and the rest in the last bin.
// Non-finite values are not binned but counted in `nonfinite`. Memory is O(bins).
struct Histogram {
  double lo = 0, hi = 0;
  std::vector<double> counts, sums;
  double vmin, vmax;       // extremes of the binned values (+inf / -inf while empty)
  double nonfinite = 0;    // NaN / inf values seen (weight-summed)

  Histogram(double lo, double hi, int bins);
  // One call per batch. w (optional, n entries, >= 0) weights each value: the inlier-weighted statistics
  // of ALGORITHMS §6.5; counts are then sums of weights.
  void add(const float* x, size_t n, const float* w = nullptr);
  // Bins |x| instead of x: the input of entropy_threshold (a histogram over [0, max|x|]).
  void add_abs(const float* x, size_t n, const float* w = nullptr);
  int bins() const { return static_cast<int>(counts.size()); }
  double bin_width() const;
  double total() const;
  int bin_of(double v) const;
};

// percentile: [value at (100-p)%, value at p%] of the histogrammed values, p in (50, 100]. Linear
// interpolation inside the bin that holds the rank; the edge bins are taken to span out to the
// observed vmin / vmax. Empty histogram: {0, 0}.
std::pair<float, float> percentile_range(const Histogram& h, double p);

// entropy: TensorRT-style KL calibration on a histogram of |x| over [0, max|x|] (h.lo must be 0; 2048
// bins in the reference). nq = 2^(bits-1) quantized levels (128 at 8 bit). For each bin count i in
// [nq, bins]: P = counts[0:i] with the clipped mass counts[i:] added to P[i-1]; Q = counts[0:i] merged
// into nq groups and spread back evenly over the bins of each group where P is non-zero; zeros of P
// and Q smoothed as ORT/MXNet do; KL(P||Q). Returns t = i*bin_width for the minimising i (the end of
// the i-th bin; the first i wins ties). Documented deviations from ONNX Runtime's
// get_entropy_threshold are in range_search.cpp.
// levels overrides nq (0 keeps 2^(bits-1)); an asymmetric grid over one-sided data has 2^bits levels
// between 0 and t, and the calibrator passes that.
float entropy_threshold(const Histogram& abs_hist, int bits, int levels = 0);

// mse (ALGORITHMS §2): the range minimising sum_j c_j |fq(v_j) - v_j|^p over `candidates` candidate ranges
// (QDrop's MSE observer), m/M = the observed data min/max (h.vmin / h.vmax for the histogram version):
//  - symmetric grid, or one-sided data (m >= 0 or M <= 0): thresholds t_i = i/candidates*max(|m|,|M|),
//    i = 1..candidates; the range is [-t, t] (symmetric grid, two-sided data), [0, t] (m >= 0) or
//    [-t, 0] (M <= 0). On an asymmetric grid [0, t] gives z = Qn and [-t, 0] gives z = Qp.
//  - asymmetric grid, two-sided data: widths r_i = i/candidates*(M-m), and for each width every integer
//    zero point zp in [Qn, Qp]: range [-zp*D, r_i - zp*D], D = r_i/(Qp-Qn).
// The first candidate in (i, zp) order wins ties, as in a strict-< exhaustive loop. The histogram
// version represents each bin by its mean value weighted by its count; the search is pruned (see the
// .cpp) but returns the exhaustive search's optimum. All-zero data gives {0, 0}.
std::pair<float, float> mse_range(const Histogram& h, QuantGrid g, double p = 2.4, int candidates = 100);
// mse with the error measured after an element-wise function f that follows the quantizer:
// sum_b c_b |f(x̂_b) − f(x_b)|^p over the bins' means. Asymmetric grids only; candidates: a
// `candidates` × `candidates` lattice of ranges [vmin·j/candidates, vmax·i/candidates] (clipping each
// side down to 1/candidates of it). For a quantizer in front of x·sigmoid(x) (the ORT layout's SiLU
// pre-activation) f = SiLU: values far below zero all map to ≈ 0, so the search clips that tail.
std::pair<float, float> mse_range_after(const Histogram& h, QuantGrid g, double (*f)(double), double p = 2.4,
                                        int candidates = 32);
double silu(double x);
// The same search on raw values (per-channel weights: small arrays), each value weighted 1; no histogram.
// Non-finite values are skipped. Cost grows with the number of distinct values (a few ms for 2304).
std::pair<float, float> mse_range_exact(const float* x, size_t n, QuantGrid g, double p = 2.4,
                                        int candidates = 100);

}  // namespace inlierq::quant
