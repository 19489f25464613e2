// tanh for the engine's searches, eight lanes at a time (AVX2 + FMA): Cephes' tanhf (an odd
// polynomial below |x| = 0.625, else 1 - 2 / (exp(2|x|) + 1) with Cephes' expf), within 1 ulp
// of the exact tanh (tested). ATen's float tanh calls MKL's vector math, which on the
// (rows x width) tensors of a beam step costs more than the int8 joiner matmul beside it; this
// takes about a quarter of that (docs/engine.md has the timing). The C++ searches and predictor
// step use it, and so do their Python loops (``engine.linear.tanh``), so both still give the
// same bits. GELU, sigmoid and log_softmax stay ATen's: written the same way they gained too
// little on these shapes to be worth a second implementation.
#include "linears.h"
#include "simd_math.h"

#include <immintrin.h>

namespace {

inline __m256 tanh8(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  const __m256 a = _mm256_min_ps(_mm256_andnot_ps(sign, x), _mm256_set1_ps(10.f));  // |x| (tanh(10) is 1 in fp32), NaN -> 10
  // |x| < 0.625: x + x^3 P(x^2)
  const __m256 z = _mm256_mul_ps(a, a);
  __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
  const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), a, a);
  // else 1 - 2 / (exp(2|x|) + 1)
  const __m256 e = exp8(_mm256_add_ps(a, a));
  const __m256 big = _mm256_sub_ps(_mm256_set1_ps(1.f),
                                   _mm256_div_ps(_mm256_set1_ps(2.f), _mm256_add_ps(e, _mm256_set1_ps(1.f))));
  const __m256 y = _mm256_blendv_ps(big, small, _mm256_cmp_ps(a, _mm256_set1_ps(0.625f), _CMP_LT_OQ));
  const __m256 out = _mm256_or_ps(y, _mm256_and_ps(x, sign));        // tanh is odd
  return _mm256_blendv_ps(out, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN stays NaN
}

// f applied to every element of a contiguous fp32 tensor into a new one; the tail (fewer than
// 8) through a buffer, so every element gets the same lane arithmetic.
template <__m256 (*F)(__m256)>
torch::Tensor map8(const torch::Tensor& x, const char* who) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat, who, ": fp32 only");
  auto in = x.contiguous();
  auto out = torch::empty_like(in);
  const float* src = in.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t n = in.numel();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, F(_mm256_loadu_ps(src + i)));
  if (i < n) {
    alignas(32) float buf[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int64_t j = i; j < n; ++j) buf[j - i] = src[j];
    _mm256_store_ps(buf, F(_mm256_load_ps(buf)));
    for (int64_t j = i; j < n; ++j) dst[j] = buf[j - i];
  }
  return out;
}

}  // namespace

torch::Tensor fast_tanh(const torch::Tensor& x) { return map8<tanh8>(x, "fast_tanh"); }
