#include "quant/range_search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "inlierq/error.h"

namespace inlierq::quant {

namespace {

void check_grid(QuantGrid g) {
  if (g.bits < 2 || g.bits > 8) throw Error("quantizer bits must be in 2..8, got " + std::to_string(g.bits));
}

}  // namespace

int64_t QuantGrid::qn() const { return symmetric ? -(int64_t{1} << (bits - 1)) : 0; }
int64_t QuantGrid::qp() const { return symmetric ? (int64_t{1} << (bits - 1)) - 1 : (int64_t{1} << bits) - 1; }

AffineParams range_to_params(float m, float M, QuantGrid g) {
  check_grid(g);
  const float levels = static_cast<float>(g.qp() - g.qn());
  AffineParams r;
  if (g.symmetric) {
    r.scale = std::max(std::max(std::fabs(m), std::fabs(M)) * 2.0f / levels, 1e-8f);
    r.zero_point = 0;
    return r;
  }
  m = std::min(m, 0.0f);
  M = std::max(M, 0.0f);
  r.scale = std::max((M - m) / levels, 1e-8f);
  const float z = static_cast<float>(g.qn()) - std::nearbyint(m / r.scale);
  r.zero_point = static_cast<int64_t>(std::clamp(z, static_cast<float>(g.qn()), static_cast<float>(g.qp())));
  return r;
}

AffineParams calibrated_params(float m, float M, QuantGrid g) {
  if (m == 0.0f && M == 0.0f) {
    check_grid(g);
    return AffineParams{1.0f, g.symmetric ? 0 : g.qn()};
  }
  return range_to_params(m, M, g);
}

float fake_quant_value(float x, AffineParams p, QuantGrid g) {
  const float q = std::clamp(std::nearbyint(x / p.scale) + static_cast<float>(p.zero_point),
                             static_cast<float>(g.qn()), static_cast<float>(g.qp()));
  return (q - static_cast<float>(p.zero_point)) * p.scale;
}

// ---------------------------------------------------------------------------------------------------
// Histogram

Histogram::Histogram(double lo_, double hi_, int bins)
    : lo(lo_), hi(hi_), vmin(std::numeric_limits<double>::infinity()),
      vmax(-std::numeric_limits<double>::infinity()) {
  if (bins < 1) throw Error("histogram needs at least one bin");
  if (!std::isfinite(lo) || !std::isfinite(hi)) throw Error("histogram range must be finite");
  counts.assign(static_cast<size_t>(bins), 0.0);
  sums.assign(static_cast<size_t>(bins), 0.0);
}

double Histogram::bin_width() const { return hi > lo ? (hi - lo) / static_cast<double>(counts.size()) : 0.0; }

double Histogram::total() const {
  double t = 0;
  for (double c : counts) t += c;
  return t;
}

int Histogram::bin_of(double v) const {
  const int last = bins() - 1;
  if (!(hi > lo)) return v <= lo ? 0 : last;
  // Clamp in double before the integer cast: out-of-range values go to the edge bins.
  const double f = std::floor((v - lo) / (hi - lo) * static_cast<double>(counts.size()));
  return static_cast<int>(std::clamp(f, 0.0, static_cast<double>(last)));
}

namespace {

template <bool Abs>
void add_values(Histogram& h, const float* x, size_t n, const float* w) {
  for (size_t i = 0; i < n; ++i) {
    const double wi = w ? static_cast<double>(w[i]) : 1.0;
    if (!(wi >= 0) || !std::isfinite(wi)) throw Error("histogram weights must be finite and >= 0");
    double v = x[i];
    if (!std::isfinite(v)) {
      h.nonfinite += wi;
      continue;
    }
    if (Abs) v = std::fabs(v);
    if (wi == 0) continue;  // a zero weight is not an observation: it must not move vmin / vmax
    const int b = h.bin_of(v);
    h.counts[b] += wi;
    h.sums[b] += wi * v;
    h.vmin = std::min(h.vmin, v);
    h.vmax = std::max(h.vmax, v);
  }
}

}  // namespace

void Histogram::add(const float* x, size_t n, const float* w) { add_values<false>(*this, x, n, w); }
void Histogram::add_abs(const float* x, size_t n, const float* w) { add_values<true>(*this, x, n, w); }

// ---------------------------------------------------------------------------------------------------
// percentile

std::pair<float, float> percentile_range(const Histogram& h, double p) {
  if (!(p > 50.0 && p <= 100.0)) throw Error("percentile must be in (50, 100]");
  const double total = h.total();
  if (total <= 0) return {0.0f, 0.0f};
  const int nb = h.bins();
  const double w = h.bin_width();
  // Value below which a fraction `frac` of the mass lies: walk the cumulative counts to the bin holding
  // that rank and interpolate linearly inside it (values assumed uniform within a bin).
  auto value_at = [&](double frac) {
    const double rank = frac * total;
    double cum = 0;
    for (int b = 0; b < nb; ++b) {
      const double c = h.counts[b];
      if (c <= 0) continue;
      if (cum + c >= rank || b == nb - 1) {
        const double left = b == 0 ? std::min(h.lo, h.vmin) : h.lo + b * w;
        const double right = b == nb - 1 ? std::max(h.hi, h.vmax) : h.lo + (b + 1) * w;
        const double t = std::clamp((rank - cum) / c, 0.0, 1.0);
        return std::clamp(left + t * (right - left), h.vmin, h.vmax);
      }
      cum += c;
    }
    return h.vmax;
  };
  return {static_cast<float>(value_at(1.0 - p / 100.0)), static_cast<float>(value_at(p / 100.0))};
}

// ---------------------------------------------------------------------------------------------------
// entropy
//
// Deviations from ONNX Runtime's HistogramCollector.get_entropy_threshold (onnxruntime 1.x,
// quantization/calibrate.py), which the tests compare against on histograms where they do not matter:
//  1. ORT bins signed values over [-T, T] and takes slices [Z-i, Z+i+1) around the zero bin Z (i bins
//     below 0, i+1 above), merged into num_quantized_bins groups in total; its threshold is the pair of
//     slice edges (-i*w, (i+1)*w). Here the histogram is of |x| and the slice is bins [0, i) with nq
//     groups, threshold i*w; so ORT called with 2*nq quantized bins on the mirrored histogram reports
//     one bin more than this function for the same candidate.
//  2. ORT merges floor(L/nq)-bin groups, adds the L mod nq remainder bins to the last group's sum but
//     spreads that sum only over the group's first floor(L/nq) bins; the remainder bins (at least one in
//     ORT: the last, which carries the clipped mass) get Q = 0 -> eps, a penalty P_last*log(P_last/eps)
//     on every candidate that clips. Here the groups split the slice evenly (group g = bins
//     [floor(g*i/nq), floor((g+1)*i/nq)), sizes differing by at most one), so Q keeps all the mass.
//     On a half-normal with a few far outliers ORT picks ~1.7x the threshold this function picks.
//  3. ORT spreads a group's sum over all its bins and truncates the spread values to integers (q is an
//     int64 array); here it is spread over the bins where P != 0 (TensorRT's description, MXNet), in
//     floating point.
//  4. Smoothing is ORT's/MXNet's smooth_distribution: on unnormalised counts, zeros get eps = 1e-4 and
//     the non-zeros give up eps*#zeros/#nonzeros each, so the total is unchanged. That subtraction could
//     make an entry non-positive (ORT asserts) when counts are fractional weights or a 2-bit group
//     spreads a small sum thinly; then only the zeros are raised to eps for that distribution.
float entropy_threshold(const Histogram& h, int bits, int levels) {
  check_grid(QuantGrid{bits, true});
  if (h.lo != 0.0) throw Error("entropy_threshold expects a histogram of |x| starting at 0");
  if (levels < 0 || levels > 65536) throw Error("entropy_threshold: levels must be in 0..65536");
  const int nb = h.bins();
  const int nq = levels ? levels : 1 << (bits - 1);
  const double w = h.bin_width();
  const std::vector<double>& c = h.counts;
  if (nb <= nq) return static_cast<float>(h.hi);

  // Prefix sums of the counts and of the number of non-zero bins; prefix minimum of the non-zero counts.
  std::vector<double> cum(nb + 1, 0.0), nzc(nb + 1, 0.0), pmin(nb + 1, std::numeric_limits<double>::infinity());
  for (int j = 0; j < nb; ++j) {
    cum[j + 1] = cum[j] + c[j];
    nzc[j + 1] = nzc[j] + (c[j] != 0 ? 1 : 0);
    pmin[j + 1] = c[j] != 0 ? std::min(pmin[j], c[j]) : pmin[j];
  }
  const double total = cum[nb];
  if (total <= 0) return 0.0f;
  constexpr double kEps = 1e-4;

  std::vector<double> gsum(nq), gnz(nq);
  double best_kl = std::numeric_limits<double>::infinity();
  int best_i = nb;
  for (int i = nq; i <= nb; ++i) {
    const double tail = total - cum[i];
    const double p_last = c[i - 1] + tail;
    // Groups: sums of the slice (without the clipped mass: Q is what quantizing bins [0, i) would give)
    // and how many bins of P are non-zero in each.
    double nz_p = 0, q_zero_nz = 0, q_min = std::numeric_limits<double>::infinity();
    for (int g = 0; g < nq; ++g) {
      const int a = static_cast<int>(int64_t{g} * i / nq), b = static_cast<int>(int64_t{g + 1} * i / nq);
      gsum[g] = cum[b] - cum[a];
      gnz[g] = nzc[b] - nzc[a];
      if (g == nq - 1 && c[i - 1] == 0 && p_last != 0) gnz[g] += 1;  // P[i-1] non-zero only through the tail
      nz_p += gnz[g];
      if (gsum[g] == 0)
        q_zero_nz += gnz[g];  // P non-zero but Q zero there: only possible in the group holding P[i-1]
      else
        q_min = std::min(q_min, gsum[g] / gnz[g]);
    }
    const double z_p = i - nz_p;
    const double nz_q = nz_p - q_zero_nz, z_q = i - nz_q;
    if (nz_q == 0) continue;  // Q identically zero: ORT's smooth_distribution returns None -> KL = inf

    double p_min = pmin[i - 1];
    if (p_last != 0) p_min = std::min(p_min, p_last);
    double ep = kEps * z_p / nz_p, eq = kEps * z_q / nz_q;
    if (ep >= p_min) ep = 0;  // see note 4
    if (eq >= q_min) eq = 0;
    const double sp = cum[i] + tail - nz_p * ep + z_p * kEps;  // = total mass of smoothed P
    const double sq = cum[i] - nz_q * eq + z_q * kEps;

    // sum over bins of p~ * (log p~ - log q~); bins where P is zero have p~ = q~ = eps and contribute 0.
    double acc = 0;
    const double log_eps = std::log(kEps);
    for (int g = 0; g < nq; ++g) {
      if (gnz[g] == 0) continue;
      const int a = static_cast<int>(int64_t{g} * i / nq), b = static_cast<int>(int64_t{g + 1} * i / nq);
      const double log_q = gsum[g] == 0 ? log_eps : std::log(gsum[g] / gnz[g] - eq);
      double sum_pt = 0, sum_ptlog = 0;
      for (int j = a; j < b; ++j) {
        const double pj = j == i - 1 ? p_last : c[j];
        if (pj == 0) continue;
        const double pt = pj - ep;
        sum_pt += pt;
        sum_ptlog += pt * std::log(pt);
      }
      acc += sum_ptlog - log_q * sum_pt;
    }
    const double kl = acc / sp + std::log(sq / sp);
    if (kl < best_kl) {
      best_kl = kl;
      best_i = i;
    }
  }
  return static_cast<float>(h.lo + best_i * w);
}

// ---------------------------------------------------------------------------------------------------
// mse
//
// Every candidate of ALGORITHMS §2 is a lattice {k*D} (D = the candidate's scale) clamped to an integer
// window [a, b]: x_hat(v) = clamp(round(v/D), a, b) * D (since round(v/D + z) = round(v/D) + z for an
// integer z). All candidates of one width share D and differ only in the window (the zero point shifts
// it), so per width:
//  - k_j = round(v_j/D) is computed once; with the points sorted by value, k is non-decreasing, so the
//    points inside a window are one contiguous run, found by binary search;
//  - the error of the points inside the window, c_j*|v_j - k_j*D|^p, does not depend on the window: it is
//    summed once into prefix sums (lazily, only for widths where some window survives the pruning below),
//    making the interior part of any window O(1);
//  - only the clipped points (below a / above b, error c_j*|v_j - a*D|^p or c_j*|v_j - b*D|^p) are summed
//    per window, from the two far ends inwards (the largest terms first), stopping as soon as the partial
//    sum exceeds the best error found so far (all terms are >= 0, so such a window cannot win).
// Pruning of whole zero-point ranges: raising zp moves the window down, so the error of the points
// clipped above only grows with zp (more points, each further away); once that part alone exceeds the
// best error, every larger zp is skipped, and symmetrically for the part clipped below and smaller zp.
// Widths are visited from the widest down (a good optimum is found first, so narrow hopeless widths are
// dismissed after a few far-end terms), and each width's zero points from the previous width's best
// outwards. Pruning only drops candidates whose error is provably > the best, and ties go to the first
// candidate in the exhaustive (i ascending, zp ascending) order, so the result is the exhaustive
// search's (up to the rounding of the summation order).

namespace {

struct Pt {
  double v, c;
};

class LatticeSearch {
 public:
  LatticeSearch(std::vector<Pt> pts, double p) : pts_(std::move(pts)), p_(p) {
    std::sort(pts_.begin(), pts_.end(), [](const Pt& x, const Pt& y) { return x.v < y.v; });
    k_.resize(pts_.size());
    interior_.resize(pts_.size() + 1);
  }

