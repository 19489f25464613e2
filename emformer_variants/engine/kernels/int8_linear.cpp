// Dynamic int8 linear layers for few rows on x86-64 CPUs: AVX2 here, AVX-512 VNNI in
// avx512.cpp, AMX tiles in amx.cpp, chosen per call by active_isa(). All give the same exact int32 sums, and the
// quantisation of x and the finish below are shared, so the outputs are the same bits.
//
//   y[m, n] = sx[m] * sw[n] * (sum_k xq[m, k] * q[n, k] - zx[m] * colsum[n]) + bias[n]
//
// q: the weight in int8, symmetric, one scale sw per output row (engine.packed.quantize_rows).
// xq: each row of x quantised on the fly, asymmetric, to 0..127 (7 bits) with its own scale
// sx and zero point zx, so that 0 is exact; colsum[n] = sum_k q[n, k]. Seven bits, not eight:
// vpmaddubsw adds two u8 x s8 products into a saturating int16, and 2 * 127 * 128 still fits
// (fbgemm's x86 "reduce_range" for the same reason). The sums are exact int32; only the
// rounding of x and of the weight is approximate.
//
// q is packed as (P, K4, 16, 4): panels of 16 output columns, 4 consecutive k per column, so
// one 32-byte load holds 8 columns x 4 k. Per 4 k, one broadcast of a row's 4 bytes,
// vpmaddubsw (pairs -> int16) and vpmaddwd with ones (-> int32 per column) accumulate 32
// multiply-adds. Blocks of up to 5 rows x 16 columns keep 10 accumulators in registers (VNNI:
// one vpdpbusd per 4 k and row does the 64 multiply-adds, 12 rows per block).
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
constexpr int64_t MR_MAX = 5;
constexpr int64_t kAmxMinRows = 16;
constexpr int64_t kAhead = 16384;  // bytes ahead into L2, as in avx512.cpp

template <int MR>
void block(const uint8_t* xq, int64_t ldx, int64_t K4, const int8_t* panel, int32_t* sums) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a0 = _mm256_setzero_si256(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
  __m256i a4 = a0, b4 = a0;
  const uint8_t *x0 = xq, *x1 = xq + ldx, *x2 = xq + 2 * ldx, *x3 = xq + 3 * ldx, *x4 = xq + 4 * ldx;
  for (int64_t k = 0; k < K4; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(panel + (k + 16) * 64), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(panel) + k * 64 + kAhead, _MM_HINT_T1);
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + k * 64));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + k * 64 + 32));
    __m256i xb;
    int32_t quad;
#define EV_ROW(i)                                                                            \
    if (MR > i) {                                                                            \
      std::memcpy(&quad, x##i + 4 * k, 4);                                                   \
      xb = _mm256_set1_epi32(quad);                                                          \
      a##i = _mm256_add_epi32(a##i, _mm256_madd_epi16(_mm256_maddubs_epi16(xb, w0), ones)); \
      b##i = _mm256_add_epi32(b##i, _mm256_madd_epi16(_mm256_maddubs_epi16(xb, w1), ones)); \
    }
    EV_ROW(0) EV_ROW(1) EV_ROW(2) EV_ROW(3) EV_ROW(4)
#undef EV_ROW
  }
  const __m256i all[10] = {a0, b0, a1, b1, a2, b2, a3, b3, a4, b4};
  for (int i = 0; i < 2 * MR; ++i) _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums + 8 * i), all[i]);
}

void sums_avx2(const uint8_t* xq, int64_t ldx, int64_t K4, const int8_t* panel, int mr, int32_t* sums) {
  switch (mr) {
    case 1: block<1>(xq, ldx, K4, panel, sums); break;
    case 2: block<2>(xq, ldx, K4, panel, sums); break;
    case 3: block<3>(xq, ldx, K4, panel, sums); break;
    case 4: block<4>(xq, ldx, K4, panel, sums); break;
    default: block<5>(xq, ldx, K4, panel, sums); break;
  }
}

// sums (16 per row) -> y for rows m0.., columns n0..n0+n: y = (sums - zx * colsum) * (sx * sw)
// + bias, the bias added in one fused multiply-add, eight columns at a time; the scalar tail
// does the same operations, so every column rounds alike.
void finish(const int32_t* all_sums, int mr, const float* sx, const int32_t* zx, const int32_t* colsum,
            const float* sw, const float* bias, float* y, int64_t N, int64_t n) {
  for (int i = 0; i < mr; ++i) {
    const int32_t* sums = all_sums + i * NR;
    float* yi = y + i * N;
    int64_t j = 0;
    if (n == NR) {
      const __m256i z = _mm256_set1_epi32(zx[i]);
      const __m256 s = _mm256_set1_ps(sx[i]);
      for (; j < NR; j += 8) {
        const __m256i d = _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sums + j)),
                                           _mm256_mullo_epi32(z, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(colsum + j))));
        const __m256 f = _mm256_cvtepi32_ps(d), scale = _mm256_mul_ps(s, _mm256_loadu_ps(sw + j));
        _mm256_storeu_ps(yi + j, bias ? _mm256_fmadd_ps(f, scale, _mm256_loadu_ps(bias + j)) : _mm256_mul_ps(f, scale));
      }
    }
    for (; j < n; ++j) {
      const float f = static_cast<float>(sums[j] - zx[i] * colsum[j]), scale = sx[i] * sw[j];
      yi[j] = bias ? std::fma(f, scale, bias[j]) : f * scale;
    }
  }
}

}  // namespace

