#include "quant/qdrop_kernel.h"

#include <atomic>
#include <cmath>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define INLIERQ_X86 1
#endif

namespace inlierq::quant::kernel {
namespace {

constexpr uint32_t kGolden = 0x9E3779B1u;

inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  return h ^ (h >> 16);
}

// Branch-free scalar helpers: on random masks and activations around the clamp edges, branches mispredict.
inline float fmin_(float a, float b) { return a < b ? a : b; }  // minps/maxps semantics, NaN and ±0 included
inline float fmax_(float a, float b) { return a > b ? a : b; }
inline float clampf(float v, float lo, float hi) { return fmin_(fmax_(v, lo), hi); }
inline float round_half_even(float u) {  // valid for |u| < 2²²; callers clamp first
  constexpr float magic = 12582912.0f;
  float t = u + magic;
#if defined(__GNUC__)
  asm("" : "+x"(t));  // keep the compiler from folding (u + M) − M to u
#endif
  return t - magic;
}
inline float selectf(bool m, float a, float b) {
  uint32_t ua, ub;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  const uint32_t k = 0u - static_cast<uint32_t>(m);
  const uint32_t r = (ua & k) | (ub & ~k);
  float out;
  std::memcpy(&out, &r, 4);
  return out;
}

void forward_scalar(const float* x, float* out, uint8_t* bits, float* ds, int64_t b, int64_t e, const FakeQuantArgs& a) {
  const float ulo = a.qn - a.zero - 1.0f, uhi = a.qp - a.zero + 1.0f;
  for (int64_t i = b; i < e; ++i) {
    const bool m = mask_at(a.mask, i);
    const float u = clampf(x[i] / a.scale, ulo, uhi);
    const float r = round_half_even(u);
    const float q = clampf(r + a.zero, a.qn, a.qp);
    out[i] = selectf(m, (q - a.zero) * a.scale, x[i]);
    const float v = u + a.zero;
    const bool below = v < a.qn, above = v > a.qp;
    if (bits) {
      const bool pass = !m || (!below && !above);
      const uint8_t bit = static_cast<uint8_t>(1u << (i & 7));
      bits[i >> 3] = static_cast<uint8_t>(pass ? (bits[i >> 3] | bit) : (bits[i >> 3] & ~bit));
    }
    if (ds) ds[i] = selectf(m, selectf(below, a.qn - a.zero, selectf(above, a.qp - a.zero, r - u)), 0.0f);
  }
}

void backward_scalar(const float* g, const uint8_t* bits, const float* ds, float* gx, double lanes[8], int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) {
    if (gx) gx[i] = selectf((bits[i >> 3] >> (i & 7)) & 1u, g[i], 0.0f);
    if (ds) lanes[i & 7] += static_cast<double>(g[i]) * static_cast<double>(ds[i]);
  }
}

void select_scalar(const float* a, const float* bb, float* out, int64_t b, int64_t e, const Mask& m) {
  for (int64_t i = b; i < e; ++i) out[i] = selectf(mask_at(m, i), a[i], bb[i]);
}

#ifdef INLIERQ_X86
__attribute__((target("avx2"))) inline __m256i mask_vec(const Mask& m, int64_t i) {
  if (m.all) return _mm256_set1_epi32(-1);
  const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(i))),
                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256i h = _mm256_xor_si256(_mm256_mullo_epi32(idx, _mm256_set1_epi32(static_cast<int32_t>(kGolden))),
                               _mm256_set1_epi32(static_cast<int32_t>(m.seed)));
  h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
  h = _mm256_mullo_epi32(h, _mm256_set1_epi32(static_cast<int32_t>(0x85EBCA6Bu)));
  h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 13));
  h = _mm256_mullo_epi32(h, _mm256_set1_epi32(static_cast<int32_t>(0xC2B2AE35u)));
  h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
  // Unsigned h < threshold as a signed compare of both with the sign bit flipped.
  const __m256i flip = _mm256_set1_epi32(static_cast<int32_t>(0x80000000u));
  return _mm256_cmpgt_epi32(_mm256_xor_si256(_mm256_set1_epi32(static_cast<int32_t>(m.threshold)), flip), _mm256_xor_si256(h, flip));
}

