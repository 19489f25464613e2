#include "linears.h"


// One streaming chunk through a stack of Emformer layers (torchaudio's ``_EmformerLayer``, no
// memory bank, eval mode), with every linear packed. The same ATen ops, in the same order, as
// ``engine.encoder._Layer`` in Python; only the interpreter's per-op cost (about two thirds of
// the non-matmul time of a layer) is gone.
//
// Each "linear" of a layer is a chain of packed linears applied in order: one link for a dense
// linear, two (down, up) for a low-rank one. Attention is torchaudio's multi-head attention
// (kind 0) or the MLA surgery's latent attention with absorbed projections (kind 1,
// ``engine/mla.py``): its first chain gives [per-head query latents (H*r), the frame's latent
// (r)], its cache holds the latent and no values, its output chain takes the heads' latent
// contexts (H*r). The FFN is torchaudio's (kind 0: norm, linear chain, activation, linear
// chain) or a MoE's (kind 1, ``engine/moe.py``: norm, then ``moe_ffn``).
//
// x: (N, R + S, D) rows [right context, utterance]. keys[i], values[i]: (N, L, ·), layer i's
// left-context cache, a ring whose oldest row is at ``head`` (the same for every layer and
// stream); the first ``lo`` rows by age are unused by every stream and skipped. mask: (N, K)
// bool, True = masked key, or None.
// plan: 10 per layer: attention kind, latent size r (0 for kind 0), the links of the chains
// query, key_value, out, ff1, ff2 (key_value has 0 links when query gives q, k and v at once,
// and always for attention kind 1; ff1 and ff2 have 0 for FFN kind 1), FFN kind, experts E and
// top-k (0, 0 for FFN kind 0).
// params per layer: input norm weight, bias; FFN norm weight, bias; output norm weight, bias;
// then 4 tensors per link of those chains in order: packed weight, bias, and for int8
// (``int8_linear``) the weight scales and column sums, else two empty tensors (an empty bias =
// no bias); for FFN kind 1 then the router's weight and bias (fp32, empty = none) and each
// expert's two linears (4 tensors each). dims: each link's output features (a MoE expert's
// two linears count as two links). eps: 3 per layer. activation: 0 relu, 1 gelu, 2 gelu
// (tanh), 3 silu.
// Returns [y (N, R + S, D), keys of each layer..., values of each layer...]: the caches
// themselves, updated in place: this chunk's S utterance rows replace the oldest S, so the ring
// holds the last L rows of [old left context, this chunk's keys] with its oldest row at
// (head + S) mod L. Only S rows per layer are written, not the R + L + S of a concatenation
// (at 32 streams of emformer_base that copy was a tenth of the step).
namespace {

// x (N, T, K) through ``links`` packed linears; advances p (4 tensors per link) and nd.
torch::Tensor chain(const torch::Tensor& x, const torch::Tensor*& p, const int64_t*& nd, int64_t links) {
  auto y = x.reshape({-1, x.size(-1)});
  for (int64_t j = 0; j < links; ++j, p += 4, ++nd) y = kernel_linear(y, p, *nd);
  return y.view({x.size(0), x.size(1), y.size(1)});
}

}  // namespace

