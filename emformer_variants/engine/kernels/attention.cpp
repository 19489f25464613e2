// Streaming multi-head attention in one pass (``engine.encoder._Attention``, emformer_stack):
// for each (stream, head, query row), the scores against every key, the mask, the softmax and
// the weighted sum of values, read straight from the (N, K, D) key and value tensors. The
// same function as torchaudio's ``bmm(q * scaling, k^T)``, ``masked_fill(-1e8)``, softmax,
// ``bmm(p, v)`` on heads reshaped to (N*H, ·, Dh), without those reshapes (the copies and
// per-op costs that were half of a 32-stream encoder step outside the matmuls); sums run in
// another order, so results agree to fp32 rounding.
#include "linears.h"

#include <immintrin.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

// sum_c a[c] * b[c], 8 lanes at a time (dh a multiple of 8), else scalar.
inline float dot(const float* a, const float* b, int64_t dh) {
  if (dh % 8 == 0) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c = 0; c < dh; c += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), acc);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  float acc = 0.f;
  for (int64_t c = 0; c < dh; ++c) acc += a[c] * b[c];
  return acc;
}

}  // namespace

torch::Tensor stream_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const c10::optional<torch::Tensor>& mask, int64_t heads, double scaling) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && q.scalar_type() == torch::kFloat &&
                  k.scalar_type() == torch::kFloat && v.scalar_type() == torch::kFloat,
              "stream_attention: q (N, T, D), k and v (N, K, D), fp32");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1 && v.stride(2) == 1,
              "stream_attention: the last dimension must be contiguous");
  const int64_t n = q.size(0), t = q.size(1), d = q.size(2), kt = k.size(1), dh = d / heads;
  TORCH_CHECK(dh * heads == d && k.size(0) == n && v.size(0) == n && v.size(1) == kt && k.size(2) == d &&
                  v.size(2) == d,
              "stream_attention: shapes do not match");
  const bool has_mask = mask.has_value() && mask->defined();
  torch::Tensor m;
  if (has_mask) {
    m = mask->to(torch::kBool).contiguous();
    TORCH_CHECK(m.dim() == 2 && m.size(0) == n && m.size(1) == kt, "stream_attention: mask must be (N, K)");
  }
  const bool* mp = has_mask ? m.data_ptr<bool>() : nullptr;
  auto out = at::empty({n, t, d}, q.options());
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float scale = static_cast<float>(scaling);
  // per (stream, head): all T query rows against each key row in turn (each key and value row
  // is read once for the T rows)
  std::vector<float> qs(t * dh), p(t * kt);
  for (int64_t b = 0; b < n; ++b) {
    const bool* mb = mp ? mp + b * kt : nullptr;
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < t; ++i) {
        const float* qi = qp + b * q.stride(0) + i * q.stride(1) + h * dh;
        for (int64_t c = 0; c < dh; ++c) qs[i * dh + c] = qi[c] * scale;  // as bmm(q * scaling, k^T)
      }
      for (int64_t j = 0; j < kt; ++j) {
        const float* kj = kp + b * k.stride(0) + j * k.stride(1) + h * dh;
        for (int64_t i = 0; i < t; ++i) p[i * kt + j] = (mb && mb[j]) ? -1e8f : dot(&qs[i * dh], kj, dh);
      }
      for (int64_t i = 0; i < t; ++i) {
        float* pi = &p[i * kt];
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < kt; ++j) mx = std::max(mx, pi[j]);
        float sum = 0.f;
        for (int64_t j = 0; j < kt; ++j) sum += (pi[j] = std::exp(pi[j] - mx));
        const float inv = 1.f / sum;
        for (int64_t j = 0; j < kt; ++j) pi[j] *= inv;
        float* oi = op + (b * t + i) * d + h * dh;
        for (int64_t c = 0; c < dh; ++c) oi[c] = 0.f;
      }
      for (int64_t j = 0; j < kt; ++j) {
        const float* vj = vp + b * v.stride(0) + j * v.stride(1) + h * dh;
        for (int64_t i = 0; i < t; ++i) {
          const float w = p[i * kt + j];
          float* oi = op + (b * t + i) * d + h * dh;
          for (int64_t c = 0; c < dh; ++c) oi[c] += w * vj[c];
        }
      }
    }
  }
  return out;
}
