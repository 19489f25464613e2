"""MLA attention (``variant=mla``) in the engine: the left-context cache holds the latent.

The MLA surgery (``surgery.mla.MLAAttention``) projects each frame to a latent c = W_down x
(r floats) and up-projects keys and values from it: k_h = W_uk,h c, v_h = W_uv,h c. The
engine never up-projects (DeepSeek-V2 sec. 2.1.2, "absorbed"):
- scores: q_h . k_h = (W_uk,h^T q_h) . c, and q_h = s (W_q,h x + b_q,h), so the query side is
  one linear x -> [s W_uk,h^T W_q,h for every head] (D -> H*r) with its bias; it is
  concatenated with W_down (D -> r) into one linear, one matmul per chunk for both;
- values: out = sum_h W_o,h P_h V_h + b_o = [W_o,h W_uv,h]_h (P_h C) + b_o, one linear
  H*r -> D on the heads' latent contexts (the value bias is already in b_o, see surgery.mla);
- the latent of every key frame is shared by all heads, so the scores of all heads and query
  rows are one (H*T, r) x (r, K) product per stream, and the contexts one (H*T, K) x (K, r).

Per layer and stream the cache is (L, r) instead of keys and values (2 x (L, D)): 2D/r
smaller. The absorbed linears are built once, in fp32 from the module's (dequantised)
weights, and then made the same kind of linear as the module's ``out_proj`` (fp32 packed,
fp16/bf16 weights or the int8 kernel), so a precision applies to them as to the rest.
Results agree with the module's streaming ``infer`` to fp32 rounding (the products are
formed in float64 and rounded once), not bit for bit.

Shapes: N streams, T query rows (R right context + S utterance), K keys (R + L' + S), D model
width, H heads, r latent size.
"""

from __future__ import annotations

import torch

from emformer_variants.engine.linear import fast_linear
from emformer_variants.surgery.mla import MLAAttention
from emformer_variants.surgery.weights import dense_bias, dense_weight


def _linear_like(template: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor | None):
    """A callable ``x @ weight.T + bias`` stored the way ``template`` stores its weight."""
    from emformer_variants.engine.precision import Int4DynamicLinear, Int8DynamicLinear, WeightCastLinear

    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    lin.eval()
    if isinstance(template, WeightCastLinear):
        return WeightCastLinear(lin, template.dtype)
    if isinstance(template, Int8DynamicLinear | Int4DynamicLinear):
        return type(template)(lin)
    return fast_linear(lin)


def absorbed_weights(att: MLAAttention) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                 torch.Tensor | None]:
    """(in weight (H*r + r, D), in bias (H*r + r,), out weight (D, H*r), out bias) in fp32:
    rows [s W_uk,h^T W_q,h for h in heads; W_down], bias [s W_uk,h^T b_q,h; 0]."""
    h, d, r = att.num_heads, att.input_dim, att.kv_rank
    dh = d // h
    w_q = dense_weight(att.emb_to_query).detach().double().view(h, dh, d)
    b_q = dense_bias(att.emb_to_query)
    b_q = torch.zeros(d, dtype=torch.float64) if b_q is None else b_q.detach().double()
    w_uk = dense_weight(att.key_up).detach().double().view(h, dh, r)
    w_down = dense_weight(att.kv_down).detach().double()
    q_lat = att.scaling * torch.einsum("hdr,hdk->hrk", w_uk, w_q).reshape(h * r, d)
    b_lat = att.scaling * torch.einsum("hdr,hd->hr", w_uk, b_q.view(h, dh)).reshape(h * r)
    w_in = torch.cat([q_lat, w_down]).float()
    b_in = torch.cat([b_lat, torch.zeros(r, dtype=torch.float64)]).float()
    w_o = dense_weight(att.out_proj).detach().double().view(d, h, dh)
    w_uv = dense_weight(att.value_up).detach().double().view(h, dh, r)
    w_out = torch.einsum("ehd,hdr->ehr", w_o, w_uv).reshape(d, h * r).float()
    b_out = dense_bias(att.out_proj)
    return w_in, b_in, w_out, None if b_out is None else b_out.detach().float()


class LatentAttention:
    """An ``MLAAttention`` for ``engine.encoder``'s layers: ``(ln (N, T, D), r, cache (N, L', r),
    empty (N, L', 0), mask) -> (attention output (N, T, D), latents (N, K, r), (N, K, 0))``.
    The second cache tensor is empty: there are no values to keep."""

    kind = 1  # emformer_stack's attention kind

    def __init__(self, att: MLAAttention):
        self.heads, self.rank = att.num_heads, att.kv_rank
        self.scaling = att.scaling  # folded into project_in; kept so layers compare as torchaudio's
        w_in, b_in, w_out, b_out = absorbed_weights(att)
        self.project_in = _linear_like(att.out_proj, w_in, b_in)
        self.project_out = _linear_like(att.out_proj, w_out, b_out)
        self.cache_widths = (att.kv_rank, 0)

    def chains(self) -> list:
        """The linears in emformer_stack's order (kind 1): in, then out."""
        return [self.project_in, self.project_out]

    def __call__(self, ln: torch.Tensor, r: int, cache: torch.Tensor, empty: torch.Tensor,
                 mask: torch.Tensor | None):
        n, t, _ = ln.shape
        h, rank = self.heads, self.rank
        q, c = self.project_in(ln).split([h * rank, rank], dim=2)
        c = torch.cat([c[:, :r], cache, c[:, r:]], dim=1)  # [right context, left context, utterance]
        k = c.shape[1]
        weights = torch.bmm(q.reshape(n, t * h, rank), c.transpose(1, 2))  # (N, T*H, K); rows (t, h)
        if mask is not None:  # (N, K) True = unused left-context slot
            weights = weights.masked_fill(mask[:, None, :], -1e8)
        probs = torch.softmax(weights.float(), dim=-1).type_as(weights)
        ctx = torch.bmm(probs, c).view(n, t, h * rank)  # the heads' latent contexts side by side
        return self.project_out(ctx), c, empty.new_zeros(n, k, 0)
