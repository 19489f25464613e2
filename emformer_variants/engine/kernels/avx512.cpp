// The kernels' AVX-512 paths (AVX-512 F/BW/DQ/VL, and VNNI for int8), compiled per function
// with target attributes so that the rest of the extension stays AVX2 and still runs on a CPU
// without AVX-512. Only <immintrin.h> and <cstdint> are included, and every helper has
// internal linkage: no inline function shared with other files is compiled here (see isa.h).
//
// Both use the AVX2 kernels' packed layouts, and one 512-bit register holds exactly what two
// 256-bit ones do there (16 output columns), so:
//   * packed fp32/fp16/bf16 weights: each output is the same fp32 FMA chain over k in order,
//     then the same bias add, so the same bits as packed_linear.cpp's AVX2 code;
//   * int8: vpdpbusd adds four u8 x s8 products into an int32 lane without saturating, where
//     AVX2 needs vpmaddubsw (pairs into int16) and vpmaddwd; with 7-bit inputs neither
//     saturates, so both give the exact int32 sums, and int8_linear.cpp finishes them alike.
// With 32 vector registers a block keeps up to 12 rows x 16 columns in registers (AVX2: 6 for
// fp32, 5 for int8), so a beam of up to 12 rows streams each weight panel once.
#include "isa.h"

#include <immintrin.h>

#include <cstdint>

#if (defined(__clang__) && __clang_major__ >= 8) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 9)
#define EV_AVX512 1
#define EV_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))
#else
#define EV_AVX512 0
#endif

#if EV_AVX512

namespace {

constexpr int64_t NR = 16;
constexpr int kRows = 12;  // rows per block, fp and int8
// Prefetch the weight stream 2 KB ahead into L1 and 16 KB ahead into L2, across panel ends
// (a weight's panels are contiguous): one stream from memory needs more requests in flight
// than the hardware prefetcher makes, and it stops at 4 KB pages. On Zen 4 this ran the
// base's int8 encoder linears about 1.25x faster than 1 KB ahead into L1 alone.
constexpr int64_t kNear = 2048, kAhead = 16384;

template <int D> EV_TARGET inline __m512 load16(const void* p, int64_t k);
template <> EV_TARGET inline __m512 load16<0>(const void* p, int64_t k) {
  return _mm512_loadu_ps(static_cast<const float*>(p) + k * NR);
}
template <> EV_TARGET inline __m512 load16<1>(const void* p, int64_t k) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + k * NR)));
}
template <> EV_TARGET inline __m512 load16<2>(const void* p, int64_t k) {
  // bf16 is the top half of an fp32: widen to 32 bits and shift left by 16.
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + k * NR))),
      16));
}
template <int D> constexpr int64_t bytes_per_k() { return D == 0 ? 4 * NR : 2 * NR; }

// As store16 in packed_linear.cpp: a full panel adds the bias as a vector; a partial one goes
// through a buffer and adds bias (or 0) per column.
EV_TARGET inline void store16(float* y, __m512 acc, const float* bias, int64_t n) {
  if (n == NR) {
    if (bias) acc = _mm512_add_ps(acc, _mm512_loadu_ps(bias));
    _mm512_storeu_ps(y, acc);
    return;
  }
  alignas(64) float buf[NR];
  _mm512_store_ps(buf, acc);
  for (int64_t j = 0; j < n; ++j) y[j] = buf[j] + (bias ? bias[j] : 0.f);
}

