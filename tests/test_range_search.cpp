// Range calibration numerics (src/quant/range_search.*): the affine quantizer against hand-computed values,
// round-trip error budgets per bit width, the histogram, percentile against a sort, entropy against
// properties and ONNX Runtime's thresholds, and the pruned mse search against a brute-force one.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "inlierq/error.h"
#include "quant/range_search.h"

using namespace inlierq;
using namespace inlierq::quant;

namespace {

// Platform-independent generators (std::normal_distribution differs between standard libraries, which
// would move the measured budgets): mt19937's output is specified; Box-Muller on top of it.
class Rng {
 public:
  explicit Rng(uint32_t seed) : g_(seed) {}
  double uniform() { return (static_cast<double>(g_()) + 0.5) / 4294967296.0; }  // (0, 1)
  double normal() {
    const double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  std::mt19937 g_;
};

std::vector<float> normal_data(size_t n, uint32_t seed, double sigma = 1.0) {
  Rng r(seed);
  std::vector<float> x(n);
  for (auto& v : x) v = static_cast<float>(sigma * r.normal());
  return x;
}

std::vector<float> uniform_data(size_t n, uint32_t seed) {  // U(-1, 1)
  Rng r(seed);
  std::vector<float> x(n);
  for (auto& v : x) v = static_cast<float>(2.0 * r.uniform() - 1.0);
  return x;
}

// SiLU of a scaled Gaussian: two-sided and skewed (min ~ -0.28*scale), the typical YOLO activation.
std::vector<float> silu_data(size_t n, uint32_t seed) {
  Rng r(seed);
  std::vector<float> x(n);
  for (auto& v : x) {
    const double z = 2.0 * r.normal();
    v = static_cast<float>(z / (1.0 + std::exp(-z)));
  }
  return x;
}

std::pair<float, float> min_max(const std::vector<float>& x) {
  const auto mm = std::minmax_element(x.begin(), x.end());
  return {*mm.first, *mm.second};
}

Histogram histogram_of(const std::vector<float>& x, int bins) {
  const auto mm = min_max(x);
  Histogram h(mm.first, mm.second, bins);
  h.add(x.data(), x.size());
  return h;
}

double lp_error(const std::vector<float>& x, std::pair<float, float> range, QuantGrid g, double p) {
  const AffineParams q = range_to_params(range.first, range.second, g);
  double e = 0;
  for (float v : x) e += std::pow(std::fabs(static_cast<double>(fake_quant_value(v, q, g)) - v), p);
  return e;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Quantizer

TEST(RangeSearchQuantizer, GridBounds) {
  EXPECT_EQ((QuantGrid{8, false}.qn()), 0);
  EXPECT_EQ((QuantGrid{8, false}.qp()), 255);
  EXPECT_EQ((QuantGrid{8, true}.qn()), -128);
  EXPECT_EQ((QuantGrid{8, true}.qp()), 127);
  EXPECT_EQ((QuantGrid{4, false}.qp()), 15);
  EXPECT_EQ((QuantGrid{4, true}.qn()), -8);
  EXPECT_EQ((QuantGrid{2, false}.qp()), 3);
  EXPECT_EQ((QuantGrid{2, true}.qn()), -2);
  EXPECT_EQ((QuantGrid{2, true}.qp()), 1);
  EXPECT_THROW(range_to_params(0, 1, QuantGrid{1, false}), Error);
  EXPECT_THROW(range_to_params(0, 1, QuantGrid{9, true}), Error);
}

TEST(RangeSearchQuantizer, RangeToParamsClosedForms) {
  // 8-bit asym [-1, 3]: s = 4/255; m/s = -63.75 -> z = 64.
  AffineParams a = range_to_params(-1.0f, 3.0f, {8, false});
  EXPECT_FLOAT_EQ(a.scale, 4.0f / 255.0f);
  EXPECT_EQ(a.zero_point, 64);
  // 4-bit asym, range not containing 0, positive: widened to [0, 2]: s = 2/15, z = 0.
  a = range_to_params(0.5f, 2.0f, {4, false});
  EXPECT_FLOAT_EQ(a.scale, 2.0f / 15.0f);
  EXPECT_EQ(a.zero_point, 0);
  // 4-bit asym, negative range [-3, -1] -> [-3, 0]: s = 0.2, z = 0 - round(-15) = 15 = Qp (the upper end
  // of the clamp; after widening to include 0, z can only reach Qn..Qp, so the clamp is a safety net).
  a = range_to_params(-3.0f, -1.0f, {4, false});
  EXPECT_FLOAT_EQ(a.scale, 0.2f);
  EXPECT_EQ(a.zero_point, 15);
  // 2-bit asym [-1, 2]: s = 1, z = 1; [-0.5, 0.5]: s = 1/3, m/s = -1.5 -> round half to even = -2 -> z = 2.
  a = range_to_params(-1.0f, 2.0f, {2, false});
  EXPECT_FLOAT_EQ(a.scale, 1.0f);
  EXPECT_EQ(a.zero_point, 1);
  a = range_to_params(-0.5f, 0.5f, {2, false});
  EXPECT_FLOAT_EQ(a.scale, 1.0f / 3.0f);
  EXPECT_EQ(a.zero_point, 2);
  // Symmetric: s = max(|m|,|M|) * 2/(Qp-Qn), z = 0.
  a = range_to_params(-1.0f, 3.0f, {8, true});
  EXPECT_FLOAT_EQ(a.scale, 6.0f / 255.0f);
  EXPECT_EQ(a.zero_point, 0);
  a = range_to_params(-0.5f, 0.2f, {2, true});
  EXPECT_FLOAT_EQ(a.scale, 1.0f / 3.0f);
  EXPECT_EQ(a.zero_point, 0);
  a = range_to_params(0.25f, 1.5f, {4, true});  // one-sided data on a symmetric grid: t = 1.5
  EXPECT_FLOAT_EQ(a.scale, 3.0f / 15.0f);
  // Degenerate range: the scale floor.
  for (bool sym : {false, true}) {
    a = range_to_params(0.0f, 0.0f, {8, sym});
    EXPECT_FLOAT_EQ(a.scale, 1e-8f);
    EXPECT_EQ(a.zero_point, 0);
  }
}

TEST(RangeSearchQuantizer, FakeQuantClosedForms) {
  const QuantGrid g8{8, false};
  const AffineParams a = range_to_params(-1.0f, 3.0f, g8);  // s = 4/255, z = 64
  const float s = 4.0f / 255.0f;
  EXPECT_FLOAT_EQ(fake_quant_value(1.0f, a, g8), 64 * s);      // 1/s = 63.75 -> 64
  EXPECT_FLOAT_EQ(fake_quant_value(0.0f, a, g8), 0.0f);        // 0 is exact
  EXPECT_FLOAT_EQ(fake_quant_value(10.0f, a, g8), 191 * s);    // clamped to Qp: (255-64)*s
  EXPECT_FLOAT_EQ(fake_quant_value(-5.0f, a, g8), -64 * s);    // clamped to Qn: (0-64)*s
  // Round half to even on a unit scale (symmetric 4-bit grid [-8, 7]).
  const QuantGrid g4{4, true};
  const AffineParams unit{1.0f, 0};
  EXPECT_EQ(fake_quant_value(2.5f, unit, g4), 2.0f);
  EXPECT_EQ(fake_quant_value(3.5f, unit, g4), 4.0f);
  EXPECT_EQ(fake_quant_value(-2.5f, unit, g4), -2.0f);
  EXPECT_EQ(fake_quant_value(0.5f, unit, g4), 0.0f);
  EXPECT_EQ(fake_quant_value(-0.5f, unit, g4), 0.0f);
  EXPECT_EQ(fake_quant_value(7.6f, unit, g4), 7.0f);
  EXPECT_EQ(fake_quant_value(-9.0f, unit, g4), -8.0f);
  // 2-bit asym with a zero point: s = 1, z = 1 -> representable {-1, 0, 1, 2}.
  const QuantGrid g2{2, false};
  const AffineParams p2 = range_to_params(-1.0f, 2.0f, g2);
  EXPECT_EQ(fake_quant_value(-3.0f, p2, g2), -1.0f);
  EXPECT_EQ(fake_quant_value(1.4f, p2, g2), 1.0f);
  EXPECT_EQ(fake_quant_value(1.5f, p2, g2), 2.0f);  // 1.5 -> 2 (even)
  EXPECT_EQ(fake_quant_value(0.5f, p2, g2), 0.0f);  // 0.5 -> 0 (even)
  EXPECT_EQ(fake_quant_value(5.0f, p2, g2), 2.0f);
}

// Round-trip error budgets (llama.cpp style): quantize 20k values of N(0,1) and of U(-1,1) with the
// minmax range and with mse_range_exact, sym and asym, 2..8 bits. Every value inside the representable
// range [(Qn-z)s, (Qp-z)s] must be within s/2 * (1 + 1e-6) (the float32 rounding of x/s and (q-z)*s could
// in principle add about an ulp of |x|; on this data it does not), and the RMS error over all values
// (clipped ones included) must stay under a budget set 10 % above the values measured when this test was
// written (x86-64, g++ -O2):
//
//   bits   N(0,1) minmax      N(0,1) mse         U(-1,1) minmax     U(-1,1) mse
//          asym     sym       asym     sym       asym     sym       asym     sym
//   2    0.7717   0.8056    0.3889   0.3915    0.1926   0.1926    0.1892   0.1903
//   3    0.3465   0.3679    0.204    0.2053    0.08203  0.08203   0.0818   0.08199
//   4    0.1612   0.1719    0.1129   0.112     0.03841  0.03841   0.03835  0.03838
//   5    0.07836  0.08347   0.06191  0.06237   0.01868  0.01868   0.0186   0.01861
//   6    0.03861  0.04098   0.03408  0.03441   0.009179 0.009179  0.009154 0.009179
//   7    0.01908  0.02049   0.01793  0.0188    0.00454  0.004539  0.00454  0.004539
//   8    0.00952  0.01011   0.009382 0.009951  0.002276 0.002275  0.002276 0.002275
//
// (minmax matches s/sqrt(12), e.g. N(0,1) 8-bit asym: s = 0.0330 -> 0.00953.) The mse range must also
// beat minmax clearly where clipping pays, on N(0,1) at 2..4 bits.
TEST(RangeSearchRoundTrip, ErrorBudgetsPerBitWidth) {
  // kMeasured[dist][method][sym][bits-2], dist: 0 = N(0,1), 1 = U(-1,1); method: 0 = minmax, 1 = mse.
  static const double kMeasured[2][2][2][7] = {
      {{{0.7717, 0.3465, 0.1612, 0.07836, 0.03861, 0.01908, 0.00952},
        {0.8056, 0.3679, 0.1719, 0.08347, 0.04098, 0.02049, 0.01011}},
       {{0.3889, 0.204, 0.1129, 0.06191, 0.03408, 0.01793, 0.009382},
        {0.3915, 0.2053, 0.112, 0.06237, 0.03441, 0.0188, 0.009951}}},
      {{{0.1926, 0.08203, 0.03841, 0.01868, 0.009179, 0.00454, 0.002276},
        {0.1926, 0.08203, 0.03841, 0.01868, 0.009179, 0.004539, 0.002275}},
       {{0.1892, 0.0818, 0.03835, 0.0186, 0.009154, 0.00454, 0.002276},
        {0.1903, 0.08199, 0.03838, 0.01861, 0.009179, 0.004539, 0.002275}}},
  };
  const std::vector<float> data[2] = {normal_data(20000, 11), uniform_data(20000, 12)};
  double rms_of[2][2][2][7];
  for (int d = 0; d < 2; ++d)
    for (int method = 0; method < 2; ++method)
      for (int sym = 0; sym < 2; ++sym)
        for (int bits = 2; bits <= 8; ++bits) {
          const QuantGrid g{bits, sym == 1};
          const auto& x = data[d];
          const auto range = method == 0 ? min_max(x) : mse_range_exact(x.data(), x.size(), g);
          const AffineParams q = range_to_params(range.first, range.second, g);
          const double lo = static_cast<double>(g.qn() - q.zero_point) * q.scale;
          const double hi = static_cast<double>(g.qp() - q.zero_point) * q.scale;
          double sq = 0, max_inside = 0, excess = 0;
          for (float v : x) {
            const double e = std::fabs(static_cast<double>(fake_quant_value(v, q, g)) - v);
            sq += e * e;
            if (v >= lo && v <= hi) {
              max_inside = std::max(max_inside, e);
              excess = std::max(excess, e - q.scale / 2.0 * (1 + 1e-6));
            }
          }
          const double rms = std::sqrt(sq / static_cast<double>(x.size()));
          const double budget = kMeasured[d][method][sym][bits - 2] * 1.1;
          SCOPED_TRACE(testing::Message() << (d ? "U(-1,1)" : "N(0,1)") << (method ? " mse" : " minmax")
                                          << (sym ? " sym " : " asym ") << bits << " bit");
          EXPECT_LE(excess, 0.0) << "max error inside the range " << max_inside << " vs s/2 = " << q.scale / 2;
          EXPECT_LE(rms, budget);
          rms_of[d][method][sym][bits - 2] = rms;
        }
  for (int sym = 0; sym < 2; ++sym)
    for (int bits = 2; bits <= 4; ++bits) EXPECT_LT(rms_of[0][1][sym][bits - 2], 0.8 * rms_of[0][0][sym][bits - 2]);
}

// ---------------------------------------------------------------------------------------------------
// Histogram

TEST(RangeSearchHistogram, BinsCountsSumsAndEdges) {
  Histogram h(0.0, 4.0, 4);  // bins [0,1) [1,2) [2,3) [3,4]
  const std::vector<float> x = {0.0f, 0.99f, 1.0f, 2.5f, 3.99f, 4.0f, -1.0f, 7.0f};
  h.add(x.data(), x.size());
  EXPECT_EQ(h.counts, (std::vector<double>{3, 1, 1, 3}));  // -1 -> bin 0; 4.0 and 7 -> the last bin
  EXPECT_DOUBLE_EQ(h.sums[0], 0.0 + double(0.99f) - 1.0);
  EXPECT_DOUBLE_EQ(h.sums[1], 1.0);
  EXPECT_DOUBLE_EQ(h.sums[2], 2.5);
  EXPECT_DOUBLE_EQ(h.sums[3], double(3.99f) + 4.0 + 7.0);
  EXPECT_DOUBLE_EQ(h.vmin, -1.0);
  EXPECT_DOUBLE_EQ(h.vmax, 7.0);
  EXPECT_DOUBLE_EQ(h.bin_width(), 1.0);

  // Streamed in batches, with weights, non-finite values and |x|.
  Histogram w(0.0, 2.0, 2);
  const float a[] = {0.5f, -1.5f, std::numeric_limits<float>::quiet_NaN(), 1.5f};
  const float wa[] = {2.0f, 1.0f, 1.0f, 0.0f};
  w.add_abs(a, 2, wa);  // 0.5 (w 2), 1.5 (w 1)
  w.add_abs(a + 2, 2, wa + 2);  // NaN -> nonfinite, 1.5 with weight 0 -> ignored
  EXPECT_EQ(w.counts, (std::vector<double>{2, 1}));
  EXPECT_EQ(w.sums, (std::vector<double>{1.0, 1.5}));
  EXPECT_DOUBLE_EQ(w.nonfinite, 1.0);
  EXPECT_DOUBLE_EQ(w.total(), 3.0);
  EXPECT_DOUBLE_EQ(w.vmax, 1.5);
  const float negative_weight = -1.0f;
  EXPECT_THROW(w.add(a, 1, &negative_weight), Error);
  EXPECT_THROW(Histogram(0.0, 1.0, 0), Error);
}

TEST(RangeSearchHistogram, LargeStreamMatchesDirectCounting) {
  const std::vector<float> x = normal_data(100000, 3);
  Histogram h(-2.0, 2.0, 64);  // deliberately narrower than the data: tails land in the edge bins
  for (size_t off = 0; off < x.size(); off += 4096) h.add(x.data() + off, std::min<size_t>(4096, x.size() - off));
  std::vector<double> cnt(64, 0), sum(64, 0);
  for (float v : x) {
    int b = static_cast<int>(std::floor((v + 2.0) / 4.0 * 64));
    b = std::max(0, std::min(63, b));
    cnt[b] += 1;
    sum[b] += v;
  }
  EXPECT_DOUBLE_EQ(h.total(), 100000.0);
  double total_sum = 0, direct_sum = 0;
  for (int b = 0; b < 64; ++b) {
    EXPECT_EQ(h.counts[b], cnt[b]) << b;
    EXPECT_NEAR(h.sums[b], sum[b], 1e-9 * (1 + std::fabs(sum[b]))) << b;
    total_sum += h.sums[b];
  }
  for (float v : x) direct_sum += v;
  EXPECT_NEAR(total_sum, direct_sum, 1e-6);
  EXPECT_GT(h.counts[0], 2000);  // ~2.3 % of N(0,1) lies below -2
  EXPECT_GT(h.counts[63], 2000);
}

// ---------------------------------------------------------------------------------------------------
// percentile

TEST(RangeSearchPercentile, MatchesSortBasedPercentileWithinOneBin) {
  std::vector<float> x = silu_data(200000, 5);
  for (int i = 0; i < 10; ++i) x.push_back(25.0f + i);  // a far tail (0.005 %) the 99.99 % point ignores
  const Histogram h = histogram_of(x, 2048);
  std::vector<float> sorted = x;
  std::sort(sorted.begin(), sorted.end());
  auto sort_percentile = [&](double q) {  // numpy's default (linear) definition
    const double pos = q * static_cast<double>(sorted.size() - 1);
    const size_t i = static_cast<size_t>(std::floor(pos));
    const double f = pos - static_cast<double>(i);
    return i + 1 < sorted.size() ? sorted[i] * (1 - f) + sorted[i + 1] * f : double(sorted[i]);
  };
  for (double p : {99.0, 99.9, 99.99}) {
    const auto r = percentile_range(h, p);
    EXPECT_NEAR(r.first, sort_percentile(1 - p / 100), h.bin_width()) << p;
    EXPECT_NEAR(r.second, sort_percentile(p / 100), h.bin_width()) << p;
  }
  const auto all = percentile_range(h, 100.0);
  EXPECT_FLOAT_EQ(all.first, sorted.front());
  EXPECT_FLOAT_EQ(all.second, sorted.back());
  EXPECT_LT(percentile_range(h, 99.99).second, 20.0f);
  EXPECT_THROW(percentile_range(h, 40.0), Error);
}

// ---------------------------------------------------------------------------------------------------
// entropy

TEST(RangeSearchEntropy, AllMassInsideTheFirstQuantizedBinsIsCovered) {
  // 8 bit: nq = 128. Mass only in bins [0, 100): the first candidate (128 bins) reproduces P exactly
  // (one bin per level), KL = 0, and ties go to the first candidate.
  Histogram h(0.0, 2048.0, 2048);
  for (int j = 0; j < 100; ++j) {
    h.counts[j] = std::round(1e5 * std::exp(-0.5 * (j / 40.0) * (j / 40.0)));
    h.sums[j] = h.counts[j] * (j + 0.5);
  }
  const float t = entropy_threshold(h, 8);
  EXPECT_GE(t, 100.0f);
  EXPECT_FLOAT_EQ(t, 128.0f);
}

TEST(RangeSearchEntropy, GaussianWithFarOutliersIsClippedNotStretched) {
  std::vector<float> x = normal_data(500000, 7);
  for (int i = 0; i < 5; ++i) x.push_back(20.0f + i);  // max|x| = 24 sigma
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  Histogram h(0.0, amax, 2048);
  h.add_abs(x.data(), x.size());
  const float t8 = entropy_threshold(h, 8), t4 = entropy_threshold(h, 4);
  printf("entropy thresholds N(0,1)+outliers: 8 bit %.4f, 4 bit %.4f (max|x| %.2f)\n", t8, t4, amax);
  EXPECT_GT(t8, 3.0f);
  EXPECT_LT(t8, 0.3f * amax);
  EXPECT_GT(t4, 1.5f);
  EXPECT_LT(t4, t8);  // fewer levels: clipping gets relatively cheaper than rounding
}

// Three closed-form |x| histograms (2048 bins of width 1) for which ONNX Runtime 1.32's
// HistogramCollector.get_entropy_threshold reports the thresholds below. Its conventions differ (see the
// note above entropy_threshold in range_search.cpp): it takes a signed histogram (we give it the |x|
// histogram mirrored around 0 with 2*nq quantized bins, i.e. nq per side) and for slice i it reports
// (-i, i+1) bins, while entropy_threshold reports i. Its remainder-bin quirk penalises every candidate
// that clips mass, so the histograms are chosen so that it does not decide: each has a support ending
// at a multiple of 128 bins (where ORT's integer group size splits the slice as evenly as ours) with a
// single far outlier count. Generated once with:
//
//   import numpy as np
//   from onnxruntime.quantization.calibrate import HistogramCollector
//   N = 2048; j = np.arange(N)
//   def case(k):
//       if k == 0: c = np.where(j < 512, np.round(1e6 * np.exp(-0.5 * (j / 170.0) ** 2)), 0); c[2047] += 1
//       if k == 1: c = np.where(j < 384, 1000.0 * (384 - j) + 100000, 0); c[1500] += 1
//       if k == 2: c = np.where(j < 768, np.round(1e6 * np.exp(-j / 300.0)), 0); c[2000] += 1
//       return c.astype(np.int64)
//   for bits in (8, 4):
//       for k in range(3):
//           a = case(k); h = np.concatenate([a[::-1], a]); edges = np.arange(-N, N + 1).astype(np.float32)
//           col = HistogramCollector("entropy", True, 2 * N, 2 ** bits, None, None)
//           print(bits, k, col.get_entropy_threshold((h, edges, np.float32(-N), np.float32(N)), 2 ** bits))
//
// Output (lo, hi): 8 bit: (-512, 513), (-384, 385), (-768, 769); 4 bit: the same.
TEST(RangeSearchEntropy, AgreesWithOnnxRuntimeOnClosedFormHistograms) {
  const int N = 2048;
  auto make = [&](int k) {
    Histogram h(0.0, N, N);
    for (int j = 0; j < N; ++j) {
      double c = 0;
      if (k == 0 && j < 512) c = std::nearbyint(1e6 * std::exp(-0.5 * (j / 170.0) * (j / 170.0)));
      if (k == 1 && j < 384) c = 1000.0 * (384 - j) + 100000;
      if (k == 2 && j < 768) c = std::nearbyint(1e6 * std::exp(-j / 300.0));
      h.counts[j] = c;
      h.sums[j] = c * (j + 0.5);
    }
    h.counts[k == 0 ? 2047 : k == 1 ? 1500 : 2000] += 1;
    return h;
  };
  const int ort_hi[3] = {513, 385, 769};  // ORT's upper edge = our threshold + 1 bin
  for (int bits : {8, 4})
    for (int k = 0; k < 3; ++k) {
      // Case 0 at 4 bit: we clip the last 2 bins (510: KL 0.005669 vs 0.005706 at 512 in a numpy
      // evaluation of our definition), which ORT's remainder penalty rules out: allow 2 bins there.
      const double tol = bits == 4 && k == 0 ? 2.0 : 1.0;
      const float t = entropy_threshold(make(k), bits);
      EXPECT_NEAR(t, ort_hi[k] - 1, tol) << "case " << k << ", " << bits << " bit";
    }
}

TEST(RangeSearchEntropy, RejectsSignedHistograms) {
  Histogram h(-1.0, 1.0, 16);
  EXPECT_THROW(entropy_threshold(h, 8), Error);
}

// ---------------------------------------------------------------------------------------------------
// mse

namespace {

struct BruteResult {
  double err;
  std::vector<std::pair<float, float>> best_ranges;  // every candidate within 1e-12 of the optimum
};

// The search of ALGORITHMS §2 written out directly: every candidate, every point, double arithmetic,
// x_hat = (clamp(round(v/s) + z, Qn, Qp) - z) * s.
BruteResult brute_force_mse(const std::vector<std::pair<double, double>>& pts, double m, double M, QuantGrid g,
                            double p, int cand) {
  const double qn = static_cast<double>(g.qn()), qp = static_cast<double>(g.qp()), levels = qp - qn;
  struct C {
    double s, z;
    std::pair<float, float> range;
  };
  std::vector<C> cs;
  if (g.symmetric || m >= 0 || M <= 0) {
    const double T = std::max(std::fabs(m), std::fabs(M));
    for (int i = 1; i <= cand; ++i) {
      const double t = T * i / cand;
      if (g.symmetric) {
        const std::pair<float, float> r = m >= 0 ? std::pair<float, float>(0.0f, float(t))
                                          : M <= 0 ? std::pair<float, float>(float(-t), 0.0f)
                                                   : std::pair<float, float>(float(-t), float(t));
        cs.push_back({2 * t / levels, 0, r});
      } else if (m >= 0) {
        cs.push_back({t / levels, qn, {0.0f, float(t)}});
      } else {
        cs.push_back({t / levels, qp, {float(-t), 0.0f}});
      }
    }
  } else {
    for (int i = 1; i <= cand; ++i) {
      const double r = (M - m) * i / cand, d = r / levels;
      for (double zp = qn; zp <= qp; ++zp) cs.push_back({d, qn + zp, {float(-zp * d), float(r - zp * d)}});
    }
  }
  std::vector<double> errs;
  double best = std::numeric_limits<double>::infinity();
  for (const C& c : cs) {
    double e = 0;
    for (const auto& [v, n] : pts) {
      const double q = std::min(std::max(std::nearbyint(v / c.s) + c.z, qn), qp);
      e += n * std::pow(std::fabs((q - c.z) * c.s - v), p);
    }
    errs.push_back(e);
    best = std::min(best, e);
  }
  BruteResult r{best, {}};
  for (size_t k = 0; k < cs.size(); ++k)
    if (errs[k] <= best * (1 + 1e-12)) r.best_ranges.push_back(cs[k].range);
  return r;
}

std::vector<std::pair<double, double>> points_of(const Histogram& h) {
  std::vector<std::pair<double, double>> pts;
  for (int j = 0; j < h.bins(); ++j)
    if (h.counts[j] > 0) pts.push_back({h.sums[j] / h.counts[j], h.counts[j]});
  return pts;
}

void expect_among(std::pair<float, float> got, const BruteResult& b) {
  const bool found = std::find(b.best_ranges.begin(), b.best_ranges.end(), got) != b.best_ranges.end();
  EXPECT_TRUE(found) << "mse search returned [" << got.first << ", " << got.second
                     << "], not an exhaustive optimum (e.g. [" << b.best_ranges.front().first << ", "
                     << b.best_ranges.front().second << "], error " << b.err << ")";
}

}  // namespace

TEST(RangeSearchMse, PrunedHistogramSearchEqualsExhaustiveSearch) {
  std::vector<float> gauss_outl = normal_data(100000, 21);
  for (int i = 0; i < 10; ++i) gauss_outl.push_back(9.0f + i);
  std::vector<float> relu = silu_data(100000, 22);
  for (auto& v : relu) v = std::max(v, 0.0f);
  std::vector<float> negative = normal_data(50000, 23);
  for (auto& v : negative) v = -std::fabs(v) - 0.5f;  // M < 0
  const std::vector<float> silu = silu_data(100000, 24);

  struct Case {
    const std::vector<float>* x;
    int bins;
    QuantGrid g;
    const char* name;
  };
  const Case cases[] = {
      {&gauss_outl, 256, {8, false}, "gauss+outliers 8b asym"},
      {&silu, 256, {8, false}, "silu 8b asym"},
      {&silu, 2048, {4, false}, "silu 4b asym"},
      {&gauss_outl, 2048, {2, false}, "gauss+outliers 2b asym"},
      {&gauss_outl, 2048, {8, true}, "gauss+outliers 8b sym"},
      {&silu, 2048, {3, true}, "silu 3b sym"},
      {&relu, 2048, {4, false}, "relu 4b asym (one-sided)"},
      {&relu, 2048, {8, true}, "relu 8b sym (one-sided)"},
      {&negative, 2048, {4, false}, "negative 4b asym (one-sided)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const Histogram h = histogram_of(*c.x, c.bins);
    const auto got = mse_range(h, c.g);
    expect_among(got, brute_force_mse(points_of(h), h.vmin, h.vmax, c.g, 2.4, 100));
    // A different exponent and candidate count go through the same code.
    const auto got2 = mse_range(h, c.g, 2.0, 37);
    expect_among(got2, brute_force_mse(points_of(h), h.vmin, h.vmax, c.g, 2.0, 37));
  }
  // One-sided negative data gives [-t, 0] (z = Qp), positive data [0, t] (z = Qn).
  const auto neg = mse_range(histogram_of(negative, 2048), {4, false});
  EXPECT_EQ(neg.second, 0.0f);
  EXPECT_EQ(range_to_params(neg.first, neg.second, {4, false}).zero_point, 15);
  EXPECT_EQ(mse_range(histogram_of(relu, 2048), {4, false}).first, 0.0f);
}

// Random multi-cluster data with spikes (repeated values), small histograms, 2..5 bit asym, random p and
// candidate counts. The error along the zero points of one width then can have several local minima and
// the optimum can be dominated by clipping, which is where a wrong pruning rule shows. Most such datasets
// are still easy, so besides every 100th trial the test checks trials on which deliberately broken
// variants of mse_range were seen to return a non-optimal range: 631 938 1218 2153 (a greedy zero-point
// scan that stops at the first non-improving zero point), 28 71 (abort a window at 0.8x the best error),
// 105 510 340 671 (stop a zero-point direction when the window's total, not its one-sided clipping error,
// exceeds the best). Generating all 3000 datasets keeps the random stream in step.
TEST(RangeSearchMse, PrunedSearchEqualsExhaustiveSearchOnRandomMultimodalData) {
  const std::vector<int> hard = {28, 71, 105, 340, 510, 631, 671, 938, 1218, 2153};
  Rng r(1234);
  int checked = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<float> x;
    const int clusters = 1 + static_cast<int>(r.uniform() * 5);
    for (int c = 0; c < clusters; ++c) {
      const double center = 40 * r.uniform() - 15, spread = 0.02 + 3 * r.uniform() * r.uniform();
      const int n = 5 + static_cast<int>(r.uniform() * r.uniform() * 3000);
      const bool spike = r.uniform() < 0.3;
      for (int i = 0; i < n; ++i) x.push_back(static_cast<float>(spike ? center : center + spread * r.normal()));
    }
    const int bins = 8 + static_cast<int>(r.uniform() * 120);
    const int bits = 2 + static_cast<int>(r.uniform() * 4);
    const double p = r.uniform() < 0.5 ? 2.4 : 0.5 + 3 * r.uniform();
    const int cand = 3 + static_cast<int>(r.uniform() * 60);
    if (trial % 100 != 0 && std::find(hard.begin(), hard.end(), trial) == hard.end()) continue;
    const Histogram h = histogram_of(x, bins);
    const QuantGrid g{bits, false};
    SCOPED_TRACE(testing::Message() << "trial " << trial << ": " << bins << " bins, " << bits << " bit, p " << p
                                    << ", " << cand << " candidates");
    expect_among(mse_range(h, g, p, cand), brute_force_mse(points_of(h), h.vmin, h.vmax, g, p, cand));
    // The symmetric and one-sided paths on the same data.
    const QuantGrid gs{bits, true};
    expect_among(mse_range(h, gs, p, cand), brute_force_mse(points_of(h), h.vmin, h.vmax, gs, p, cand));
    ++checked;
  }
  EXPECT_EQ(checked, 40);
}

TEST(RangeSearchMse, ExactSearchEqualsExhaustiveSearchOnRawValues) {
  std::vector<float> w = normal_data(300, 31, 0.05);  // a conv weight channel
  w.push_back(0.4f);
  w.push_back(w[0]);  // a duplicate value
  for (QuantGrid g : {QuantGrid{8, false}, QuantGrid{4, false}, QuantGrid{4, true}, QuantGrid{2, false}}) {
    SCOPED_TRACE(testing::Message() << g.bits << (g.symmetric ? " sym" : " asym"));
    std::vector<std::pair<double, double>> pts;
    for (float v : w) pts.push_back({v, 1.0});
    const auto mm = min_max(w);
    expect_among(mse_range_exact(w.data(), w.size(), g), brute_force_mse(pts, mm.first, mm.second, g, 2.4, 100));
  }
}

TEST(RangeSearchMse, HistogramSearchIsCloseToTheExactOne) {
  const std::vector<float> x = silu_data(50000, 41);
  const Histogram h = histogram_of(x, 2048);
  for (QuantGrid g : {QuantGrid{8, false}, QuantGrid{4, false}, QuantGrid{8, true}, QuantGrid{4, true}}) {
    SCOPED_TRACE(testing::Message() << g.bits << (g.symmetric ? " sym" : " asym"));
    const auto rh = mse_range(h, g);
    const auto re = mse_range_exact(x.data(), x.size(), g);
    const double width = re.second - re.first;
    EXPECT_NEAR(rh.first, re.first, 0.02 * width);
    EXPECT_NEAR(rh.second, re.second, 0.02 * width);
    const double eh = lp_error(x, rh, g, 2.4), ee = lp_error(x, re, g, 2.4);
    EXPECT_LE(eh, 1.01 * ee) << "hist range [" << rh.first << ", " << rh.second << "], exact [" << re.first << ", "
                             << re.second << "]";
  }
}

TEST(RangeSearchMse, DegenerateInputs) {
  const std::vector<float> zeros(100, 0.0f);
  EXPECT_EQ(mse_range_exact(zeros.data(), zeros.size(), {8, false}), (std::pair<float, float>(0.0f, 0.0f)));
  Histogram h(0.0, 0.0, 16);
  h.add(zeros.data(), zeros.size());
  EXPECT_EQ(mse_range(h, {8, true}), (std::pair<float, float>(0.0f, 0.0f)));
  EXPECT_EQ(mse_range(Histogram(-1.0, 1.0, 8), {8, false}), (std::pair<float, float>(0.0f, 0.0f)));
  // A single distinct positive value: one-sided, [0, t] with t = that value is exact for 8 bit asym
  // (value/s = 255 exactly), so the error is 0 and the first zero-error candidate wins.
  const std::vector<float> ones(10, 2.0f);
  const auto r = mse_range_exact(ones.data(), ones.size(), {8, false});
  EXPECT_EQ(r.first, 0.0f);
  EXPECT_EQ(lp_error(ones, r, {8, false}, 2.4), 0.0);
}

TEST(RangeSearchMse, TimingOn2048BinHistogram) {
  std::vector<float> x = silu_data(400000, 51);
  for (int i = 0; i < 20; ++i) x.push_back(-3.0f - i);
  const Histogram h = histogram_of(x, 2048);
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  Histogram ha(0.0, amax, 2048);
  ha.add_abs(x.data(), x.size());
  auto ms = [](auto f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  const double t8 = ms([&] { mse_range(h, {8, false}); });
  const double t4 = ms([&] { mse_range(h, {4, false}); });
  const double e8 = ms([&] { entropy_threshold(ha, 8); });
  const double e4 = ms([&] { entropy_threshold(ha, 4); });
  printf("mse_range 2048 bins: 8 bit asym %.1f ms, 4 bit asym %.1f ms; entropy: 8 bit %.1f ms, 4 bit %.1f ms\n", t8,
         t4, e8, e4);
  EXPECT_LT(t8, 200.0);
  EXPECT_LT(t4, 200.0);
}

// Error after the SiLU (ORT layout's pre-activation quantizer): on pre-activations with a long negative tail
// the search clips that tail, and its post-SiLU error (recomputed here per value) is lower than that of the
// plain x-domain mse range.
TEST(RangeSearchMse, ErrorAfterSiluClipsTheNegativeTail) {
  std::mt19937 rng(17);
  std::normal_distribution<float> nd(0.0f, 8.0f);
  std::vector<float> x(100000);
  for (auto& v : x) v = nd(rng);
  const Histogram h = histogram_of(x, 2048);
  const QuantGrid g{8, false};
  auto post_silu_error = [&](std::pair<float, float> r) {
    const AffineParams p = range_to_params(r.first, r.second, g);
    double e = 0;
    for (float v : x) e += std::pow(std::fabs(silu(fake_quant_value(v, p, g)) - silu(v)), 2.4);
    return e;
  };
  const auto after = mse_range_after(h, g, silu);
  const auto plain = mse_range(h, g);
  EXPECT_GT(after.first, plain.first * 0.8) << "the negative side is clipped well inside the plain range";
  EXPECT_LT(post_silu_error(after), 0.8 * post_silu_error(plain));
  EXPECT_THROW(mse_range_after(h, {8, true}, silu), inlierq::Error);
  EXPECT_DOUBLE_EQ(silu(0.0), 0.0);
  EXPECT_NEAR(silu(2.0), 2.0 / (1.0 + std::exp(-2.0)), 1e-15);
}

// Exactly [0, 0] gets scale 1 (zero exact, consumers' int32 bias scales representable); anything else,
// however small, is range_to_params with its 1e-8 floor.
TEST(RangeSearch, CalibratedParamsGiveAZeroRangeScaleOne) {
  for (bool symmetric : {false, true})
    for (int bits : {2, 4, 8}) {
      const quant::QuantGrid g{bits, symmetric};
      const auto zero = quant::calibrated_params(0.0f, 0.0f, g);
      EXPECT_EQ(zero.scale, 1.0f);
      EXPECT_EQ(zero.zero_point, symmetric ? 0 : g.qn());
      EXPECT_EQ(quant::fake_quant_value(0.0f, zero, g), 0.0f);
      const auto tiny = quant::calibrated_params(0.0f, 1e-39f, g);
      EXPECT_EQ(tiny.scale, 1e-8f);
      EXPECT_EQ(tiny.scale, quant::range_to_params(0.0f, 1e-39f, g).scale);
    }
}