  // Start a width: scale D. The interior prefix sums are filled on first use.
  void set_scale(double d) {
    d_ = d;
    for (size_t j = 0; j < pts_.size(); ++j) k_[j] = std::nearbyint(pts_[j].v / d);
    interior_ready_ = false;
  }

  enum class Outcome { kEvaluated, kAboveTooBig, kBelowTooBig, kTooBig };

  // Error of window [a, b] (lattice units). Stops early once it is provably > limit: kAboveTooBig /
  // kBelowTooBig when the points clipped above / below alone exceed it.
  Outcome eval(double a, double b, double limit, double* err) {
    const size_t n = pts_.size();
    const size_t lo = std::lower_bound(k_.begin(), k_.end(), a) - k_.begin();  // first k >= a
    const size_t hi = std::upper_bound(k_.begin(), k_.end(), b) - k_.begin();  // first k > b
    const double ea = a * d_, eb = b * d_;
    double above = 0, below = 0;
    size_t ja = n, jb = 0;
    while (ja > hi || jb < lo) {
      if (ja > hi) {
        --ja;
        above += pts_[ja].c * powp(pts_[ja].v - eb);
      }
      if (jb < lo) {
        below += pts_[jb].c * powp(ea - pts_[jb].v);
        ++jb;
      }
      if (above + below > limit) {
        if (above > limit) return Outcome::kAboveTooBig;
        if (below > limit) return Outcome::kBelowTooBig;
        return Outcome::kTooBig;
      }
    }
    if (!interior_ready_) fill_interior();
    *err = above + below + (hi > lo ? interior_[hi] - interior_[lo] : 0.0);
    return Outcome::kEvaluated;
  }

