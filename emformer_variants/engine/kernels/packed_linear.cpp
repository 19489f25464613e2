// Small-batch linear layers for x86-64 CPUs: the AVX2 (with FMA and F16C) kernel here, the
// AVX-512 one in avx512.cpp (same layout, same bits), chosen per call by active_isa().
//
//   y[M, N] = x[M, K] @ W[N, K]^T + bias[N]      (x, y, bias fp32; W fp32, fp16 or bf16)
//
// W is packed into panels of 16 output columns, [P][K][16] with P = ceil(N / 16), so a
// panel is one contiguous stream. Each 6 x 16 block of y keeps 12 accumulators in
// registers: per k it loads 16 weights (widening 16-bit weights to fp32) and broadcasts one
// x value per row. Every output is one fp32 FMA chain over k in order, so a row's result
// does not depend on how many other rows are in the batch.
#include "isa.h"
#include "linears.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

namespace {

constexpr int64_t NR = 16;   // output columns per panel
constexpr int64_t PREFETCH = 32;  // k steps ahead, into L1
constexpr int64_t kAhead = 16384;  // bytes ahead into L2, as in avx512.cpp

template <typename T> inline void load16(const T* p, __m256& lo, __m256& hi);
template <> inline void load16<float>(const float* p, __m256& lo, __m256& hi) {
  lo = _mm256_loadu_ps(p);
  hi = _mm256_loadu_ps(p + 8);
}
template <> inline void load16<at::Half>(const at::Half* p, __m256& lo, __m256& hi) {
  lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
}
template <> inline void load16<at::BFloat16>(const at::BFloat16* p, __m256& lo, __m256& hi) {
  // bf16 is the top half of an fp32: widen to 32 bits and shift left by 16.
  lo = _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  hi = _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8))), 16));
}

inline void store16(float* y, __m256 lo, __m256 hi, const float* bias, int64_t n) {
  if (n == NR) {
    if (bias) {
      lo = _mm256_add_ps(lo, _mm256_loadu_ps(bias));
      hi = _mm256_add_ps(hi, _mm256_loadu_ps(bias + 8));
    }
    _mm256_storeu_ps(y, lo);
    _mm256_storeu_ps(y + 8, hi);
    return;
  }
  alignas(32) float buf[NR];
  _mm256_store_ps(buf, lo);
  _mm256_store_ps(buf + 8, hi);
  for (int64_t j = 0; j < n; ++j) y[j] = buf[j] + (bias ? bias[j] : 0.f);
}

// MR rows (1..6) of x times one panel. Accumulators are named variables, not an array:
// with an array gcc stores every accumulator to the stack on each k step.
template <typename T, int MR>
void block(const float* x, int64_t K, const T* panel, const float* bias, float* y, int64_t N,
           int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0;
  __m256 a3 = a0, b3 = a0, a4 = a0, b4 = a0, a5 = a0, b5 = a0;
  const float *x0 = x, *x1 = x + K, *x2 = x + 2 * K, *x3 = x + 3 * K, *x4 = x + 4 * K, *x5 = x + 5 * K;
  for (int64_t k = 0; k < K; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(panel + (k + PREFETCH) * NR), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(panel + k * NR) + kAhead, _MM_HINT_T1);
    __m256 w0, w1, xb;
    load16<T>(panel + k * NR, w0, w1);
#define EV_ROW(i)                                        \
    if (MR > i) {                                        \
      xb = _mm256_broadcast_ss(x##i + k);                \
      a##i = _mm256_fmadd_ps(xb, w0, a##i);              \
      b##i = _mm256_fmadd_ps(xb, w1, b##i);              \
    }
    EV_ROW(0) EV_ROW(1) EV_ROW(2) EV_ROW(3) EV_ROW(4) EV_ROW(5)
#undef EV_ROW
  }
  if (MR > 0) store16(y, a0, b0, bias, n);
  if (MR > 1) store16(y + N, a1, b1, bias, n);
  if (MR > 2) store16(y + 2 * N, a2, b2, bias, n);
  if (MR > 3) store16(y + 3 * N, a3, b3, bias, n);
  if (MR > 4) store16(y + 4 * N, a4, b4, bias, n);
  if (MR > 5) store16(y + 5 * N, a5, b5, bias, n);
}

