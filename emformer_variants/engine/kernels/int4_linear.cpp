// Weight-only int4 linear layers for few rows: half the weight bytes of the int8 kernel, for
// the single-stream case where every call streams the whole weight from memory. AVX2 here, the
// AVX-512 VNNI block in avx512.cpp, chosen per call by active_isa() (the amx level uses VNNI:
// tiles take int8 only). Both give the same bits: the integer sums are exact and the float
// steps below are the same operations in the same order.
//
//   y[m, n] = sx[m] * (sum_g s[n, g] * S_g[m, n] - zx[m] * zc[n]) + bias[n]
//   S_g[m, n] = sum_{k in group g} xq[m, k] * q[n, k]              (exact int32)
//
// q: the weight in 4 bits, symmetric (-7..7), one fp32 scale s[n, g] per output row and group
// of G consecutive k (engine.packed.quantize_groups); zc[n] = sum_g s[n, g] * sum_{k in g}
// q[n, k] (fp32, computed once). xq, sx, zx: each row of x quantised to 0..127 as for int8
// (act_quant.h). Per group the int32 sums become fp32 with one fused multiply-add
// (acc = S_g * s_g + acc), groups in order.
//
// q is packed as (P, K8, 64) bytes: panels of 16 output columns; each 64-byte step holds two
// of the int8 layout's 4-k steps (16 columns x 4 consecutive k), the first in the low nibbles
// and the second in the high nibbles, so one 64-byte load unpacks to two int8 weight vectors
// of that layout (mask, then x ^ 8 - 8 sign-extends a nibble). Scales: (P, groups, 16) fp32.
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
constexpr int kAvx2Rows = 2;

// Two 4-k steps of 8 columns from 32 packed bytes: the low nibbles (first step) and high.
inline void unpack8(__m256i w, __m256i& lo, __m256i& hi) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), s8 = _mm256_set1_epi8(8);
  lo = _mm256_sub_epi8(_mm256_xor_si256(_mm256_and_si256(w, m4), s8), s8);
  hi = _mm256_sub_epi8(_mm256_xor_si256(_mm256_and_si256(_mm256_srli_epi16(w, 4), m4), s8), s8);
}

// MR rows x 16 columns: acc[i * 16 + j] = sum_g s[g, j] * S_g[i, j]. vpmaddubsw adds two
// products of at most 127 x 8 into int16: no saturation.
template <int MR>
void block_avx2(const uint8_t* xq, int64_t ldx, int64_t groups, int64_t g8, const uint8_t* panel,
                const float* scales, float* acc) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 f0 = _mm256_setzero_ps(), f1 = f0, f2 = f0, f3 = f0;  // row i: f(2i) columns 0-7, f(2i+1) 8-15
  for (int64_t g = 0; g < groups; ++g) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t t = g * g8; t < (g + 1) * g8; ++t) {
      _mm_prefetch(reinterpret_cast<const char*>(panel + t * 64 + 1024), _MM_HINT_T0);
      __m256i lo0, hi0, lo1, hi1;
      unpack8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + t * 64)), lo0, hi0);
      unpack8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + t * 64 + 32)), lo1, hi1);
      int32_t q0, q1;
#define EV_ROW(i, A, B)                                                                                   \
      if (MR > i) {                                                                                       \
        std::memcpy(&q0, xq + i * ldx + 8 * t, 4);                                                        \
        std::memcpy(&q1, xq + i * ldx + 8 * t + 4, 4);                                                    \
        const __m256i x0 = _mm256_set1_epi32(q0), x1 = _mm256_set1_epi32(q1);                             \
        A = _mm256_add_epi32(A, _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(x0, lo0),         \
                                                                   _mm256_maddubs_epi16(x1, hi0)), ones)); \
        B = _mm256_add_epi32(B, _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(x0, lo1),         \
                                                                   _mm256_maddubs_epi16(x1, hi1)), ones)); \
      }
      EV_ROW(0, a0, a1) EV_ROW(1, a2, a3)
#undef EV_ROW
    }
    const __m256 s0 = _mm256_loadu_ps(scales + g * NR), s1 = _mm256_loadu_ps(scales + g * NR + 8);
    f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), s0, f0);
    f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), s1, f1);
    if (MR > 1) {
      f2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a2), s0, f2);
      f3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a3), s1, f3);
    }
  }
  _mm256_storeu_ps(acc, f0);
  _mm256_storeu_ps(acc + 8, f1);
  if (MR > 1) {
    _mm256_storeu_ps(acc + NR, f2);
    _mm256_storeu_ps(acc + NR + 8, f3);
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
  const float* b = nullptr;
  torch::Tensor bias_c;
  if (bias.has_value() && bias->defined() && bias->numel()) {
    bias_c = bias->contiguous();
    TORCH_CHECK(bias_c.scalar_type() == torch::kFloat && bias_c.numel() == N, "int4_linear: bad bias");
    b = bias_c.data_ptr<float>();
  }
  x = x.contiguous();
  auto y = torch::empty({M, N}, x.options());
  if (M == 0) return y;
  thread_local std::vector<uint8_t> xq;  // reused by the calling thread: no allocation per call
  if (static_cast<int64_t>(xq.size()) < M * ldx) xq.resize(M * ldx);
  std::vector<float> sx(M);
  std::vector<int32_t> zx(M);
  act_quant::quantize_x(x.data_ptr<float>(), M, K, ldx, xq.data(), sx.data(), zx.data());
  const uint8_t* xqp = xq.data();  // the lambda runs on other threads, with their own xq
  const uint8_t* w = packed.data_ptr<uint8_t>();
  const float* sc = scales.data_ptr<float>();
  const float* zcp = zc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const bool vnni = active_isa() >= Isa::avx512;
  const int rows = vnni ? kVnni4Rows : kAvx2Rows;
  std::vector<std::pair<int64_t, int>> row_blocks;  // as equal as possible, worked out once
  for (int64_t m = 0; m < M;) {
    const int64_t blocks = (M - m + rows - 1) / rows;
    const int mr = static_cast<int>((M - m + blocks - 1) / blocks);
    row_blocks.emplace_back(m, mr);
    m += mr;
  }
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, K8 * 64));
  at::parallel_for(0, P, grain, [&](int64_t begin, int64_t end) {
    alignas(64) float acc[kVnni4Rows * NR];
    for (int64_t p = begin; p < end; ++p) {
      const uint8_t* panel = w + p * K8 * 64;
      const float* ps = sc + p * groups * NR;
      const int64_t n0 = p * NR, n = std::min(NR, N - n0);
      for (const auto& [m, mr] : row_blocks) {
        const uint8_t* xm = xqp + m * ldx;
        if (vnni) int4_acc_vnni(xm, ldx, groups, g8, panel, ps, mr, acc);
        else if (mr == 1) block_avx2<1>(xm, ldx, groups, g8, panel, ps, acc);
        else block_avx2<2>(xm, ldx, groups, g8, panel, ps, acc);
        finish(acc, mr, sx.data() + m, zx.data() + m, zcp + n0, b ? b + n0 : nullptr, yp + m * N + n0, N, n);
      }
    }
  });
  return y;
}
