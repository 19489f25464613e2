// One token step of torchaudio's RNN-T predictor (``_Predictor`` over ``_CustomLSTM`` layers
// with layer norm), for M rows at once, with every linear in a packed kernel. The same ATen
// ops in the same order as ``engine.predictor.PredictorStep.__call__``, so the same bits;
// what goes is the interpreter's cost per op.
//
// tokens: (M,) int64. pgates: (L, M, 4H), each parent's p2g(h) per layer. c: (L, M, H).
// table0: (V, 4H), x2g of the first layer per token. params: 8 per layer: x2g as 4 tensors
// (``kernel_linear``; empty for layer 0, which uses table0), gate norm weight, bias, cell
// norm weight, bias; then the output linear (4) and output norm weight, bias. eps: 2 per
// layer (gate, cell), then the output norm's.
// Returns [out (M, D), h (L, M, H), c (L, M, H)].
#include "linears.h"

std::vector<torch::Tensor> predictor_step(torch::Tensor tokens, torch::Tensor pgates, torch::Tensor c,
                                          torch::Tensor table0, std::vector<torch::Tensor> params,
                                          std::vector<double> eps, int64_t out_dim) {
  const int64_t layers = pgates.size(0), hidden = c.size(2);
  TORCH_CHECK(static_cast<int64_t>(params.size()) == 8 * layers + 6 &&
                  static_cast<int64_t>(eps.size()) == 2 * layers + 1,
              "predictor_step: expected 8 tensors and 2 eps per layer, then 6 tensors and 1 eps");
  std::vector<torch::Tensor> hs, cs;
  torch::Tensor x;
  for (int64_t i = 0; i < layers; ++i) {
    const torch::Tensor* p = params.data() + 8 * i;
    auto gates = i == 0 ? table0.index_select(0, tokens) : kernel_linear(x, p, 4 * hidden);
    gates = at::layer_norm(gates + pgates[i], {4 * hidden}, p[4], p[5], eps[2 * i]);
    auto sig = gates.sigmoid();  // input, forget, output gates (the cell quarter uses tanh)
    auto c_new = sig.narrow(1, hidden, hidden) * c[i] +
                 sig.narrow(1, 0, hidden) * gates.narrow(1, 2 * hidden, hidden).tanh();
    c_new = at::layer_norm(c_new, {hidden}, p[6], p[7], eps[2 * i + 1]);
    x = sig.narrow(1, 3 * hidden, hidden) * c_new.tanh();
    hs.push_back(x);
    cs.push_back(c_new);
  }
  const torch::Tensor* q = params.data() + 8 * layers;
  auto out = at::layer_norm(kernel_linear(x, q, out_dim), {out_dim}, q[4], q[5], eps[2 * layers]);
  return {out, at::stack(hs), at::stack(cs)};
}
