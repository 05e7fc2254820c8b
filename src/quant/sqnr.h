#pragma once
// Signal-to-quantization-noise ratio as every SQNR the project reports defines it: 10·log10(Σ ref² / Σ (ref − q)²)
// over whatever was accumulated (outputs, images), both sums floored at 1e-30, in double. Internal (ATen).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace inlierq::quant {

inline double sqnr_db(double signal, double noise) { return 10 * std::log10(std::max(signal, 1e-30) / std::max(noise, 1e-30)); }

struct SqnrSums {
  double signal = 0, noise = 0;
  void add(const at::Tensor& reference, const at::Tensor& quantized) {
    const at::Tensor r = reference.to(at::kDouble), q = quantized.to(at::kDouble);
    signal += r.pow(2).sum().item<double>();
    noise += (r - q).pow(2).sum().item<double>();
  }
  double db() const { return sqnr_db(signal, noise); }
};

}  // namespace inlierq::quant