template <typename T>
void panels(const float* x, int64_t M, int64_t K, const T* w, const float* bias, float* y,
            int64_t N, int64_t begin, int64_t end) {
  for (int64_t p = begin; p < end; ++p) {
    const T* panel = w + p * K * NR;
    const int64_t n0 = p * NR, n = std::min(NR, N - n0);
    const float* b = bias ? bias + n0 : nullptr;
    int64_t m = 0;
    for (; m + 6 <= M; m += 6) block<T, 6>(x + m * K, K, panel, b, y + m * N + n0, N, n);
    const float* xm = x + m * K;
    float* ym = y + m * N + n0;
    switch (M - m) {
      case 1: block<T, 1>(xm, K, panel, b, ym, N, n); break;
      case 2: block<T, 2>(xm, K, panel, b, ym, N, n); break;
      case 3: block<T, 3>(xm, K, panel, b, ym, N, n); break;
      case 4: block<T, 4>(xm, K, panel, b, ym, N, n); break;
      case 5: block<T, 5>(xm, K, panel, b, ym, N, n); break;
      default: break;
    }
  }
}

}  // namespace

// x: (M, K) fp32; packed: (P, K, 16) fp32/fp16/bf16; bias: (N,) fp32 or None.
torch::Tensor packed_linear(torch::Tensor x, torch::Tensor packed, c10::optional<torch::Tensor> bias,
                            int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat, "packed_linear: x must be 2-D fp32");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == NR && packed.is_contiguous(),
              "packed_linear: weight must be packed as (P, K, 16)");
  TORCH_CHECK(x.size(1) == packed.size(1), "packed_linear: x has ", x.size(1), " features, weight ",
              packed.size(1));
  TORCH_CHECK(packed.size(0) * NR >= N && packed.size(0) * NR < N + NR, "packed_linear: bad N");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), P = packed.size(0);
  auto y = torch::empty({M, N}, x.options());
  torch::Tensor bias_c;
  const float* b = bias_data(bias, N, bias_c, "packed_linear");
  const auto dtype = packed.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kHalf || dtype == torch::kBFloat16,
              "packed_linear: weight dtype must be float32, float16 or bfloat16");
  if (M == 0) return y;
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Split panels across threads only when each gets a few hundred KB of weights.
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, K * NR * packed.element_size()));
  if (active_isa() >= Isa::avx512) {  // amx: the fp kernels stay AVX-512
    const int code = dtype == torch::kFloat ? 0 : dtype == torch::kHalf ? 1 : 2;
    const void* w = packed.data_ptr();
    at::parallel_for(0, P, grain, [&](int64_t begin, int64_t end) {
      packed_panels_avx512(xp, M, K, w, code, b, yp, N, begin, end);
    });
    return y;
  }
  at::parallel_for(0, P, grain, [&](int64_t begin, int64_t end) {
    if (dtype == torch::kFloat) panels(xp, M, K, packed.data_ptr<float>(), b, yp, N, begin, end);
    else if (dtype == torch::kHalf) panels(xp, M, K, packed.data_ptr<at::Half>(), b, yp, N, begin, end);
    else panels(xp, M, K, packed.data_ptr<at::BFloat16>(), b, yp, N, begin, end);
  });
  return y;
}


// Reads every byte of ``buffer`` once, 32 bytes per load, in one thread: the memory-bandwidth
// floor of a kernel that streams that many weight bytes (scripts/bench_linears.py).
int64_t stream_read(torch::Tensor buffer) {
  TORCH_CHECK(buffer.is_contiguous() && buffer.nbytes() % 128 == 0, "stream_read: contiguous, 128-byte multiple");
  const auto* p = static_cast<const __m256i*>(buffer.data_ptr());
  const int64_t n = static_cast<int64_t>(buffer.nbytes() / 32);
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  for (int64_t i = 0; i < n; i += 4) {
    a = _mm256_xor_si256(a, _mm256_loadu_si256(p + i));
    b = _mm256_xor_si256(b, _mm256_loadu_si256(p + i + 1));
    c = _mm256_xor_si256(c, _mm256_loadu_si256(p + i + 2));
    d = _mm256_xor_si256(d, _mm256_loadu_si256(p + i + 3));
  }
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_xor_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(c, d)));
  return lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
}
