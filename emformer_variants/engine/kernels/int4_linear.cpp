// Weight-only int4 linear layers for few rows: half the weight bytes of the int8 kernel, for
// the single-stream case where every call streams the whole weight from memory. AVX2 here, the
// AVX-512 VNNI block in avx512.cpp, chosen per call by active_isa() (the amx level uses VNNI:
// tiles take int8 only). Both give the same bits: the integer sums are exact and the float
// steps below are the same operations in the same order.
//
//   y[m, n] = sx[m] * (sum_g s[n, g] * S_g[m, n] - zx[m] * zc[n]) + bias[n]
//   S_g[m, n] = sum_{k in group g} xq[m, k] * q[n, k]
//             = sum_{k in g} xq[m, k] * (q[n, k] + 8) - 8 * sum_{k in g} xq[m, k]   (exact int32)
//
// q: the weight in 4 bits, symmetric (-7..7), one fp32 scale s[n, g] per output row and group
// of G consecutive k (engine.packed.quantize_groups); zc[n] = sum_g s[n, g] * sum_{k in g}
// q[n, k] (fp32, computed once). xq, sx, zx: each row of x quantised to 0..127 as for int8
// (act_quant.h). Per group the int32 sums become fp32 with one fused multiply-add
// (acc = S_g * s_g + acc), groups in order.
//
// q is packed as (P, K8, 64) bytes: panels of 16 output columns; each 64-byte step holds two
// of the int8 layout's 4-k steps (16 columns x 4 consecutive k) as u = q + 8 (0..15), the first
// in the low nibbles and the second in the high ones, so one 64-byte load unpacks to two
// vectors of unsigned bytes with a mask and a shift. The products take the weight as the
// unsigned operand and the activation byte (0..127, a valid signed byte too) as the signed one,
// and 8 x each group's activation sum, worked out once per call, is taken off the integer sums.
// Both blocks keep the fp32 sums in a small buffer (L1) between groups, so the registers hold
// only int32 sums. Scales: (P, groups, 16) fp32.
#include "act_quant.h"
#include "isa.h"
#include "linears.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

namespace {

constexpr int64_t NR = 16;
constexpr int kAvx2Rows = 4;

// MR rows x 16 columns: acc[i * 16 + j] = sum_g s[g, j] * S_g[i, j]. vpmaddubsw adds two
// products of at most 15 x 127 into int16, and the two steps' pairs add to at most 7,620: no
// saturation.
template <int MR>
void block_avx2(const uint8_t* xq, int64_t ldx, const int32_t* xsum, int64_t groups, int64_t g8,
                const uint8_t* panel, const float* scales, float* acc) {
  const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0x0F);
  for (int i = 0; i < 2 * MR; ++i) _mm256_storeu_ps(acc + 8 * i, _mm256_setzero_ps());
  for (int64_t g = 0; g < groups; ++g) {
    __m256i a0 = _mm256_setzero_si256(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
    for (int64_t t = g * g8; t < (g + 1) * g8; ++t) {
      _mm_prefetch(reinterpret_cast<const char*>(panel + t * 64 + 1024), _MM_HINT_T0);
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + t * 64));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + t * 64 + 32));
      const __m256i lo0 = _mm256_and_si256(w0, m4), hi0 = _mm256_and_si256(_mm256_srli_epi16(w0, 4), m4);
      const __m256i lo1 = _mm256_and_si256(w1, m4), hi1 = _mm256_and_si256(_mm256_srli_epi16(w1, 4), m4);
      int32_t q0, q1;
#define EV_ROW(i)                                                                                         \
      if (MR > i) {                                                                                       \
        std::memcpy(&q0, xq + i * ldx + 8 * t, 4);                                                        \
        std::memcpy(&q1, xq + i * ldx + 8 * t + 4, 4);                                                    \
        const __m256i x0 = _mm256_set1_epi32(q0), x1 = _mm256_set1_epi32(q1);                             \
        a##i = _mm256_add_epi32(a##i, _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo0, x0),   \
                                                                         _mm256_maddubs_epi16(hi0, x1)),  \
                                                        ones));                                           \
        b##i = _mm256_add_epi32(b##i, _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo1, x0),   \
                                                                         _mm256_maddubs_epi16(hi1, x1)),  \
                                                        ones));                                           \
      }
      EV_ROW(0) EV_ROW(1) EV_ROW(2) EV_ROW(3)
#undef EV_ROW
    }
    const __m256 s0 = _mm256_loadu_ps(scales + g * NR), s1 = _mm256_loadu_ps(scales + g * NR + 8);
#define EV_ACC(i)                                                                                        \
    if (MR > i) {                                                                                        \
      const __m256i z = _mm256_set1_epi32(8 * xsum[i * groups + g]);                                     \
      float* f = acc + i * NR;                                                                           \
      _mm256_storeu_ps(f, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(a##i, z)), s0,             \
                                          _mm256_loadu_ps(f)));                                          \
      _mm256_storeu_ps(f + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(b##i, z)), s1,         \
                                              _mm256_loadu_ps(f + 8)));                                  \
    }
    EV_ACC(0) EV_ACC(1) EV_ACC(2) EV_ACC(3)
#undef EV_ACC
  }
}

