// Dynamic quantisation of a linear's input rows, shared by the int8 and int4 linears
// (int8_linear.cpp, int4_linear.cpp; both compiled for AVX2): each row of x to 0..127 (7 bits),
// asymmetric, with its own scale sx and zero point zx so that 0 is exact.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace act_quant {

// lo = min(0, row...), hi = max(0, row...), 8 lanes at a time. NaNs are skipped and the
// result is the same as the scalar std::min/std::max loop: each lane keeps x only when
// x < lo (x > hi), as std::min(lo, x) does, and the lanes hold no -0, so their order is moot.
inline void row_range(const float* row, int64_t K, float& lo, float& hi) {
  __m256 vlo = _mm256_setzero_ps(), vhi = vlo;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 v = _mm256_loadu_ps(row + k);
    vlo = _mm256_min_ps(v, vlo);  // v < vlo ? v : vlo
    vhi = _mm256_max_ps(v, vhi);  // v > vhi ? v : vhi
  }
  alignas(32) float l[8], h[8];
  _mm256_store_ps(l, vlo);
  _mm256_store_ps(h, vhi);
  lo = 0.f;
  hi = 0.f;
  for (int i = 0; i < 8; ++i) {
    lo = std::min(lo, l[i]);
    hi = std::max(hi, h[i]);
  }
  for (; k < K; ++k) {
    lo = std::min(lo, row[k]);
    hi = std::max(hi, row[k]);
  }
}

// One row of x to 0..127: q = clamp(nearbyint(x / s) + z), eight at a time with the same
// operations (an fp32 division, round to nearest even, add, clamp), so the same bytes.
inline void quantize_row(const float* row, int64_t K, float s, float z, uint8_t* q) {
  const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
  const __m256 lo = _mm256_setzero_ps(), hi = _mm256_set1_ps(127.f);
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(row + k), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_add_ps(v, vz)));
    const __m256i i32 = _mm256_cvttps_epi32(v);  // whole numbers 0..127: exact
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packus_epi16(i16, i16));
  }
  for (; k < K; ++k)
    q[k] = static_cast<uint8_t>(std::min(127.f, std::max(0.f, std::nearbyint(row[k] / s) + z)));
}

// Rows 0..M of x (M, K) into xq (row stride ldx >= K; the padding k's set to 0, as their
// weights are 0), with each row's scale and zero point.
inline void quantize_x(const float* x, int64_t M, int64_t K, int64_t ldx, uint8_t* xq, float* sx, int32_t* zx) {
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    float lo, hi;
    row_range(row, K, lo, hi);
    float s = (hi - lo) / 127.f;
    if (!(s > 0.f)) s = 1.f;
    const float z = std::nearbyint(-lo / s);
    sx[m] = s;
    zx[m] = static_cast<int32_t>(z);
    uint8_t* q = xq + m * ldx;
    quantize_row(row, K, s, z, q);
    for (int64_t k = K; k < ldx; ++k) q[k] = 0;
  }
}

}  // namespace act_quant