torch::Tensor int8_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor colsum,
                          torch::Tensor scale, c10::optional<torch::Tensor> bias, int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat, "int8_linear: x must be 2-D fp32");
  TORCH_CHECK(packed.dim() == 4 && packed.size(2) == NR && packed.size(3) == 4 &&
                  packed.scalar_type() == torch::kChar && packed.is_contiguous(),
              "int8_linear: weight must be int8 packed as (P, K/4, 16, 4)");
  const int64_t P = packed.size(0), K4 = packed.size(1), M = x.size(0), K = x.size(1);
  TORCH_CHECK((K + 3) / 4 == K4, "int8_linear: x has ", K, " features, weight ", 4 * K4, " (padded)");
  TORCH_CHECK(P * NR >= N && P * NR < N + NR, "int8_linear: bad N");
  TORCH_CHECK(colsum.scalar_type() == torch::kInt && colsum.numel() == P * NR && colsum.is_contiguous(),
              "int8_linear: colsum must be (P * 16,) int32");
  TORCH_CHECK(scale.scalar_type() == torch::kFloat && scale.numel() == N && scale.is_contiguous(),
              "int8_linear: scale must be (N,) fp32");
  torch::Tensor bias_c;
  const float* b = bias_data(bias, N, bias_c, "int8_linear");
  x = x.contiguous();
  auto y = torch::empty({M, N}, x.options());
  if (M == 0) return y;
  // quantise x: per row, asymmetric 0..127 with 0 exact; padding k's are 0 (their weights are 0)
  const int64_t ldx = 4 * K4;
  thread_local std::vector<uint8_t> xq;  // reused by the calling thread: no allocation per call
  // AMX tiles take 16 rows and 64 k at a time: M is padded with zero rows, K must fill whole
  // tiles (else the VNNI path); below kAmxMinRows rows most of each tile would be padding
  const bool amx = active_isa() == Isa::amx && K4 % 16 == 0 && M >= kAmxMinRows;
  const int64_t Mpad = amx ? (M + 15) / 16 * 16 : M;
  if (static_cast<int64_t>(xq.size()) < Mpad * ldx) xq.resize(Mpad * ldx);
  std::vector<float> sx(M);
  std::vector<int32_t> zx(M);
  act_quant::quantize_x(x.data_ptr<float>(), M, K, ldx, xq.data(), sx.data(), zx.data());
  if (Mpad > M) std::memset(xq.data() + M * ldx, 0, (Mpad - M) * ldx);
  const uint8_t* xqp = xq.data();  // the lambda runs on other threads, with their own xq
  const int8_t* w = packed.data_ptr<int8_t>();
  const int32_t* cs = colsum.data_ptr<int32_t>();
  const float* sw = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, K4 * 64));
  if (amx) {
    struct Finish {
      int64_t M, N;
      const float *sx, *sw, *b;
      const int32_t *zx, *cs;
      float* y;
    } fin{M, N, sx.data(), sw, b, zx.data(), cs, yp};
    const AmxPanelsDone done = [](void* ctx, int64_t row0, int64_t p0, int64_t p1, const int32_t* sums) {
      const Finish& f = *static_cast<const Finish*>(ctx);
      const int rows = static_cast<int>(std::min<int64_t>(32, f.M - row0));
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n0 = p * NR, n = std::min(NR, f.N - n0);
        finish(sums + (p - p0) * 32 * NR, rows, f.sx + row0, f.zx + row0, f.cs + n0, f.sw + n0,
               f.b ? f.b + n0 : nullptr, f.y + row0 * f.N + n0, f.N, n);
      }
    };
    at::parallel_for(0, P, grain, [&](int64_t begin, int64_t end) {
      thread_local std::vector<int32_t> tile_sums;
      const int64_t need = amx_group_panels(K4) * 32 * NR;
      if (static_cast<int64_t>(tile_sums.size()) < need) tile_sums.resize(need);
      int8_panels_amx(xqp, ldx, Mpad / 16, K4, w, begin, end, tile_sums.data(), done, &fin);
    });
    return y;
  }
  const bool vnni = active_isa() >= Isa::avx512;
  const int rows = vnni ? kVnniRows : static_cast<int>(MR_MAX);
  // the row blocks, the same for every panel, worked out once here: equal with VNNI (13 rows: 7 + 6)
  const auto blocks = row_blocks(M, rows, vnni);
  at::parallel_for(0, P, grain, [&](int64_t begin, int64_t end) {
    alignas(64) int32_t sums[kVnniRows * NR];
    for (int64_t p = begin; p < end; ++p) {
      const int8_t* panel = w + p * K4 * 64;
      const int64_t n0 = p * NR, n = std::min(NR, N - n0);
      for (const auto& [m, mr] : blocks) {
        const uint8_t* xm = xqp + m * ldx;
        if (vnni) int8_sums_vnni(xm, ldx, K4, panel, mr, sums);
        else sums_avx2(xm, ldx, K4, panel, mr, sums);
        finish(sums, mr, sx.data() + m, zx.data() + m, cs + n0, sw + n0, b ? b + n0 : nullptr,
               yp + m * N + n0, N, n);
      }
    }
  });
  return y;
}