 private:
  double powp(double d) const { return p_ == 2.0 ? d * d : std::pow(d, p_); }
  void fill_interior() {
    interior_[0] = 0;
    for (size_t j = 0; j < pts_.size(); ++j)
      interior_[j + 1] = interior_[j] + pts_[j].c * powp(std::fabs(pts_[j].v - k_[j] * d_));
    interior_ready_ = true;
  }

  std::vector<Pt> pts_;
  double p_;
  double d_ = 1;
  std::vector<double> k_, interior_;
  bool interior_ready_ = false;
};

std::pair<float, float> mse_search(std::vector<Pt> pts, double m, double M, QuantGrid g, double p,
                                   int candidates) {
  check_grid(g);
  if (!(p > 0)) throw Error("mse_range: the Lp exponent must be > 0");
  if (candidates < 1) throw Error("mse_range: candidates must be >= 1");
  if (pts.empty() || (m == 0 && M == 0)) return {0.0f, 0.0f};
  const double qn = static_cast<double>(g.qn()), qp = static_cast<double>(g.qp()), levels = qp - qn;
  LatticeSearch s(std::move(pts), p);

  double best = std::numeric_limits<double>::infinity();
  int best_i = 0;
  double best_zp = 0;
  // Strict-< exhaustive order: smaller error, then smaller i, then smaller zp.
  auto consider = [&](double err, int i, double zp) {
    if (err < best || (err == best && (i < best_i || (i == best_i && zp < best_zp)))) {
      best = err;
      best_i = i;
      best_zp = zp;
    }
  };

  const bool one_sided = m >= 0 || M <= 0;
  if (g.symmetric || one_sided) {
    // One window per threshold t_i.
    const double T = std::max(std::fabs(m), std::fabs(M));
    for (int i = candidates; i >= 1; --i) {
      const double t = T * i / candidates;
      double a, b;
      if (g.symmetric) {
        s.set_scale(2.0 * t / levels);
        a = qn, b = qp;
      } else if (m >= 0) {
        s.set_scale(t / levels);  // [0, t]: z = Qn
        a = 0, b = levels;
      } else {
        s.set_scale(t / levels);  // [-t, 0]: z = Qp
        a = -levels, b = 0;
      }
      double err;
      if (s.eval(a, b, best, &err) == LatticeSearch::Outcome::kEvaluated) consider(err, i, 0);
    }
    const double t = T * best_i / candidates;
    if (g.symmetric && !one_sided) return {static_cast<float>(-t), static_cast<float>(t)};
    if (m >= 0) return {0.0f, static_cast<float>(t)};
    return {static_cast<float>(-t), 0.0f};
  }

  // Asymmetric grid, two-sided data: widths x zero points.
  double zp_start = std::clamp(std::nearbyint(-m / (M - m) * levels), qn, qp);
  for (int i = candidates; i >= 1; --i) {
    const double r = (M - m) * i / candidates;
    s.set_scale(r / levels);
    // Window of zero point zp: range [-zp*D, r - zp*D] -> lattice [-zp, levels - zp].
    auto visit = [&](double zp) {
      double err;
      const auto o = s.eval(-zp, levels - zp, best, &err);
      if (o == LatticeSearch::Outcome::kEvaluated) consider(err, i, zp);
      return o;
    };
    visit(zp_start);
    for (double zp = zp_start + 1; zp <= qp; ++zp)
      if (visit(zp) == LatticeSearch::Outcome::kAboveTooBig) break;
    for (double zp = zp_start - 1; zp >= qn; --zp)
      if (visit(zp) == LatticeSearch::Outcome::kBelowTooBig) break;
    if (best_i == i) zp_start = best_zp;
  }
  const double r = (M - m) * best_i / candidates, d = r / levels;
  return {static_cast<float>(-best_zp * d), static_cast<float>(r - best_zp * d)};
}

}  // namespace

std::pair<float, float> mse_range(const Histogram& h, QuantGrid g, double p, int candidates) {
  std::vector<Pt> pts;
  for (int j = 0; j < h.bins(); ++j)
    if (h.counts[j] > 0) pts.push_back({h.sums[j] / h.counts[j], h.counts[j]});
  if (pts.empty()) return {0.0f, 0.0f};
  return mse_search(std::move(pts), h.vmin, h.vmax, g, p, candidates);
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

std::pair<float, float> mse_range_after(const Histogram& h, QuantGrid g, double (*f)(double), double p, int candidates) {
  if (g.symmetric) throw Error("mse_range_after: asymmetric grids only");
  if (candidates < 1) throw Error("mse_range_after: candidates must be >= 1");
  std::vector<Pt> pts;
  for (int j = 0; j < h.bins(); ++j)
    if (h.counts[j] > 0) pts.push_back({h.sums[j] / h.counts[j], h.counts[j]});
  if (pts.empty()) return {0.0f, 0.0f};
  std::vector<double> fx(pts.size());
  for (size_t k = 0; k < pts.size(); ++k) fx[k] = f(pts[k].v);
  const double m = std::min(h.vmin, 0.0), M = std::max(h.vmax, 0.0);
  double best = std::numeric_limits<double>::infinity();
  std::pair<float, float> out{static_cast<float>(m), static_cast<float>(M)};
  // Widest first, so that ties keep the wider range.
  for (int i = candidates; i >= 1; --i)
    for (int j = candidates; j >= 1; --j) {
      const float lo = static_cast<float>(m * j / candidates), hi = static_cast<float>(M * i / candidates);
      const AffineParams prm = range_to_params(lo, hi, g);
      double err = 0;
      for (size_t k = 0; k < pts.size() && err < best; ++k)
        err += pts[k].c * std::pow(std::fabs(f(fake_quant_value(static_cast<float>(pts[k].v), prm, g)) - fx[k]), p);
      if (err < best) best = err, out = {lo, hi};
    }
  return out;
}

std::pair<float, float> mse_range_exact(const float* x, size_t n, QuantGrid g, double p, int candidates) {
  std::vector<double> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i)
    if (std::isfinite(x[i])) v.push_back(x[i]);
  if (v.empty()) return {0.0f, 0.0f};
  std::sort(v.begin(), v.end());
  std::vector<Pt> pts;  // equal values merged: one point per distinct value, weighted by its multiplicity
  for (double x_ : v) {
    if (!pts.empty() && pts.back().v == x_)
      pts.back().c += 1;
    else
      pts.push_back({x_, 1.0});
  }
  return mse_search(std::move(pts), v.front(), v.back(), g, p, candidates);
}

}  // namespace inlierq::quant