// MR rows of x times one panel; named accumulators, as in packed_linear.cpp.
template <int D, int MR>
EV_TARGET void fp_block(const float* x, int64_t K, const void* panel, const float* bias, float* y,
                        int64_t N, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  __m512 a8 = a0, a9 = a0, a10 = a0, a11 = a0;
  const char* bytes = static_cast<const char*>(panel);
  for (int64_t k = 0; k < K; ++k) {
    _mm_prefetch(bytes + k * bytes_per_k<D>() + kNear, _MM_HINT_T0);
    _mm_prefetch(bytes + k * bytes_per_k<D>() + kAhead, _MM_HINT_T1);
    const __m512 w = load16<D>(panel, k);
#define EV_ROW(i) \
    if (MR > i) a##i = _mm512_fmadd_ps(_mm512_set1_ps(x[i * K + k]), w, a##i);
    EV_ROW(0) EV_ROW(1) EV_ROW(2) EV_ROW(3) EV_ROW(4) EV_ROW(5)
    EV_ROW(6) EV_ROW(7) EV_ROW(8) EV_ROW(9) EV_ROW(10) EV_ROW(11)
#undef EV_ROW
  }
#define EV_STORE(i) \
  if (MR > i) store16(y + i * N, a##i, bias, n);
  EV_STORE(0) EV_STORE(1) EV_STORE(2) EV_STORE(3) EV_STORE(4) EV_STORE(5)
  EV_STORE(6) EV_STORE(7) EV_STORE(8) EV_STORE(9) EV_STORE(10) EV_STORE(11)
#undef EV_STORE
}

template <int D>
EV_TARGET void fp_rows(const float* x, int mr, int64_t K, const void* panel, const float* bias, float* y,
                       int64_t N, int64_t n) {
  switch (mr) {
    case 1: fp_block<D, 1>(x, K, panel, bias, y, N, n); break;
    case 2: fp_block<D, 2>(x, K, panel, bias, y, N, n); break;
    case 3: fp_block<D, 3>(x, K, panel, bias, y, N, n); break;
    case 4: fp_block<D, 4>(x, K, panel, bias, y, N, n); break;
    case 5: fp_block<D, 5>(x, K, panel, bias, y, N, n); break;
    case 6: fp_block<D, 6>(x, K, panel, bias, y, N, n); break;
    case 7: fp_block<D, 7>(x, K, panel, bias, y, N, n); break;
    case 8: fp_block<D, 8>(x, K, panel, bias, y, N, n); break;
    case 9: fp_block<D, 9>(x, K, panel, bias, y, N, n); break;
    case 10: fp_block<D, 10>(x, K, panel, bias, y, N, n); break;
    case 11: fp_block<D, 11>(x, K, panel, bias, y, N, n); break;
    default: fp_block<D, 12>(x, K, panel, bias, y, N, n); break;
  }
}

// Rows split into blocks of at most kRows, as equal as possible (13 rows: 7 + 6, not 12 + 1).
EV_TARGET inline int block_rows(int64_t remaining) {
  const int64_t blocks = (remaining + kRows - 1) / kRows;
  return static_cast<int>((remaining + blocks - 1) / blocks);
}

template <int D>
EV_TARGET void fp_panels(const float* x, int64_t M, int64_t K, const void* w, const float* bias, float* y,
                         int64_t N, int64_t begin, int64_t end) {
  for (int64_t p = begin; p < end; ++p) {
    const void* panel = static_cast<const char*>(w) + p * K * bytes_per_k<D>();
    const int64_t n0 = p * NR, n = N - n0 < NR ? N - n0 : NR;
    const float* b = bias ? bias + n0 : nullptr;
    for (int64_t m = 0; m < M;) {
      const int mr = block_rows(M - m);
      fp_rows<D>(x + m * K, mr, K, panel, b, y + m * N + n0, N, n);
      m += mr;
    }
  }
}

template <int MR>
EV_TARGET void vnni_block(const uint8_t* xq, int64_t ldx, int64_t K4, const int8_t* panel, int32_t* sums) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  __m512i a8 = a0, a9 = a0, a10 = a0, a11 = a0;
  for (int64_t k = 0; k < K4; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(panel) + k * 64 + kNear, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(panel) + k * 64 + kAhead, _MM_HINT_T1);
    const __m512i w = _mm512_loadu_si512(panel + k * 64);
    int32_t quad;
#define EV_ROW(i)                                                        \
    if (MR > i) {                                                        \
      __builtin_memcpy(&quad, xq + i * ldx + 4 * k, 4);                  \
      a##i = _mm512_dpbusd_epi32(a##i, _mm512_set1_epi32(quad), w);      \
    }
    EV_ROW(0) EV_ROW(1) EV_ROW(2) EV_ROW(3) EV_ROW(4) EV_ROW(5)
    EV_ROW(6) EV_ROW(7) EV_ROW(8) EV_ROW(9) EV_ROW(10) EV_ROW(11)
#undef EV_ROW
  }
#define EV_STORE(i) \
  if (MR > i) _mm512_storeu_si512(sums + i * NR, a##i);
  EV_STORE(0) EV_STORE(1) EV_STORE(2) EV_STORE(3) EV_STORE(4) EV_STORE(5)
  EV_STORE(6) EV_STORE(7) EV_STORE(8) EV_STORE(9) EV_STORE(10) EV_STORE(11)
#undef EV_STORE
}

// int4_linear's block (int4_linear.cpp): MR rows x 16 columns, acc[i * 16 + j] = sum_g s[g, j] *
// S_g[i, j], each group's exact int32 sums turned to fp32 with one fused multiply-add, as the
// AVX2 block does, so the same bits. One 64-byte load holds two 4-k steps as nibbles u = q + 8
// (0..15): vpdpbusd takes them as its unsigned operand and the activation bytes (0..127, valid
// signed bytes too) as its signed one, and 8 x the group's activation sum (xsum) is taken off
// the int32 sums. The fp32 sums stay in acc (L1) between groups, so 12 rows of int32 sums fit
// in registers.
template <int MR>
EV_TARGET void vnni4_block(const uint8_t* xq, int64_t ldx, const int32_t* xsum, int64_t groups, int64_t g8,
                           const uint8_t* panel, const float* scales, float* acc) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (int i = 0; i < MR; ++i) _mm512_storeu_ps(acc + i * NR, _mm512_setzero_ps());
  for (int64_t g = 0; g < groups; ++g) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m512i a8 = a0, a9 = a0, a10 = a0, a11 = a0;
    for (int64_t t = g * g8; t < (g + 1) * g8; ++t) {
      _mm_prefetch(reinterpret_cast<const char*>(panel) + t * 64 + kNear, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(panel) + t * 64 + kAhead, _MM_HINT_T1);
      const __m512i w = _mm512_loadu_si512(panel + t * 64);
      const __m512i lo = _mm512_and_si512(w, m4), hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m4);
      int32_t q0, q1;