__attribute__((target("avx2"))) void forward_avx2(const float* x, float* out, uint8_t* bits, float* ds, int64_t b, int64_t e,
                                                  const FakeQuantArgs& a) {
  const __m256 s = _mm256_set1_ps(a.scale), z = _mm256_set1_ps(a.zero), lo = _mm256_set1_ps(a.qn), hi = _mm256_set1_ps(a.qp);
  const __m256 ulo = _mm256_set1_ps(a.qn - a.zero - 1.0f), uhi = _mm256_set1_ps(a.qp - a.zero + 1.0f);
  const __m256 dlo = _mm256_set1_ps(a.qn - a.zero), dhi = _mm256_set1_ps(a.qp - a.zero);
  const __m256 ones = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  int64_t i = b;
  for (; i + 8 <= e; i += 8) {
    const __m256 m = _mm256_castsi256_ps(mask_vec(a.mask, i));
    const __m256 xv = _mm256_loadu_ps(x + i);
    const __m256 u = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(xv, s), ulo), uhi);
    const __m256 r = _mm256_round_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, z), lo), hi);
    _mm256_storeu_ps(out + i, _mm256_blendv_ps(xv, _mm256_mul_ps(_mm256_sub_ps(q, z), s), m));
    const __m256 v = _mm256_add_ps(u, z);
    const __m256 below = _mm256_cmp_ps(v, lo, _CMP_LT_OQ), above = _mm256_cmp_ps(v, hi, _CMP_GT_OQ);
    if (bits) {
      const __m256 pass = _mm256_or_ps(_mm256_andnot_ps(m, ones), _mm256_andnot_ps(_mm256_or_ps(below, above), ones));
      bits[i >> 3] = static_cast<uint8_t>(_mm256_movemask_ps(pass));
    }
    if (ds) {
      const __m256 d = _mm256_blendv_ps(_mm256_blendv_ps(_mm256_sub_ps(r, u), dhi, above), dlo, below);
      _mm256_storeu_ps(ds + i, _mm256_and_ps(d, m));
    }
  }
  forward_scalar(x, out, bits, ds, i, e, a);
}

__attribute__((target("avx2"))) void backward_avx2(const float* g, const uint8_t* bits, const float* ds, float* gx, double lanes[8],
                                                   int64_t b, int64_t e) {
  const __m256i bitsel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  __m256d acc0 = _mm256_loadu_pd(lanes), acc1 = _mm256_loadu_pd(lanes + 4);
  int64_t i = b;
  for (; i + 8 <= e; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    if (gx) {
      const __m256i sel = _mm256_and_si256(_mm256_set1_epi32(bits[i >> 3]), bitsel);
      _mm256_storeu_ps(gx + i, _mm256_and_ps(gv, _mm256_castsi256_ps(_mm256_cmpeq_epi32(sel, bitsel))));
    }
    if (ds) {
      const __m256 dv = _mm256_loadu_ps(ds + i);
      acc0 = _mm256_add_pd(acc0, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(gv)), _mm256_cvtps_pd(_mm256_castps256_ps128(dv))));
      acc1 = _mm256_add_pd(acc1, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(gv, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(dv, 1))));
    }
  }
  _mm256_storeu_pd(lanes, acc0);
  _mm256_storeu_pd(lanes + 4, acc1);
  backward_scalar(g, bits, ds, gx, lanes, i, e);
}

__attribute__((target("avx2"))) void select_avx2(const float* a, const float* bb, float* out, int64_t b, int64_t e, const Mask& m) {
  int64_t i = b;
  for (; i + 8 <= e; i += 8)
    _mm256_storeu_ps(out + i, _mm256_blendv_ps(_mm256_loadu_ps(bb + i), _mm256_loadu_ps(a + i), _mm256_castsi256_ps(mask_vec(m, i))));
  select_scalar(a, bb, out, i, e, m);
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

std::atomic<bool> simd_enabled{true};

}  // namespace

Mask Mask::make(double p, uint64_t seed) {
  Mask m;
  m.seed = static_cast<uint32_t>(seed) ^ static_cast<uint32_t>(seed >> 32);
  m.all = p >= 1.0;
  m.threshold = p >= 1.0 ? UINT32_MAX : p <= 0.0 ? 0u : static_cast<uint32_t>(std::ldexp(p, 32));
  return m;
}

bool mask_at(const Mask& m, int64_t i) {
  return m.all || fmix32(static_cast<uint32_t>(i) * kGolden ^ m.seed) < m.threshold;
}

void set_simd(bool enabled) { simd_enabled = enabled; }

bool simd_active() {
#ifdef INLIERQ_X86
  return simd_enabled && cpu_has_avx2();
#else
  return false;
#endif
}

void fake_quant_forward(const float* x, float* out, uint8_t* bits, float* ds, int64_t b, int64_t e, const FakeQuantArgs& a) {
#ifdef INLIERQ_X86
  if (simd_active()) return forward_avx2(x, out, bits, ds, b, e, a);
#endif
  forward_scalar(x, out, bits, ds, b, e, a);
}

void fake_quant_backward(const float* g, const uint8_t* bits, const float* ds, float* gx, double lanes[8], int64_t b, int64_t e) {
#ifdef INLIERQ_X86
  if (simd_active()) return backward_avx2(g, bits, ds, gx, lanes, b, e);
#endif
  backward_scalar(g, bits, ds, gx, lanes, b, e);
}

void mask_select(const float* a, const float* bb, float* out, int64_t b, int64_t e, const Mask& m) {
#ifdef INLIERQ_X86
  if (simd_active()) return select_avx2(a, bb, out, b, e, m);
#endif
  select_scalar(a, bb, out, b, e, m);
}

}  // namespace inlierq::quant::kernel
