// Streaming multi-head attention in one pass (``engine.encoder._Attention``, emformer_stack):
// for each (stream, head, query row), the scores against every key, the mask, the softmax and
// the weighted sum of values, read straight from the (N, K, D) key and value tensors. The
// same function as torchaudio's ``bmm(q * scaling, k^T)``, ``masked_fill(-1e8)``, softmax,
// ``bmm(p, v)`` on heads reshaped to (N*H, ·, Dh), without those reshapes (the copies and
// per-op costs that were half of a 32-stream encoder step outside the matmuls); sums run in
// another order, so results agree to fp32 rounding. ``ring_attention`` reads the left context
// from the streaming cache's ring (``emformer_stack``) instead of a concatenated copy: the same
// keys in the same order, so the same bits as ``stream_attention`` on the concatenation.
#include "linears.h"
#include "simd_math.h"

#include <immintrin.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

// sum_c a[c] * b[c], 8 lanes at a time (dh a multiple of 8), else scalar. The lanes' sums are
// reduced as (lo + hi) over the two halves, then (e0 + e2) + (e1 + e3).
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

// dot(a, keys[m]) for the four keys at once (dh a multiple of 8): four independent chains of
// fused multiply-adds, and the same reduction per key as ``dot`` (a 4 x 4 transpose lines the
// keys' partial sums up), so the same bits four times faster than four ``dot`` calls.
inline __m128 dot4(const float* a, const float* const* keys, int64_t dh) {
  __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
  for (int64_t c = 0; c < dh; c += 8) {
    const __m256 x = _mm256_loadu_ps(a + c);
    c0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(keys[0] + c), c0);
    c1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(keys[1] + c), c1);
    c2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(keys[2] + c), c2);
    c3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(keys[3] + c), c3);
  }
  __m128 e0 = _mm_add_ps(_mm256_castps256_ps128(c0), _mm256_extractf128_ps(c0, 1));
  __m128 e1 = _mm_add_ps(_mm256_castps256_ps128(c1), _mm256_extractf128_ps(c1, 1));
  __m128 e2 = _mm_add_ps(_mm256_castps256_ps128(c2), _mm256_extractf128_ps(c2, 1));
  __m128 e3 = _mm_add_ps(_mm256_castps256_ps128(c3), _mm256_extractf128_ps(c3, 1));
  _MM_TRANSPOSE4_PS(e0, e1, e2, e3);  // e_i: lane i of the four keys
  return _mm_add_ps(_mm_add_ps(e0, e2), _mm_add_ps(e1, e3));
}

}  // namespace

namespace {

// row[0..n) -> softmax, in place, eight lanes at a time: the maximum (exact in any order), exp8
// (Cephes expf, as fast_tanh uses; a masked score, -1e8, gives exactly 0 as expf's underflow
// does), a sum in a fixed order (lanes, then the tail) and one reciprocal. The scalar loop of
// max, std::exp and a serial sum spent a quarter of the attention's time waiting on its chains.
void softmax_row(float* row, int64_t n) {
  const int64_t full = n / 8 * 8;
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < full; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(row + j));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float mx = lanes[0];
  for (int k = 1; k < 8; ++k) mx = std::max(mx, lanes[k]);
  for (int64_t j = full; j < n; ++j) mx = std::max(mx, row[j]);
  const __m256 m = _mm256_set1_ps(mx), floor = _mm256_set1_ps(-87.f);
  auto exp_from = [&](__m256 x) {  // exp(x - max); 0 below e^-87 (expf's denormals and 0)
    const __m256 z = _mm256_sub_ps(x, m);
    return _mm256_andnot_ps(_mm256_cmp_ps(z, floor, _CMP_LT_OQ), exp8(z));
  };
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = 0; j < full; j += 8) {
    const __m256 e = exp_from(_mm256_loadu_ps(row + j));
    _mm256_storeu_ps(row + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  if (full < n) {  // the tail through a padded buffer, so every element gets the same arithmetic
    alignas(32) float tail[8];
    for (int k = 0; k < 8; ++k) tail[k] = full + k < n ? row[full + k] : -std::numeric_limits<float>::infinity();
    const __m256 e = exp_from(_mm256_load_ps(tail));
    _mm256_store_ps(tail, e);
    vsum = _mm256_add_ps(vsum, e);
    for (int64_t j = full; j < n; ++j) row[j] = tail[j - full];
  }
  _mm256_store_ps(lanes, vsum);
  const float sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
  const __m256 inv = _mm256_set1_ps(1.f / sum);
  for (int64_t j = 0; j < full; j += 8) _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), inv));
  for (int64_t j = full; j < n; ++j) row[j] *= 1.f / sum;
}

