#pragma once
// Signal-to-quantization-noise ratio as every SQNR the project reports defines it: 10·log10(Σ ref² / Σ (ref − q)²)
// over whatever was accumulated (outputs, images), both sums floored at 1e-30, in double. Internal (ATen).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace inlierq::quant {

inline double sqnr_db(double signal, double noise) { return 10 * std::log10(std::max(signal, 1e-30) / std::max(noise, 1e-30)); }

struct SqnrSums {
  double signal = 0, noise = 0;
  void add(const at::Tensor& reference, const at::Tensor& quantized) {
    const at::Tensor r = reference.to(at::kDouble), q = quantized.to(at::kDouble);
    signal += r.pow(2).sum().item<double>();
    noise += (r - q).pow(2).sum().item<double>();
  }
  // Weighted by w (broadcast against both): the inlier-weighted SQNR.
  void add(const at::Tensor& reference, const at::Tensor& quantized, const at::Tensor& w) {
    const at::Tensor r = reference.to(at::kDouble), q = quantized.to(at::kDouble), ww = w.to(r.device()).to(at::kDouble);
    signal += (ww * r.pow(2)).sum().item<double>();
    noise += (ww * (r - q).pow(2)).sum().item<double>();
  }
  double db() const { return sqnr_db(signal, noise); }
};

// Plain and inlier-weighted output SQNR of one run against the reference (weights: per output, those present).
struct OutputSqnr {
  double plain = 0, inlier = std::numeric_limits<double>::quiet_NaN();
};
template <class Map, class Weights>
OutputSqnr output_sqnr(const std::vector<std::string>& outputs, const Map& reference, const Map& got, const Weights& weights) {
  SqnrSums plain, weighted;
  for (const auto& o : outputs) {
    plain.add(reference.at(o), got.at(o));
    const auto it = weights.find(o);
    if (it != weights.end()) weighted.add(reference.at(o), got.at(o), it->second);
  }
  OutputSqnr s;
  s.plain = plain.db();
  if (!weights.empty()) s.inlier = weighted.db();
  return s;
}

}  // namespace inlierq::quant
