"""variant=mla: multi-head latent attention for the Emformer's streaming cache.

DeepSeek-V2 (arXiv:2405.04434) caches one low-rank latent per frame instead of every
head's key and value; TransMLA (arXiv:2502.07864) and MHA2MLA (arXiv:2502.14837) turn a
trained MHA model into MLA post hoc. Here the joint projection ``emb_to_key_value``
(Linear(D, 2D) with bias) of each Emformer layer becomes ``kv_down`` (D -> r) and
``key_up`` / ``value_up`` (r -> D), from the truncated SVD of the stacked weight
[W_k; W_v] = U S V^T: kv_down = S_r^1/2 V_r^T, [key_up; value_up] = U_r S_r^1/2. The
streaming state then holds the latent c (r floats per left-context frame) instead of K
and V (2D floats), a 2D/r smaller cache.

Biases are handled exactly, not approximated:
- key bias b_k adds q.b_k to every logit of a query row; softmax is shift-invariant and
  masked logits are *replaced* by ``negative_inf`` (not shifted), so it cancels: dropped.
- value bias b_v: every attention row sums to 1 (softmax over keys, also for rows whose
  keys are partly masked), so out_proj(P (V + 1 b_v^T)) = out_proj(P V) + W_o b_v: it is
  folded into ``out_proj.bias``. In training mode attention-probability dropout makes
  the row sums random with mean 1, so there it holds in expectation only.

Absorbed inference (``absorb=True``, DeepSeek-V2 sec. 2.1.2): scores are
(q_h W_uk,h) . c_j and the value up-projection is folded into the output projection
(W_o,h W_uv,h), so attention runs on the latent cache without expanding it to K/V.

Shapes: T frames (query rows: right context + utterance + summary), K key frames
(memory + right context + left context + utterance), B batch, D model dim, H heads,
Dh = D / H head dim, r latent rank, L left-context frames cached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchaudio.models.emformer import _EmformerLayer, _gen_padding_mask

from emformer_variants.errors import UserError
from emformer_variants.metrics.flops import analytic_emformer_rnnt_flops
from emformer_variants.surgery.registry import Surgery, SurgeryReport, register_surgery
from emformer_variants.surgery.swap import swap_modules_
from emformer_variants.surgery.weights import dense_bias, dense_weight, is_trainable


@dataclass(frozen=True)
class MLAConfig:
    """``kv_rank``: latent size r per frame (1..D); when it is None, ``kv_rank_ratio`` in
    (0, 1] gives r = round(ratio * D) (at least 1). A set ``kv_rank`` wins over the ratio.
    ``layers``: Emformer layer indices to convert (None = all).
    ``absorb``: streaming ``infer`` uses the absorbed-weight path (same function)."""

    kv_rank: int | None = None
    kv_rank_ratio: float | None = None
    layers: Sequence[int] | None = None
    absorb: bool = False

    def __post_init__(self):
        if self.kv_rank is None and self.kv_rank_ratio is None:
            raise ValueError("set kv_rank (latent size per frame) or kv_rank_ratio (fraction of "
                             "the model width); both are null")
        if self.kv_rank is not None and (isinstance(self.kv_rank, bool) or not isinstance(self.kv_rank, int)
                                         or self.kv_rank < 1):
            raise ValueError(f"kv_rank={self.kv_rank!r} must be a positive integer")
        if self.kv_rank_ratio is not None:
            if isinstance(self.kv_rank_ratio, bool) or not isinstance(self.kv_rank_ratio, int | float) \
                    or not 0 < self.kv_rank_ratio <= 1:
                raise ValueError(f"kv_rank_ratio={self.kv_rank_ratio!r} must be a number in (0, 1]")
        if not isinstance(self.absorb, bool):
            raise ValueError(f"absorb={self.absorb!r} must be true or false")
        if self.layers is not None:
            if isinstance(self.layers, str | bytes) or not isinstance(self.layers, Sequence):
                raise ValueError(f"layers={self.layers!r} must be a list of layer indices or null")
            layers = tuple(self.layers)
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
                raise ValueError(f"layers={list(layers)} must be a non-empty list of layer indices >= 0")
            if len(set(layers)) != len(layers):
                raise ValueError(f"layers={list(layers)} has duplicates")
            object.__setattr__(self, "layers", layers)  # hashable, and a Hydra ListConfig no more

    def rank_for(self, model_dim: int) -> int:
        """The latent size r for a model of width D (not checked against D)."""
        if self.kv_rank is not None:
            return self.kv_rank
        return max(1, round(self.kv_rank_ratio * model_dim))


class MLAAttention(torch.nn.Module):
    """Drop-in for torchaudio's ``_EmformerAttention`` whose keys/values come from a latent.

    Same ``forward`` (training, full utterance); ``infer`` takes and returns the
    left-context *latent* (L, B, r) instead of left-context keys and values.
    Parameters: ``emb_to_query``, ``out_proj`` (names as in the base), ``kv_down``
    (D -> r), ``key_up`` and ``value_up`` (r -> D), all without bias except the first two.
    """

    def __init__(self, input_dim: int, num_heads: int, kv_rank: int, dropout: float = 0.0,
                 tanh_on_mem: bool = False, negative_inf: float = -1e8, absorb: bool = False,
                 device=None, dtype=None):
        super().__init__()
        if input_dim % num_heads:
            raise ValueError(f"input_dim ({input_dim}) is not a multiple of num_heads ({num_heads})")
        self.input_dim, self.num_heads, self.kv_rank = input_dim, num_heads, kv_rank
        self.dropout, self.tanh_on_mem, self.negative_inf = dropout, tanh_on_mem, negative_inf
        self.absorb = absorb
        self.scaling = (input_dim // num_heads) ** -0.5
        kw = {"device": device, "dtype": dtype}
        # skip_init: values come from from_attention (SVD) or from a checkpoint.
        self.emb_to_query = torch.nn.utils.skip_init(torch.nn.Linear, input_dim, input_dim, **kw)
        self.kv_down = torch.nn.utils.skip_init(torch.nn.Linear, input_dim, kv_rank, bias=False, **kw)
        self.key_up = torch.nn.utils.skip_init(torch.nn.Linear, kv_rank, input_dim, bias=False, **kw)
        self.value_up = torch.nn.utils.skip_init(torch.nn.Linear, kv_rank, input_dim, bias=False, **kw)
        self.out_proj = torch.nn.utils.skip_init(torch.nn.Linear, input_dim, input_dim, **kw)
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()
        self._absorbed_cache: tuple[tuple, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, kv_rank={self.kv_rank}, absorb={self.absorb}"

    @classmethod
    def from_attention(cls, attn: torch.nn.Module, kv_rank: int, absorb: bool = False,
                       init: str = "convert") -> MLAAttention:
        """Build from a torchaudio ``_EmformerAttention``. ``init="convert"``: SVD factors
        of its ``emb_to_key_value`` (exact when kv_rank = D); ``"empty"``: shapes only."""
        kv = attn.emb_to_key_value
        d = attn.input_dim
        new = cls(d, attn.num_heads, kv_rank, dropout=attn.dropout, tanh_on_mem=attn.tanh_on_mem,
                  negative_inf=attn.negative_inf, absorb=absorb,
                  device=kv.weight.device, dtype=kv.weight.dtype)
        new.train(attn.training)
        if init == "empty":
            return new
        with torch.no_grad():
            w = kv.weight.double()  # (2D, D) = [W_k; W_v]
            u, s, vh = torch.linalg.svd(w, full_matrices=False)  # u (2D, D), s (D,), vh (D, D)
            root = s[:kv_rank].sqrt()
            down = root[:, None] * vh[:kv_rank]  # (r, D)
            up = u[:, :kv_rank] * root  # (2D, r)
            new.kv_down.weight.copy_(down)
            new.key_up.weight.copy_(up[:d])
            new.value_up.weight.copy_(up[d:])
            new.emb_to_query.weight.copy_(attn.emb_to_query.weight)
            new.emb_to_query.bias.copy_(attn.emb_to_query.bias)
            new.out_proj.weight.copy_(attn.out_proj.weight)
            b_v = kv.bias[d:].double() if kv.bias is not None else torch.zeros_like(w[d:, 0])
            out_bias = attn.out_proj.bias.double() if attn.out_proj.bias is not None else 0.0
            new.out_proj.bias.copy_(out_bias + attn.out_proj.weight.double() @ b_v)
        return new

    # ------------------------------------------------------------------ attention

    def _probs(self, weights: torch.Tensor, attention_mask: torch.Tensor,
               padding_mask: torch.Tensor | None) -> torch.Tensor:
        """(B*H, T, K) logits -> probabilities, exactly as ``_EmformerAttention``."""
        w = weights.float().masked_fill(attention_mask.unsqueeze(0), self.negative_inf)
        t = weights.size(1)
        b = weights.size(0) // self.num_heads
        if padding_mask is not None:
            w = w.view(b, self.num_heads, t, -1).masked_fill(
                padding_mask.unsqueeze(1).unsqueeze(2).to(torch.bool), self.negative_inf
            ).view(b * self.num_heads, t, -1)
        probs = torch.nn.functional.softmax(w, dim=-1).type_as(weights)
        return torch.nn.functional.dropout(probs, p=float(self.dropout), training=self.training)

    def _attend_plain(self, query, latent, attention_mask, padding_mask) -> torch.Tensor:
        """Expand the latent (K, B, r) to K and V, then torchaudio's attention. -> (T, B, D)"""
        t, b, d = query.shape
        h, dh = self.num_heads, d // self.num_heads
        key, value = self.key_up(latent), self.value_up(latent)
        q, k, v = (x.contiguous().view(-1, b * h, dh).transpose(0, 1) for x in (query, key, value))
        probs = self._probs(torch.bmm(q * self.scaling, k.transpose(1, 2)), attention_mask, padding_mask)
        attention = torch.bmm(probs, v)  # (B*H, T, Dh)
        return self.out_proj(attention.transpose(0, 1).contiguous().view(t, b, d))

    def absorbed_output_weight(self) -> torch.Tensor:
        """W_o,h W_uv,h for every head, side by side: (D, H*r). Cached while the weights
        are unchanged (parameter version counters, or for linears converted for inference
        by ``engine.precision``, whose weights are fixed, the modules themselves) and no
        gradient is wanted."""
        h, d, r = self.num_heads, self.input_dim, self.kv_rank
        w_o, w_uv = dense_weight(self.out_proj), dense_weight(self.value_up)
        if is_trainable(self.out_proj) and is_trainable(self.value_up):
            key = (w_o.data_ptr(), w_o._version, w_uv.data_ptr(), w_uv._version, w_o.dtype, w_o.device)
        else:
            key = (id(self.out_proj), id(self.value_up))
        if torch.is_grad_enabled() or self._absorbed_cache is None or self._absorbed_cache[0] != key:
            fused = torch.einsum("ehd,hdr->ehr", w_o.view(d, h, d // h), w_uv.view(h, d // h, r))
            fused = fused.reshape(d, h * r)
            if torch.is_grad_enabled():
                return fused
            self._absorbed_cache = (key, fused)
        return self._absorbed_cache[1]

    def _attend_absorbed(self, query, latent, attention_mask, padding_mask) -> torch.Tensor:
        """Attention on the latent (K, B, r) itself: scores (q_h W_uk,h) . c, output
        (W_o,h W_uv,h) (P_h c). -> (T, B, D)"""
        t, b, d = query.shape
        h, dh, r = self.num_heads, d // self.num_heads, self.kv_rank
        q = (query * self.scaling).view(t, b, h, dh)
        q_lat = torch.einsum("tbhd,hdr->bhtr", q, dense_weight(self.key_up).view(h, dh, r))
        c = latent.transpose(0, 1)  # (B, K, r), shared by all heads
        weights = torch.einsum("bhtr,bkr->bhtk", q_lat, c).reshape(b * h, t, -1)
        probs = self._probs(weights, attention_mask, padding_mask).view(b, h, t, -1)
        ctx = torch.einsum("bhtk,bkr->tbhr", probs, c).reshape(t, b, h * r)
        return torch.nn.functional.linear(ctx, self.absorbed_output_weight(), dense_bias(self.out_proj))

    def _forward_impl(self, utterance, lengths, right_context, summary, mems, attention_mask,
                      left_context_latent: torch.Tensor | None = None, absorb: bool = False):
        """As ``_EmformerAttention._forward_impl``; returns (output (R+U, B, D), output
        mems (S, B, D), latent of [mems, right context, left context, utterance])."""
        t = right_context.size(0) + utterance.size(0) + summary.size(0)
        query = self.emb_to_query(torch.cat([right_context, utterance, summary]))
        latent = self.kv_down(torch.cat([mems, right_context, utterance]))  # (M+R+U, B, r)
        if left_context_latent is not None:
            rc_blocks = t - torch.max(lengths).int() - summary.size(0)
            split = mems.size(0) + rc_blocks
            latent = torch.cat([latent[:split], left_context_latent, latent[split:]])
        padding_mask = _gen_padding_mask(utterance, right_context, summary, lengths, mems,
                                         left_context_latent)
        attend = self._attend_absorbed if absorb else self._attend_plain
        out = attend(query, latent, attention_mask, padding_mask)
        s = summary.size(0)
        output, output_mems = out[: t - s], out[t - s:]
        output_mems = torch.tanh(output_mems) if self.tanh_on_mem else torch.clamp(output_mems, -10, 10)
        return output, output_mems, latent

    def forward(self, utterance, lengths, right_context, summary, mems, attention_mask):
        """Training / full-utterance pass (always the plain path)."""
        output, output_mems, _ = self._forward_impl(utterance, lengths, right_context, summary, mems,
                                                    attention_mask)
        return output, output_mems[:-1]

    def infer(self, utterance, lengths, right_context, summary, mems, left_context_latent):
        """Streaming step. left_context_latent (L', B, r) -> (output (R+U, B, D),
        output mems (S, B, D), latent of [left context, utterance] (L'+U, B, r))."""
        query_dim = right_context.size(0) + utterance.size(0) + summary.size(0)
        key_dim = right_context.size(0) + utterance.size(0) + mems.size(0) + left_context_latent.size(0)
        attention_mask = torch.zeros(query_dim, key_dim, dtype=torch.bool, device=utterance.device)
        attention_mask[-1, : mems.size(0)] = True  # the summary query does not see the memory
        output, output_mems, latent = self._forward_impl(
            utterance, lengths, right_context, summary, mems, attention_mask,
            left_context_latent=left_context_latent, absorb=self.absorb)
        return output, output_mems, latent[mems.size(0) + right_context.size(0):]


class MLAEmformerLayer(_EmformerLayer):
    """``_EmformerLayer`` whose streaming state caches the attention latent.

    State per layer: ``[memory (M, B, D), left-context latent (L, B, r), past_length
    (1, B) int32]`` instead of torchaudio's ``[memory, key (L, B, D), value (L, B, D),
    past_length]``. Submodules other than ``attention`` are the old layer's own modules,
    so parameter names (and any other surgery on them) are kept.
    """

    @classmethod
    def from_layer(cls, layer: _EmformerLayer, attention: MLAAttention) -> MLAEmformerLayer:
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        for name, child in layer.named_children():  # same registration order as the base
            setattr(new, name, attention if name == "attention" else child)
        for name in ("left_context_length", "segment_length", "max_memory_size", "input_dim", "use_mem"):
            setattr(new, name, getattr(layer, name))
        new.train(layer.training)
        return new

    def _init_state(self, batch_size: int, device: torch.device | None) -> list[torch.Tensor]:
        return [
            torch.zeros(self.max_memory_size, batch_size, self.input_dim, device=device),
            torch.zeros(self.left_context_length, batch_size, self.attention.kv_rank, device=device),
            torch.zeros(1, batch_size, dtype=torch.int32, device=device),
        ]

    def _unpack_state(self, state: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        past_length = state[2][0][0].item()
        past_lc = min(self.left_context_length, past_length)
        past_mem = min(self.max_memory_size, math.ceil(past_length / self.segment_length))
        return state[0][self.max_memory_size - past_mem:], state[1][self.left_context_length - past_lc:]

    def _pack_state(self, next_latent: torch.Tensor, update_length: int, mems: torch.Tensor,
                    state: list[torch.Tensor]) -> list[torch.Tensor]:
        latent = torch.cat([state[1], next_latent])
        # clone: the cache owns only its L frames (a slice would pin the whole concat).
        latent = latent[latent.shape[0] - self.left_context_length:].clone()
        memory = torch.cat([state[0], mems])[-self.max_memory_size:]
        return [memory, latent, state[2] + update_length]

    def _apply_attention_infer(self, utterance, lengths, right_context, mems, state):
        if state is None:
            state = self._init_state(utterance.size(1), device=utterance.device)
        pre_mems, lc_latent = self._unpack_state(state)
        if self.use_mem:
            summary = self.memory_op(utterance.permute(1, 2, 0)).permute(2, 0, 1)[:1]
        else:
            summary = torch.empty(0).to(dtype=utterance.dtype, device=utterance.device)
        rc_output, next_m, next_latent = self.attention.infer(
            utterance=utterance, lengths=lengths, right_context=right_context, summary=summary,
            mems=pre_mems, left_context_latent=lc_latent)
        return rc_output, next_m, self._pack_state(next_latent, utterance.size(0), mems, state)


# ---------------------------------------------------------------------- FLOPs

def _linear(rows: int, d_in: int, d_out: int) -> int:
    return 2 * rows * d_in * d_out


def analytic_encoder_flops_delta(arch: dict, config: MLAConfig, *, chunk_index: int | None = None) -> int:
    """Change in encoder FLOPs of one streaming chunk (``transcriber.infer``, batch 1) that
    ``config`` causes vs. ``analytic_emformer_rnnt_flops(arch, chunk_index=...)["encoder"]``.

    Per converted layer (Q = R+S+summary query rows, N = M+R+S new frames, K = M+R+L+S keys):
    base K/V projection 2*N*D*2D becomes, plain: 2*N*D*r (down) + 2*K*r*2D (up-project
    every key, cached latents included); absorbed: 2*N*D*r + 2*Q*D*r (q W_uk), and the
    scores/probs@V bmm cost 4*Q*K*H*r instead of 4*Q*K*D, the output projection
    2*Q*H*r*D instead of 2*Q*D*D (W_o W_uv is computed once, not per chunk).
    """
    stride = arch["time_reduction_stride"]
    d = arch["time_reduction_input_dim"] * stride
    h = arch["transformer_num_heads"]
    r = config.rank_for(d)
    n_layers = len(config.layers) if config.layers is not None else arch["transformer_num_layers"]
    seg = arch["segment_length"] // stride
    rc = arch["right_context_length"] // stride
    lc, max_mem = arch["transformer_left_context_length"], arch["transformer_max_memory_size"]
    if chunk_index is None:
        cached_lc, mems = lc, max_mem
    else:
        past = chunk_index * seg
        cached_lc, mems = min(lc, past), min(max_mem, math.ceil(past / seg))
    queries = rc + seg + (1 if max_mem > 0 else 0)
    new_frames = mems + rc + seg
    keys = mems + rc + cached_lc + seg
    base = _linear(new_frames, d, 2 * d)
    if config.absorb:
        after = (_linear(new_frames, d, r) + _linear(queries, d, r)
                 + 4 * queries * keys * h * r - 4 * queries * keys * d
                 + _linear(queries, h * r, d) - _linear(queries, d, d))
    else:
        after = _linear(new_frames, d, r) + _linear(keys, r, 2 * d)
    return n_layers * (after - base)


# ---------------------------------------------------------------------- surgery

def apply_mla_(rec, config: MLAConfig, init: str = "convert", calibration=None) -> SurgeryReport:
    """Replace the chosen Emformer layers by ``MLAEmformerLayer`` with ``MLAAttention``."""
    if init not in ("convert", "empty"):
        raise ValueError(f"init={init!r}: expected 'convert' or 'empty'")
    layers = rec.model.transcriber.transformer.emformer_layers
    d = layers[0].input_dim
    r = config.rank_for(d)
    # Model-dependent checks first: nothing changes unless all of them pass.
    if r > d:
        raise UserError(f"variant.kv_rank={r} is larger than the maximum {d} (the model width D: "
                        f"the rank of the stacked 2D x D key/value weight); use kv_rank <= {d}")
    indices = list(range(len(layers))) if config.layers is None else list(config.layers)
    bad = [i for i in indices if i >= len(layers)]
    if bad:
        raise UserError(f"variant.layers={list(config.layers)}: {bad} out of range, the model has "
                        f"{len(layers)} Emformer layers (0..{len(layers) - 1})")
    for i in indices:
        kv = getattr(layers[i].attention, "emb_to_key_value", None)
        if isinstance(layers[i], MLAEmformerLayer) or type(kv) is not torch.nn.Linear:
            raise UserError(f"variant.layers: Emformer layer {i} has no dense emb_to_key_value Linear "
                            f"(found {type(layers[i].attention).__name__}); apply mla before any "
                            "surgery that replaces it, and only once")

    new_layers = {i: MLAEmformerLayer.from_layer(
        layers[i], MLAAttention.from_attention(layers[i].attention, r, config.absorb, init=init))
        for i in indices}
    energy = {}
    if init == "convert":
        for i in new_layers:
            s = torch.linalg.svdvals(layers[i].attention.emb_to_key_value.weight.detach().double())
            energy[i] = float((s[:r] ** 2).sum() / (s ** 2).sum())
    swap_modules_(layers, {str(i): layer for i, layer in new_layers.items()})

    flops_before = analytic_emformer_rnnt_flops(rec.arch)["encoder"]
    return SurgeryReport(
        name="mla",
        replaced=[f"model.transcriber.transformer.emformer_layers.{i}" for i in indices],
        extra={
            "kv_rank": r,
            "model_dim": d,
            "absorb": config.absorb,
            # floats cached per left-context frame per converted layer
            "lc_cache_floats_per_frame_before": 2 * d,
            "lc_cache_floats_per_frame_after": r,
            "svd_energy_kept": energy,  # per layer: sum of kept s^2 / total (convert only)
            "encoder_flops_per_chunk_before": flops_before,
            "encoder_flops_per_chunk_after": flops_before + analytic_encoder_flops_delta(rec.arch, config),
        },
    )


register_surgery(Surgery(
    name="mla", config=MLAConfig, apply=apply_mla_,
    flops_delta=lambda arch, config, chunk_index: analytic_encoder_flops_delta(arch, config,
                                                                               chunk_index=chunk_index),
    touches=lambda config: {"attention"},
    resolved_fields=frozenset({"kv_rank"}),
))
