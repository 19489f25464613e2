#include "linears.h"


// One streaming chunk through a stack of torchaudio Emformer layers (``_EmformerLayer`` with
// ``_EmformerAttention``, no memory bank, eval mode), with every linear packed. The same ATen
// ops, in the same order, as ``engine.encoder._Layer`` in Python; only the interpreter's
// per-op cost (about two thirds of the non-matmul time of a layer) is gone.
//
// x: (N, R + S, D) rows [right context, utterance]. keys[i], values[i]: (N, L, D), layer i's
// left context; the first ``lo`` slots are unused by every stream and skipped. mask: (N, K)
// bool, True = masked key, or None. params: 22 per layer, in order: input norm weight, bias;
// the fused query/key/value linear; the output projection; FFN norm weight, bias; the FFN's
// first and second linears; output norm weight, bias. A linear is 4 tensors: packed weight,
// bias, and for int8 (``int8_linear``) the weight scales and column sums, else two empty
// tensors (an empty bias = no bias). dims: 4 per layer, the linears' output features.
// eps: 3 per layer. activation: 0 relu, 1 gelu, 2 gelu (tanh), 3 silu.
// Returns [y (N, R + S, D), next keys of each layer..., next values of each layer...]; next
// keys are the last L rows of [old left context, this chunk's utterance keys].
namespace {

torch::Tensor linear3(const torch::Tensor& x, const torch::Tensor* p, int64_t n) {
  return kernel_linear(x.reshape({-1, x.size(-1)}), p, n).view({x.size(0), x.size(1), n});
}

}  // namespace

std::vector<torch::Tensor> emformer_stack(torch::Tensor x, int64_t r, int64_t lo, int64_t s,
                                          std::vector<torch::Tensor> keys,
                                          std::vector<torch::Tensor> values,
                                          c10::optional<torch::Tensor> mask,
                                          std::vector<torch::Tensor> params, std::vector<int64_t> dims,
                                          std::vector<double> eps, int64_t heads, double scaling,
                                          int64_t activation) {
  const int64_t layers = static_cast<int64_t>(keys.size());
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == torch::kFloat, "emformer_stack: x must be (N, T, D) fp32");
  TORCH_CHECK(static_cast<int64_t>(values.size()) == layers &&
                  static_cast<int64_t>(params.size()) == 22 * layers &&
                  static_cast<int64_t>(dims.size()) == 4 * layers &&
                  static_cast<int64_t>(eps.size()) == 3 * layers,
              "emformer_stack: per-layer lists of different lengths");
  TORCH_CHECK(activation >= 0 && activation <= 3, "emformer_stack: unknown activation");
  const int64_t n = x.size(0), t = x.size(1), d = x.size(2), dh = d / heads;
  TORCH_CHECK(dh * heads == d, "emformer_stack: width not divisible by heads");
  const bool has_mask = mask.has_value() && mask->defined();
  std::vector<torch::Tensor> out(1 + 2 * layers);
  for (int64_t i = 0; i < layers; ++i) {
    const torch::Tensor* p = params.data() + 22 * i;
    const int64_t* nd = dims.data() + 4 * i;
    const double* e = eps.data() + 3 * i;
    const torch::Tensor& k_old = keys[i];
    const torch::Tensor& v_old = values[i];
    const int64_t left = k_old.size(1);
    auto ln = at::layer_norm(x, {d}, p[0], p[1], e[0]);
    auto qkv = linear3(ln, p + 2, nd[0]);
    auto q = qkv.narrow(2, 0, d), k = qkv.narrow(2, d, d), v = qkv.narrow(2, 2 * d, d);
    k = at::cat({k.narrow(1, 0, r), k_old.narrow(1, lo, left - lo), k.narrow(1, r, t - r)}, 1);
    v = at::cat({v.narrow(1, 0, r), v_old.narrow(1, lo, left - lo), v.narrow(1, r, t - r)}, 1);
    const int64_t kt = k.size(1);
    auto qh = q.view({n, t, heads, dh}).transpose(1, 2).reshape({n * heads, t, dh});
    auto kh = k.view({n, kt, heads, dh}).transpose(1, 2).reshape({n * heads, kt, dh});
    auto vh = v.view({n, kt, heads, dh}).transpose(1, 2).reshape({n * heads, kt, dh});
    auto w = at::bmm(qh * scaling, kh.transpose(1, 2));
    if (has_mask)
      w = w.view({n, heads, t, kt}).masked_fill(mask->view({n, 1, 1, kt}), -1e8).view({n * heads, t, kt});
    auto att = at::bmm(at::softmax(w, -1), vh).view({n, heads, t, dh}).transpose(1, 2).reshape({n, t, d});
    auto y = linear3(att, p + 6, nd[1]) + x;
    auto h = at::layer_norm(y, {d}, p[10], p[11], e[1]);
    y = linear3(ffn_activation(linear3(h, p + 12, nd[2]), activation), p + 16, nd[3]) + y;
    x = at::layer_norm(y, {d}, p[20], p[21], e[2]);
    // next left context: the last L rows of [old left context, this utterance]
    if (s >= lo) {
      out[1 + i] = k.narrow(1, kt - left, left);
      out[1 + layers + i] = v.narrow(1, kt - left, left);
    } else {
      out[1 + i] = at::cat({k_old.narrow(1, s, left - s), k.narrow(1, kt - s, s)}, 1);
      out[1 + layers + i] = at::cat({v_old.narrow(1, s, left - s), v.narrow(1, kt - s, s)}, 1);
    }
  }
  out[0] = x;
  return out;
}