// The attention of every (stream, head, query row) given each stream's key and value rows as
// pointers, kt per stream in key order (krows[b * kt + j]); out (N, T, D) contiguous.
void attend(const torch::Tensor& q, const float* const* krows, const float* const* vrows, int64_t kt,
            const bool* mp, int64_t heads, double scaling, float* op) {
  const int64_t n = q.size(0), t = q.size(1), d = q.size(2), dh = d / heads;
  const float* qp = q.data_ptr<float>();
  const float scale = static_cast<float>(scaling);
  // strides as plain numbers: a TensorBase::stride call in the inner loops is not hoisted
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1);
  // per (stream, head): all T query rows against each key row in turn (each key and value row
  // is read once for the T rows)
  std::vector<float> qs(t * dh), p(t * kt);
  for (int64_t b = 0; b < n; ++b) {
    const bool* mb = mp ? mp + b * kt : nullptr;
    const float* const* kb = krows + b * kt;
    const float* const* vb = vrows + b * kt;
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < t; ++i) {
        const float* qi = qp + b * qs0 + i * qs1 + h * dh;
        for (int64_t c = 0; c < dh; ++c) qs[i * dh + c] = qi[c] * scale;  // as bmm(q * scaling, k^T)
      }
      int64_t j = 0;
      if (dh % 8 == 0)
        for (; j + 4 <= kt; j += 4) {
          const float* kj[4];
          for (int m = 0; m < 4; ++m) kj[m] = kb[j + m] + h * dh;
          for (int64_t i = 0; i < t; ++i) {
            alignas(16) float sc[4];
            _mm_store_ps(sc, dot4(&qs[i * dh], kj, dh));
            for (int m = 0; m < 4; ++m) p[i * kt + j + m] = (mb && mb[j + m]) ? -1e8f : sc[m];
          }
        }
      for (; j < kt; ++j) {
        const float* kj = kb[j] + h * dh;
        for (int64_t i = 0; i < t; ++i) p[i * kt + j] = (mb && mb[j]) ? -1e8f : dot(&qs[i * dh], kj, dh);
      }
      for (int64_t i = 0; i < t; ++i) {
        softmax_row(&p[i * kt], kt);
        if (dh % 32 != 0) {
          float* oi = op + (b * t + i) * d + h * dh;
          for (int64_t c = 0; c < dh; ++c) oi[c] = 0.f;
        }
      }
      if (dh % 32 == 0) {
        // the weighted sum, two query rows at a time: 32 outputs of each in registers (eight
        // independent chains of fused multiply-adds, so the adds' latency is hidden), each
        // value row loaded once for both; per element the same sum in key order
        for (int64_t i = 0; i < t; i += 2) {
          const bool two = i + 1 < t;
          const float* pa = &p[i * kt];
          const float* pb = two ? pa + kt : pa;
          float* oa = op + (b * t + i) * d + h * dh;
          float* ob = oa + d;
          for (int64_t c = 0; c < dh; c += 32) {
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (int64_t j = 0; j < kt; ++j) {
              const __m256 wa = _mm256_set1_ps(pa[j]), wb = _mm256_set1_ps(pb[j]);
              const float* vj = vb[j] + h * dh + c;
              const __m256 v0 = _mm256_loadu_ps(vj), v1 = _mm256_loadu_ps(vj + 8);
              const __m256 v2 = _mm256_loadu_ps(vj + 16), v3 = _mm256_loadu_ps(vj + 24);
              a0 = _mm256_fmadd_ps(wa, v0, a0);
              a1 = _mm256_fmadd_ps(wa, v1, a1);
              a2 = _mm256_fmadd_ps(wa, v2, a2);
              a3 = _mm256_fmadd_ps(wa, v3, a3);
              b0 = _mm256_fmadd_ps(wb, v0, b0);
              b1 = _mm256_fmadd_ps(wb, v1, b1);
              b2 = _mm256_fmadd_ps(wb, v2, b2);
              b3 = _mm256_fmadd_ps(wb, v3, b3);
            }
            _mm256_storeu_ps(oa + c, a0);
            _mm256_storeu_ps(oa + c + 8, a1);
            _mm256_storeu_ps(oa + c + 16, a2);
            _mm256_storeu_ps(oa + c + 24, a3);
            if (two) {
              _mm256_storeu_ps(ob + c, b0);
              _mm256_storeu_ps(ob + c + 8, b1);
              _mm256_storeu_ps(ob + c + 16, b2);
              _mm256_storeu_ps(ob + c + 24, b3);
            }
          }
        }
      } else {
        for (int64_t j = 0; j < kt; ++j) {
          const float* vj = vb[j] + h * dh;
          for (int64_t i = 0; i < t; ++i) {
            const float w = p[i * kt + j];
            float* oi = op + (b * t + i) * d + h * dh;
            for (int64_t c = 0; c < dh; ++c) oi[c] = std::fma(w, vj[c], oi[c]);
          }
        }
      }
    }
  }
}

