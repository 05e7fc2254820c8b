#pragma once
// The CPU loops behind QDrop's fused fake quantization and input mixing (fake_quant.cpp wraps them in
// autograd). Each has an AVX2 body and a scalar body that give bit-identical results, chosen at run time.
// Ranges [begin, end) must start at a multiple of 8 so that the packed bits of two ranges never share a
// byte (the callers split work into fixed chunks of kChunk elements).
#include <cstdint>

namespace inlierq::quant::kernel {

constexpr int64_t kChunk = 1 << 15;  // elements per parallel chunk; fixed, so sums do not depend on threads

// The Bernoulli(p) mask element at memory index i: fmix32(i·φ ⊕ seed) < p·2³², recomputable anywhere.
struct Mask {
  uint32_t seed = 0;
  uint32_t threshold = 0;
  bool all = true;  // p ≥ 1
  static Mask make(double p, uint64_t seed);
};

struct FakeQuantArgs {
  float scale = 1, zero = 0, qn = 0, qp = 255;
  Mask mask;
};

// out = x̂ where the mask is set, x elsewhere. pass_bits (optional): bit i set where ∂out/∂x = 1 (outside the
// mask, or inside the clamp range). dstep (optional): ∂x̂/∂s before LSQ's gradient scale, 0 outside the mask.
void fake_quant_forward(const float* x, float* out, uint8_t* pass_bits, float* dstep, int64_t begin, int64_t end,
                        const FakeQuantArgs& a);
// gx = g where the pass bit is set, else 0 (gx may be null); lanes[i mod 8] += g·dstep (dstep may be null).
void fake_quant_backward(const float* g, const uint8_t* pass_bits, const float* dstep, float* gx, double lanes[8],
                         int64_t begin, int64_t end);
// out = a where the mask is set, else b.
void mask_select(const float* a, const float* b, float* out, int64_t begin, int64_t end, const Mask& m);
bool mask_at(const Mask& m, int64_t i);

// The AVX2 bodies are used when the CPU has AVX2 and this is true (tests compare both paths).
void set_simd(bool enabled);
bool simd_active();

}  // namespace inlierq::quant::kernel