#define EV_ROW(i)                                                                                  \
      if (MR > i) {                                                                                \
        __builtin_memcpy(&q0, xq + i * ldx + 8 * t, 4);                                            \
        __builtin_memcpy(&q1, xq + i * ldx + 8 * t + 4, 4);                                        \
        a##i = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(a##i, lo, _mm512_set1_epi32(q0)), hi,       \
                                   _mm512_set1_epi32(q1));                                         \
      }
      EV_ROW(0) EV_ROW(1) EV_ROW(2) EV_ROW(3) EV_ROW(4) EV_ROW(5)
      EV_ROW(6) EV_ROW(7) EV_ROW(8) EV_ROW(9) EV_ROW(10) EV_ROW(11)
#undef EV_ROW
    }
    const __m512 s = _mm512_loadu_ps(scales + g * NR);
#define EV_ACC(i)                                                                                  \
    if (MR > i) {                                                                                  \
      const __m512i d = _mm512_sub_epi32(a##i, _mm512_set1_epi32(8 * xsum[i * groups + g]));       \
      _mm512_storeu_ps(acc + i * NR,                                                               \
                       _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, _mm512_loadu_ps(acc + i * NR)));  \
    }
    EV_ACC(0) EV_ACC(1) EV_ACC(2) EV_ACC(3) EV_ACC(4) EV_ACC(5)
    EV_ACC(6) EV_ACC(7) EV_ACC(8) EV_ACC(9) EV_ACC(10) EV_ACC(11)
#undef EV_ACC
  }
}

}  // namespace

bool avx512_built() { return true; }

EV_TARGET void packed_panels_avx512(const float* x, int64_t M, int64_t K, const void* w, int dtype,
                                    const float* bias, float* y, int64_t N, int64_t begin, int64_t end) {
  if (dtype == 0) fp_panels<0>(x, M, K, w, bias, y, N, begin, end);
  else if (dtype == 1) fp_panels<1>(x, M, K, w, bias, y, N, begin, end);
  else fp_panels<2>(x, M, K, w, bias, y, N, begin, end);
}

EV_TARGET void int8_sums_vnni(const uint8_t* xq, int64_t ldx, int64_t K4, const int8_t* panel, int mr,
                              int32_t* sums) {
  switch (mr) {
    case 1: vnni_block<1>(xq, ldx, K4, panel, sums); break;
    case 2: vnni_block<2>(xq, ldx, K4, panel, sums); break;
    case 3: vnni_block<3>(xq, ldx, K4, panel, sums); break;
    case 4: vnni_block<4>(xq, ldx, K4, panel, sums); break;
    case 5: vnni_block<5>(xq, ldx, K4, panel, sums); break;
    case 6: vnni_block<6>(xq, ldx, K4, panel, sums); break;
    case 7: vnni_block<7>(xq, ldx, K4, panel, sums); break;
    case 8: vnni_block<8>(xq, ldx, K4, panel, sums); break;
    case 9: vnni_block<9>(xq, ldx, K4, panel, sums); break;
    case 10: vnni_block<10>(xq, ldx, K4, panel, sums); break;
    case 11: vnni_block<11>(xq, ldx, K4, panel, sums); break;
    default: vnni_block<12>(xq, ldx, K4, panel, sums); break;
  }
}

EV_TARGET void int4_acc_vnni(const uint8_t* xq, int64_t ldx, const int32_t* xsum, int64_t groups, int64_t g8,
                             const uint8_t* panel, const float* scales, int mr, float* acc) {
  switch (mr) {
#define EV_CASE(i) \
    case i: vnni4_block<i>(xq, ldx, xsum, groups, g8, panel, scales, acc); break;
    EV_CASE(1) EV_CASE(2) EV_CASE(3) EV_CASE(4) EV_CASE(5) EV_CASE(6)
    EV_CASE(7) EV_CASE(8) EV_CASE(9) EV_CASE(10) EV_CASE(11)
#undef EV_CASE
    default: vnni4_block<12>(xq, ldx, xsum, groups, g8, panel, scales, acc); break;
  }
}

#else  // a compiler without these targets: the AVX2 kernels only

bool avx512_built() { return false; }
void packed_panels_avx512(const float*, int64_t, int64_t, const void*, int, const float*, float*, int64_t,
                          int64_t, int64_t) {}
void int8_sums_vnni(const uint8_t*, int64_t, int64_t, const int8_t*, int, int32_t*) {}
void int4_acc_vnni(const uint8_t*, int64_t, const int32_t*, int64_t, int64_t, const uint8_t*, const float*, int,
                   float*) {}

#endif