// acc (16 per row) -> y: d = acc - zx * zc, then y = d * sx + bias, each a fused multiply-add,
// eight columns at a time; the scalar tail does the same operations, so every column rounds alike.
void finish(const float* all_acc, int mr, const float* sx, const int32_t* zx, const float* zc,
            const float* bias, float* y, int64_t N, int64_t n) {
  for (int i = 0; i < mr; ++i) {
    const float* acc = all_acc + i * NR;
    float* yi = y + i * N;
    const float z = -static_cast<float>(zx[i]);
    int64_t j = 0;
    if (n == NR) {
      const __m256 vz = _mm256_set1_ps(z), s = _mm256_set1_ps(sx[i]);
      for (; j < NR; j += 8) {
        const __m256 d = _mm256_fmadd_ps(vz, _mm256_loadu_ps(zc + j), _mm256_loadu_ps(acc + j));
        _mm256_storeu_ps(yi + j, bias ? _mm256_fmadd_ps(d, s, _mm256_loadu_ps(bias + j)) : _mm256_mul_ps(d, s));
      }
    }
    for (; j < n; ++j) {
      const float d = std::fma(z, zc[j], acc[j]);
      yi[j] = bias ? std::fma(d, sx[i], bias[j]) : d * sx[i];
    }
  }
}

}  // namespace

torch::Tensor int4_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor zc, torch::Tensor scales,
                          c10::optional<torch::Tensor> bias, int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat, "int4_linear: x must be 2-D fp32");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == 64 && packed.scalar_type() == torch::kByte &&
                  packed.is_contiguous(),
              "int4_linear: weight must be uint8 packed as (P, K/8, 64)");
  const int64_t P = packed.size(0), K8 = packed.size(1), M = x.size(0), K = x.size(1);
  TORCH_CHECK(scales.dim() == 3 && scales.size(0) == P && scales.size(2) == NR &&
                  scales.scalar_type() == torch::kFloat && scales.is_contiguous(),
              "int4_linear: scales must be (P, groups, 16) fp32");
  const int64_t groups = scales.size(1);
  TORCH_CHECK(groups > 0 && K8 % groups == 0, "int4_linear: ", K8 * 8, " packed k do not split into ", groups,
              " groups");
  const int64_t g8 = K8 / groups, ldx = 8 * K8;
  TORCH_CHECK(K <= ldx && K > ldx - 8 * g8, "int4_linear: x has ", K, " features, weight ", ldx, " (padded)");
  TORCH_CHECK(P * NR >= N && P * NR < N + NR, "int4_linear: bad N");
  TORCH_CHECK(zc.scalar_type() == torch::kFloat && zc.numel() == P * NR && zc.is_contiguous(),
              "int4_linear: zc must be (P * 16,) fp32");
  torch::Tensor bias_c;
  const float* b = bias_data(bias, N, bias_c, "int4_linear");
  x = x.contiguous();
  auto y = torch::empty({M, N}, x.options());
  if (M == 0) return y;
  thread_local std::vector<uint8_t> xq;  // reused by the calling thread: no allocation per call
  if (static_cast<int64_t>(xq.size()) < M * ldx) xq.resize(M * ldx);
  std::vector<float> sx(M);
  std::vector<int32_t> zx(M);
  act_quant::quantize_x(x.data_ptr<float>(), M, K, ldx, xq.data(), sx.data(), zx.data());
  // each row's activation bytes summed per group, 8 bytes at a time (psadbw against zero)
  std::vector<int32_t> xsum(M * groups);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* q = xq.data() + m * ldx + g * 8 * g8;
      __m128i total = _mm_setzero_si128();
      for (int64_t t = 0; t < g8; ++t)
        total = _mm_add_epi64(total, _mm_sad_epu8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * t)),
                                                  _mm_setzero_si128()));
      xsum[m * groups + g] = static_cast<int32_t>(_mm_cvtsi128_si64(total));
    }
  const uint8_t* xqp = xq.data();  // the lambda runs on other threads, with their own xq
  const uint8_t* w = packed.data_ptr<uint8_t>();
  const float* sc = scales.data_ptr<float>();
  const float* zcp = zc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const bool vnni = active_isa() >= Isa::avx512;
  const int rows = vnni ? kVnni4Rows : kAvx2Rows;
  const auto blocks = row_blocks(M, rows, true);  // as equal as possible, worked out once
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, K8 * 64));
  at::parallel_for(0, P, grain, [&](int64_t begin, int64_t end) {
    alignas(64) float acc[kVnni4Rows * NR];
    for (int64_t p = begin; p < end; ++p) {
      const uint8_t* panel = w + p * K8 * 64;
      const float* ps = sc + p * groups * NR;
      const int64_t n0 = p * NR, n = std::min(NR, N - n0);
      for (const auto& [m, mr] : blocks) {
        const uint8_t* xm = xqp + m * ldx;
        const int32_t* xs = xsum.data() + m * groups;
        if (vnni) int4_acc_vnni(xm, ldx, xs, groups, g8, panel, ps, mr, acc);
        else if (mr == 1) block_avx2<1>(xm, ldx, xs, groups, g8, panel, ps, acc);
        else if (mr == 2) block_avx2<2>(xm, ldx, xs, groups, g8, panel, ps, acc);
        else if (mr == 3) block_avx2<3>(xm, ldx, xs, groups, g8, panel, ps, acc);
        else block_avx2<4>(xm, ldx, xs, groups, g8, panel, ps, acc);
        finish(acc, mr, sx.data() + m, zx.data() + m, zcp + n0, b ? b + n0 : nullptr, yp + m * N + n0, N, n);
      }
    }
  });
  return y;
}
