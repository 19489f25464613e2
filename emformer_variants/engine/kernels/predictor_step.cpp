// One token step of torchaudio's RNN-T predictor (``_Predictor`` over ``_CustomLSTM`` layers
// with layer norm), for M rows at once, with every linear in a packed kernel. The same ATen
// ops in the same order as ``engine.predictor.PredictorStep.__call__``, so the same bits;
// what goes is the interpreter's cost per op.
//
// tokens: (M,) int64. pgates: (L, M, 4H), each parent's p2g(h) per layer. c: (L, M, H).
// table0: (V, 4H), x2g of the first layer per token. params: 8 per layer: x2g as 4 tensors
// (``kernel_linear``; empty for layer 0, which uses table0), gate norm weight, bias, cell
// norm weight, bias; then the output linear (4) and output norm weight, bias. eps: 2 per
// layer (gate, cell), then the output norm's. The ops that round exactly once (add, mul) run
// here as loops; sigmoid and the norms stay ATen's (the norms called past the dispatcher,
// ``layer_norm_rows``), tanh is ``fast_tanh`` as in the Python loop, so the bits are the loop's.
// Returns [out (M, D), h (L, M, H), c (L, M, H)].
#include "linears.h"

#include <immintrin.h>

namespace {

// Keeps v as it is in a register, so the compiler cannot fuse the multiply that made it into
// the next add (FMA contraction would round once where ATen's two ops round twice).
inline __m256 rounded(__m256 v) {
  __asm__("" : "+x"(v));
  return v;
}
inline float rounded(float v) {
  __asm__("" : "+x"(v));
  return v;
}

// The exact elementwise steps of a layer, as ATen's ops compute them (one fp32 rounding per
// op), without a kernel launch and a tensor per op. Rows m < M; ``ld*`` are row strides.
// out = a * b + d * e  (``sig_f * c + sig_i * tanh(g)``: two multiplies, then the add)
void mul_add_mul(int64_t M, int64_t H, const float* a, int64_t lda, const float* b, int64_t ldb,
                 const float* d, int64_t ldd, const float* e, int64_t lde, float* out) {
  for (int64_t m = 0; m < M; ++m) {
    const float *am = a + m * lda, *bm = b + m * ldb, *dm = d + m * ldd, *em = e + m * lde;
    float* om = out + m * H;
    int64_t j = 0;
    for (; j + 8 <= H; j += 8) {
      const __m256 ab = rounded(_mm256_mul_ps(_mm256_loadu_ps(am + j), _mm256_loadu_ps(bm + j)));
      const __m256 de = rounded(_mm256_mul_ps(_mm256_loadu_ps(dm + j), _mm256_loadu_ps(em + j)));
      _mm256_storeu_ps(om + j, _mm256_add_ps(ab, de));
    }
    for (; j < H; ++j) om[j] = rounded(am[j] * bm[j]) + rounded(dm[j] * em[j]);
  }
}

// out = a * b
void mul(int64_t M, int64_t H, const float* a, int64_t lda, const float* b, int64_t ldb, float* out) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < H; ++j) out[m * H + j] = a[m * lda + j] * b[m * ldb + j];
}

}  // namespace

std::vector<torch::Tensor> predictor_step(torch::Tensor tokens, torch::Tensor pgates, torch::Tensor c,
                                          torch::Tensor table0, std::vector<torch::Tensor> params,
                                          std::vector<double> eps, int64_t out_dim) {
  const int64_t layers = pgates.size(0), hidden = c.size(2), rows = tokens.size(0);
  TORCH_CHECK(static_cast<int64_t>(params.size()) == 8 * layers + 6 &&
                  static_cast<int64_t>(eps.size()) == 2 * layers + 1,
              "predictor_step: expected 8 tensors and 2 eps per layer, then 6 tensors and 1 eps");
  TORCH_CHECK(pgates.scalar_type() == torch::kFloat && c.scalar_type() == torch::kFloat &&
                  pgates.size(1) == rows && c.size(1) == rows && pgates.size(2) == 4 * hidden,
              "predictor_step: pgates (L, M, 4H) and c (L, M, H), fp32");
  pgates = pgates.contiguous();
  c = c.contiguous();
  const int64_t H = hidden, G = 4 * hidden;
  // each layer's h and c written into its slice of the results (no stack of per-layer tensors)
  auto hs = torch::empty({layers, rows, H}, pgates.options()), cs = torch::empty({layers, rows, H}, pgates.options());
  torch::Tensor x;
  for (int64_t i = 0; i < layers; ++i) {
    const torch::Tensor* p = params.data() + 8 * i;
    // a fresh (M, 4H) tensor either way, so adding the parents' gates in place is ``gates + pgates[i]``
    auto gates = i == 0 ? table0.index_select(0, tokens) : kernel_linear(x, p, G);
    gates.add_(pgates[i]);
    gates = layer_norm_rows(gates, p[4], p[5], eps[2 * i]);
    auto sig = gates.sigmoid();  // input, forget, output gates (the cell quarter uses tanh)
    auto tg = fast_tanh(gates.narrow(1, 2 * H, H));  // as engine.linear.tanh in the Python loop
    auto c_new = torch::empty({rows, H}, gates.options());
    const float* sp = sig.data_ptr<float>();  // sig: (M, 4H) contiguous
    // sig_f * c + sig_i * tanh(g)
    mul_add_mul(rows, H, sp + H, G, c[i].data_ptr<float>(), H, sp, G, tg.data_ptr<float>(), H,
                c_new.data_ptr<float>());
    c_new = layer_norm_rows(c_new, p[6], p[7], eps[2 * i + 1]);
    cs[i].copy_(c_new);
    auto tc = fast_tanh(c_new);
    x = hs[i];
    mul(rows, H, sp + 3 * H, G, tc.data_ptr<float>(), H, x.data_ptr<float>());  // sig_o * tanh(c)
  }
  const torch::Tensor* q = params.data() + 8 * layers;
  auto out = layer_norm_rows(kernel_linear(x, q, out_dim), q[4], q[5], eps[2 * layers]);
  return {out, hs, cs};
}