std::vector<torch::Tensor> emformer_stack(torch::Tensor x, int64_t r, int64_t lo, int64_t s, int64_t head,
                                          std::vector<torch::Tensor> keys,
                                          std::vector<torch::Tensor> values,
                                          c10::optional<torch::Tensor> mask,
                                          const std::vector<torch::Tensor>& params, const std::vector<int64_t>& plan,
                                          const std::vector<int64_t>& dims, const std::vector<double>& eps,
                                          int64_t heads, double scaling, int64_t activation) {
  const int64_t layers = static_cast<int64_t>(keys.size());
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == torch::kFloat, "emformer_stack: x must be (N, T, D) fp32");
  TORCH_CHECK(static_cast<int64_t>(values.size()) == layers &&
                  static_cast<int64_t>(plan.size()) == 10 * layers &&
                  static_cast<int64_t>(eps.size()) == 3 * layers,
              "emformer_stack: per-layer lists of different lengths");
  int64_t links = 0, routers = 0;
  for (int64_t i = 0; i < layers; ++i) {
    const int64_t* pl = plan.data() + 10 * i;
    TORCH_CHECK(pl[0] == 0 || (pl[0] == 1 && pl[1] > 0 && pl[3] == 0), "emformer_stack: bad attention plan");
    TORCH_CHECK((pl[7] == 0 && pl[5] > 0 && pl[6] > 0) ||
                    (pl[7] == 1 && pl[5] == 0 && pl[6] == 0 && pl[8] > 0 && pl[9] > 0 && pl[9] <= pl[8]),
                "emformer_stack: bad FFN plan");
    TORCH_CHECK(pl[2] > 0 && pl[3] >= 0 && pl[4] > 0, "emformer_stack: empty chain");
    links += pl[2] + pl[3] + pl[4] + pl[5] + pl[6] + 2 * pl[8];
    routers += pl[7];
  }
  TORCH_CHECK(static_cast<int64_t>(params.size()) == 6 * layers + 4 * links + 2 * routers &&
                  static_cast<int64_t>(dims.size()) == links,
              "emformer_stack: params/dims do not match the plan");
  TORCH_CHECK(activation >= 0 && activation <= 3, "emformer_stack: unknown activation");
  const int64_t n = x.size(0), t = x.size(1), d = x.size(2), dh = d / heads;
  TORCH_CHECK(dh * heads == d, "emformer_stack: width not divisible by heads");
  TORCH_CHECK(t == r + s && r >= 0 && s >= 0, "emformer_stack: x must hold R + S rows");
  for (int64_t i = 0; i < layers; ++i) {
    const int64_t left = keys[i].size(1);
    TORCH_CHECK(values[i].size(1) == left && 0 <= lo && lo <= left && (left == 0 ? head == 0 : 0 <= head && head < left),
                "emformer_stack: bad cache, lo or head");
  }
  const bool has_mask = mask.has_value() && mask->defined();
  std::vector<torch::Tensor> out(1 + 2 * layers);
  const torch::Tensor* p = params.data();
  const int64_t* nd = dims.data();
  for (int64_t i = 0; i < layers; ++i) {
    const int64_t* pl = plan.data() + 10 * i;
    const torch::Tensor* norm = p;
    p += 6;
    const double* e = eps.data() + 3 * i;
    torch::Tensor& k_ring = keys[i];
    torch::Tensor& v_ring = values[i];
    auto ln = layer_norm_rows(x, norm[0], norm[1], e[0]);
    torch::Tensor k, v, att;
    if (pl[0] == 0) {
      auto qx = chain(ln, p, nd, pl[2]);
      torch::Tensor q = qx.narrow(2, 0, d);
      if (pl[3] == 0) {
        k = qx.narrow(2, d, d);
        v = qx.narrow(2, 2 * d, d);
      } else {
        q = qx;
        auto kv = chain(ln, p, nd, pl[3]);
        k = kv.narrow(2, 0, d);
        v = kv.narrow(2, d, d);
      }
      att = ring_attention(q, k, v, k_ring, v_ring, r, lo, head, mask, heads, scaling);
      ring_push(k_ring, k, r, s, head);
      ring_push(v_ring, v, r, s, head);
    } else {
      const int64_t rank = pl[1];
      auto qc = chain(ln, p, nd, pl[2]);  // (N, T, H*r + r)
      auto c = qc.narrow(2, heads * rank, rank);
      std::vector<RowPiece> pieces{{c, 0, r}};
      for (const auto& piece : ring_pieces(k_ring, lo, head)) pieces.push_back(piece);
      pieces.push_back({c, r, s});
      k = concat_rows(pieces);  // the latents are small (r wide): copied as before
      const int64_t kt = k.size(1);
      auto w = at::bmm(qc.narrow(2, 0, heads * rank).reshape({n, t * heads, rank}), k.transpose(1, 2));
      if (has_mask) w = w.masked_fill(mask->view({n, 1, kt}), -1e8);
      att = at::bmm(at::softmax(w, -1), k).view({n, t, heads * rank});
      ring_push(k_ring, c, r, s, head);  // the values' cache stays (N, L, 0)
    }
    auto y = chain(att, p, nd, pl[4]);  // a new tensor: the residual adds in place, same bits
    y.add_(x);
    auto h = layer_norm_rows(y, norm[2], norm[3], e[1]);
    if (pl[7] == 0) {
      auto hidden = ffn_activation(chain(h, p, nd, pl[5]), activation);
      y = chain(hidden, p, nd, pl[6]).add_(y);
    } else {  // MoE: dims hold [hidden_e, out] per expert
      const int64_t experts = pl[8];
      std::vector<int64_t> widths(experts);
      for (int64_t j = 0; j < experts; ++j) widths[j] = nd[2 * j];
      auto moe = moe_ffn(h.reshape({-1, d}), p, experts, pl[9], p + 2, widths.data(), nd[1], activation);
      y = moe.view({n, t, nd[1]}).add_(y);
      p += 2 + 8 * experts;
      nd += 2 * experts;
    }
    x = layer_norm_rows(y, norm[4], norm[5], e[2]);
    out[1 + i] = k_ring;
    out[1 + layers + i] = v_ring;
  }
  out[0] = x;
  return out;
}