void check_qkv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t heads,
               const char* who) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && q.scalar_type() == torch::kFloat &&
                  k.scalar_type() == torch::kFloat && v.scalar_type() == torch::kFloat,
              who, ": q (N, T, D), k and v (N, K, D), fp32");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1 && v.stride(2) == 1, who,
              ": the last dimension must be contiguous");
  const int64_t d = q.size(2);
  TORCH_CHECK((d / heads) * heads == d && k.size(0) == q.size(0) && v.size(0) == q.size(0) &&
                  k.size(1) == v.size(1) && k.size(2) == d && v.size(2) == d,
              who, ": shapes do not match");
}

const bool* mask_rows(const c10::optional<torch::Tensor>& mask, int64_t n, int64_t kt, torch::Tensor& held,
                      const char* who) {
  if (!mask.has_value() || !mask->defined()) return nullptr;
  held = mask->to(torch::kBool).contiguous();
  TORCH_CHECK(held.dim() == 2 && held.size(0) == n && held.size(1) == kt, who, ": mask must be (N, K)");
  return held.data_ptr<bool>();
}

// Each stream's row pointers of (N, ·, D) pieces laid end to end along dim 1 (the keys or the
// values in key order): rows[b * kt + j].
std::vector<const float*> piece_rows(const std::vector<RowPiece>& pieces, int64_t n, int64_t kt) {
  std::vector<const float*> rows(n * kt);
  for (int64_t b = 0; b < n; ++b) {
    const float** out = rows.data() + b * kt;
    for (const auto& piece : pieces) {
      const float* base = piece.t.data_ptr<float>() + b * piece.t.stride(0);
      for (int64_t i = piece.start; i < piece.start + piece.count; ++i) *out++ = base + i * piece.t.stride(1);
    }
  }
  return rows;
}

// attend over the keys and values given as pieces (each side kt rows in all), into a new (N, T, D).
torch::Tensor attend_pieces(const torch::Tensor& q, const std::vector<RowPiece>& keys,
                            const std::vector<RowPiece>& values, int64_t kt,
                            const c10::optional<torch::Tensor>& mask, int64_t heads, double scaling,
                            const char* who) {
  const int64_t n = q.size(0);
  torch::Tensor held;
  const bool* mp = mask_rows(mask, n, kt, held, who);
  const auto krows = piece_rows(keys, n, kt), vrows = piece_rows(values, n, kt);
  auto out = at::empty({n, q.size(1), q.size(2)}, q.options());
  attend(q, krows.data(), vrows.data(), kt, mp, heads, scaling, out.data_ptr<float>());
  return out;
}

}  // namespace

torch::Tensor stream_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const c10::optional<torch::Tensor>& mask, int64_t heads, double scaling) {
  check_qkv(q, k, v, heads, "stream_attention");
  const int64_t kt = k.size(1);
  return attend_pieces(q, {{k, 0, kt}}, {{v, 0, kt}}, kt, mask, heads, scaling, "stream_attention");
}

torch::Tensor ring_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& k_ring, const torch::Tensor& v_ring, int64_t r, int64_t lo,
                             int64_t head, const c10::optional<torch::Tensor>& mask, int64_t heads,
                             double scaling) {
  check_qkv(q, k, v, heads, "ring_attention");
  check_qkv(q, k_ring, v_ring, heads, "ring_attention");
  const int64_t t = k.size(1), left = k_ring.size(1);
  TORCH_CHECK(0 <= r && r <= t && 0 <= lo && lo <= left && (left == 0 || (0 <= head && head < left)),
              "ring_attention: bad r, lo or head");
  // [right context, the ring's rows lo..L oldest first, utterance]
  std::vector<RowPiece> keys{{k, 0, r}}, values{{v, 0, r}};
  for (const auto& piece : ring_pieces(k_ring, lo, head)) keys.push_back(piece);
  for (const auto& piece : ring_pieces(v_ring, lo, head)) values.push_back(piece);
  keys.push_back({k, r, t - r});
  values.push_back({v, r, t - r});
  return attend_pieces(q, keys, values, t + left - lo, mask, heads, scaling, "ring_attention");
}
