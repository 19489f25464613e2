"""Streaming Emformer transcriber for N streams at once, each with its own history.

Same math as torchaudio's ``RNNT.transcribe_streaming`` (``_EmformerEncoder.infer`` and
``Emformer.infer`` with ``max_memory_size=0``), arranged for speed:
- per layer, the left-context keys/values of all streams sit in one (N, L, D) tensor; the
  keys of a chunk are ``[right context, left context, utterance]`` as in torchaudio. The
  fused stack keeps that tensor as a ring (``EncoderState.head``, its oldest row): a chunk
  writes its S rows in place and attention reads the left context where it lies, so no
  (N, R + L + S, D) concatenation is copied per layer; the Python loop concatenates and
  starts a new tensor (head 0). ``EncoderState.left_context`` gives either in age order;
- each stream has its own history length, so a stream that has seen fewer than L frames
  masks the unused slots (torchaudio's batched ``infer`` takes the first stream's length
  for all), and streams can start and stop independently (``reset``);
- the query and key/value projections run as one matmul (``engine.linear.fuse_linears``);
  fp32 linears use the packed kernel (``engine.linear.fast_linear``), other layers run as they are;
- when every linear of every layer runs in a packed kernel (fp32, fp16 or bf16 weights, or
  the int8 kernel), a low-rank linear as its chain of packed linears, and the FFN activation
  is ReLU, GELU or SiLU, the whole layer stack runs in one C++ call (``emformer_stack`` in
  ``kernels/emformer_stack.cpp``): the same ATen ops in the same order, bit for bit, without
  the interpreter's per-op cost (on ``emformer_base`` about 4 of the 6 ms per chunk outside
  the matmuls, ``scripts/bench_fused.py``).

The MLA surgery's attention runs as ``engine.mla.LatentAttention``: the cache holds each
frame's latent (r floats) instead of its key and value, and the key/value up-projections are
absorbed into the query and output projections. A MoE FFN (``variant=moe``) runs as
``engine.moe.PackedMoE`` (its experts' linears packed, all experts of a layer in one C++
call). Both run in the fused stack too (the MoE's routing in C++, ``moe_ffn``), except while
a MoE has observers (router telemetry): then the Python loop runs, which calls them.
Emformer memory is not supported: use ``StockEncoder`` (``supports`` says which applies).

Shapes: N streams, S utterance frames and R right-context frames per chunk (after time
reduction), L left-context frames, D model width, Hd heads, F feature bins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchaudio.models.emformer import _EmformerAttention, _EmformerLayer

from emformer_variants.engine import linear, packed
from emformer_variants.engine.linear import (
    NO_TENSOR,
    LinearChain,
    fast_linear,
    fuse_linears,
    kernel_args,
    kernel_impl,
    plain_norm,
)
from emformer_variants.engine.mla import LatentAttention
from emformer_variants.engine.moe import PackedMoE
from emformer_variants.surgery.mla import MLAAttention, MLAEmformerLayer


def in_age_order(ring: torch.Tensor, head: int) -> torch.Tensor:
    """A left-context ring (N, L, ·) whose oldest row is at ``head``, oldest row first."""
    return ring.roll(-head, 1) if head else ring


@dataclass
class EncoderState:
    keys: list[torch.Tensor]  # per layer (N, L, D): a ring, its oldest row at ``head``
    values: list[torch.Tensor]
    past: list[int] = field(default_factory=list)  # utterance frames seen, per stream
    head: int = 0  # the slot of the oldest left-context row (the same in every layer and stream)

    def left_context(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s keys and values (N, L, ·) oldest first, as torchaudio's state holds them."""
        return in_age_order(self.keys[layer], self.head), in_age_order(self.values[layer], self.head)

    def nbytes(self, stream: int | None = None) -> int:
        total = sum(t.numel() * t.element_size() for t in self.keys + self.values)
        return total // max(1, len(self.past)) if stream is not None else total


def supports(model: torch.nn.Module) -> bool:
    em = model.transcriber.transformer
    return em.max_memory_size == 0 and all(
        (type(layer) is _EmformerLayer and type(layer.attention) is _EmformerAttention)
        or (type(layer) is MLAEmformerLayer and type(layer.attention) is MLAAttention)
        for layer in em.emformer_layers)


def _activation_code(act: torch.nn.Module) -> int | None:
    if type(act) is torch.nn.ReLU:
        return 0
    if type(act) is torch.nn.GELU:
        return {"none": 1, "tanh": 2}.get(act.approximate)
    return 3 if type(act) is torch.nn.SiLU else None


def _kernel_chain(f) -> list | None:
    """The packed kernels that compute ``f`` one after the other (one for a packed linear, the
    links of a low-rank ``LinearChain``), or None when some part is not a packed kernel."""
    impls = [kernel_impl(link) for link in (f.links if isinstance(f, LinearChain) else [f])]
    return None if None in impls else impls


def _macs(impls: list) -> int:
    """Multiply-adds per row of packed kernels applied one after the other."""
    return sum(impl.in_features * impl.out_features for impl in impls)


@dataclass
class StackArgs:
    """One layer's arguments for ``emformer_stack`` (kernels/emformer_stack.cpp says the layout)."""

    tensors: list[torch.Tensor]  # 3 norms' weight and bias, then 4 per link of every chain
    plan: list[int]  # attention kind, latent size, links of query, key_value, out, ff1, ff2,
    # FFN kind, experts, top-k
    dims: list[int]  # output features per link
    eps: list[float]  # the 3 norms'
    activation: int
    macs_per_row: int  # multiply-adds of the linears per query row


class _Stack:
    """Every layer in one C++ call (``emformer_stack``); same results as ``_Layer`` in a loop."""

    def __init__(self, layers: list[_Layer], args: list[StackArgs]):
        self.params = [t for a in args for t in a.tensors]
        self.plan = [n for a in args for n in a.plan]
        self.dims = [n for a in args for n in a.dims]
        self.eps = [e for a in args for e in a.eps]
        self.activation = args[0].activation
        self.heads, self.scaling = layers[0].heads, layers[0].scaling
        self.flops_per_row = 2 * sum(a.macs_per_row for a in args)
        # attention scores and weighted values per (query row, key): 4 x the width they run at
        self.flops_per_row_key = sum(4 * (la.attention.heads * la.attention.rank if la.attention.kind
                                          else la.attention.cache_widths[0]) for la in layers)
        self.layers = layers
        # the MoE modules whose observers (router telemetry) need the Python loop; read per chunk
        self.moes = [layer.ffn.moe for layer in layers if isinstance(layer.ffn, PackedMoE)]
        # the weights and plan converted to C++ once, not on every chunk
        self.impl = packed.kernel().EmformerStackPlan(self.params, self.plan, self.dims, self.eps, self.heads,
                                                      self.scaling, self.activation)

    def watched(self) -> bool:
        """An observer of a layer's MoE (router telemetry) needs the Python loop."""
        return any(moe.observers for moe in self.moes)

    @classmethod
    def build(cls, layers: list[_Layer]) -> _Stack | None:
        """The stack, or None unless every layer is packed, with one activation, head count
        and scaling."""
        args = [layer.stack_args() for layer in layers]
        if any(a is None for a in args) or len({(la.heads, la.scaling) for la in layers}) != 1 \
                or len({a.activation for a in args}) != 1:
            return None
        return cls(layers, args)

    def __call__(self, x: torch.Tensor, r: int, lo: int, s: int, keys: list[torch.Tensor],
                 values: list[torch.Tensor], head: int, mask: torch.Tensor | None):
        """-> (output (N, R + S, D), keys, values, head) as ``StreamingEncoder.step``'s loop;
        the caches are rings (``EncoderState``) updated in place."""
        left = keys[0].shape[1]
        keys_seen = r + left - lo + s
        per_row = self.flops_per_row + keys_seen * self.flops_per_row_key
        packed.count_flops(x.shape[0] * x.shape[1] * per_row)
        out = packed.call(self.impl.run, x.contiguous(), r, lo, s, head, keys, values, mask,
                          label="emformer_stack")
        n = len(keys)
        return out[0], out[1:1 + n], out[1 + n:], (head + s) % left if left else 0


class _Attention:
    """torchaudio's ``_EmformerAttention``: ``(ln (N, T, D), r, keys, values (N, L', D), mask)
    -> (attention output (N, T, D), all keys, all values (N, R + L' + S, D))``.
    Query and key/value run as one matmul when they can be fused (``fuse_linears``), else as
    two callables (e.g. low-rank chains). Scores, softmax and values run in one pass
    (``kernels/attention.cpp``) where the kernels load, else as torchaudio's reshaped ``bmm``s."""

    kind = 0  # emformer_stack's attention kind

    def __init__(self, att: _EmformerAttention):
        self.query = fuse_linears([att.emb_to_query, att.emb_to_key_value])
        self.key_value = None  # None: ``query`` gives q, k and v at once
        if self.query is None:
            self.query, self.key_value = fast_linear(att.emb_to_query), fast_linear(att.emb_to_key_value)
        self.out_proj = fast_linear(att.out_proj)
        self.heads, self.scaling = att.num_heads, att.scaling
        self.cache_widths = (att.input_dim, att.input_dim)
        self.rank = 0
        # the one-pass attention kernel where the kernels load (emformer_stack uses it too)
        self.one_pass = linear.kernel() is not None

    def chains(self) -> list:
        """The linears in emformer_stack's order: query (or q/k/v), key_value (if apart), out."""
        return [self.query, *([] if self.key_value is None else [self.key_value]), self.out_proj]

    def __call__(self, ln: torch.Tensor, r: int, keys: torch.Tensor, values: torch.Tensor,
                 mask: torch.Tensor | None):
        n, t, d = ln.shape
        hd = self.heads
        if self.key_value is None:
            q, k, v = self.query(ln).split(d, dim=2)
        else:
            q = self.query(ln)
            k, v = self.key_value(ln).split(d, dim=2)
        k = torch.cat([k[:, :r], keys, k[:, r:]], dim=1)
        v = torch.cat([v[:, :r], values, v[:, r:]], dim=1)
        kt = k.shape[1]
        if self.one_pass:  # kernels/attention.cpp: no head reshapes (its work is counted by
            # _Stack only: in this loop the linears may be kernels that count nothing, e.g. fbgemm)
            att = packed.run("stream_attention", q, k, v, mask, hd, self.scaling)
            return self.out_proj(att), k, v
        qh = q.view(n, t, hd, d // hd).transpose(1, 2).reshape(n * hd, t, d // hd)
        kh = k.view(n, kt, hd, d // hd).transpose(1, 2).reshape(n * hd, kt, d // hd)
        vh = v.view(n, kt, hd, d // hd).transpose(1, 2).reshape(n * hd, kt, d // hd)
        weights = torch.bmm(qh * self.scaling, kh.transpose(1, 2))
        if mask is not None:  # (N, Kt) True = unused left-context slot
            weights = weights.view(n, hd, t, kt).masked_fill(mask[:, None, None, :], -1e8)
            weights = weights.view(n * hd, t, kt)
        probs = torch.softmax(weights.float(), dim=-1).type_as(weights)
        att = torch.bmm(probs, vh).view(n, hd, t, d // hd).transpose(1, 2).reshape(n, t, d)
        return self.out_proj(att), k, v


class _Layer:
    def __init__(self, layer: _EmformerLayer):
        self.ln_in, self.ln_out = layer.layer_norm_input, layer.layer_norm_output
        if isinstance(layer.attention, MLAAttention):
            self.attention = LatentAttention(layer.attention)
        else:
            self.attention = _Attention(layer.attention)
        ff = layer.pos_ff
        self.ff_parts = None
        # torchaudio's FFN: norm, linear, activation, dropout, linear, dropout
        if isinstance(ff, torch.nn.Sequential) and len(ff) == 6:
            norm, lin1, act, lin2 = ff[0], fast_linear(ff[1]), ff[2], fast_linear(ff[4])
            self.ffn = lambda x: lin2(act(lin1(norm(x))))
            self.ff_parts = (norm, lin1, act, lin2)
        else:  # a replaced FFN: the MoE's packed form, else (low-rank) the module
            self.ffn = PackedMoE.from_ffn(ff) or ff

    def stack_args(self) -> StackArgs | None:
        """This layer's arguments for the fused C++ stack (``_Stack``), or None when a part of
        it is not a packed linear (or a chain of them), an affine LayerNorm over the last dim or
        a ReLU/GELU/SiLU (e.g. a precision without kernel, a low-rank FFN run as a module)."""
        att_chains = [_kernel_chain(f) for f in self.attention.chains()]
        if self.ff_parts is not None:  # torchaudio's FFN
            norm, lin1, act, lin2 = self.ff_parts
            ffn_chains = [_kernel_chain(lin1), _kernel_chain(lin2)]
            ffn_plan, router = [0, 0, 0], []
        elif isinstance(self.ffn, PackedMoE):  # router and experts: kernels/moe_experts.cpp
            moe = self.ffn
            norm, act = moe.norm, moe.activation
            experts = [kernel_impl(lin) for pair in moe.experts for lin in pair]
            ffn_chains = [None if None in experts else experts]
            ffn_plan = [1, len(moe.experts), moe.top_k]
            bias = NO_TENSOR if moe.router_bias is None else moe.router_bias
            router = [moe.router_weight, bias]
        else:
            return None
        chains = att_chains + ffn_chains
        norms = [self.ln_in, norm, self.ln_out]
        code = _activation_code(act)
        if None in chains or code is None or not all(plain_norm(m) for m in norms):
            return None
        links = [len(c) for c in att_chains]
        if len(att_chains) == 2:  # q/k/v in one chain: no key_value chain
            links.insert(1, 0)
        links += [len(c) for c in ffn_chains] if ffn_plan[0] == 0 else [0, 0]
        tensors = [t.detach() for m in norms for t in (m.weight, m.bias)]
        tensors += [t for c in att_chains for impl in c for t in kernel_args(impl)]
        tensors += router + [t for c in ffn_chains for impl in c for t in kernel_args(impl)]
        macs_per_row = sum(_macs(c) for c in att_chains)
        if ffn_plan[0] == 0:
            macs_per_row += sum(_macs(c) for c in ffn_chains)
        else:  # the router, and top-k experts (all of one size) per row
            macs_per_row += router[0].numel() + ffn_plan[2] * _macs(ffn_chains[0][:2])
        return StackArgs(tensors, [self.attention.kind, self.attention.rank, *links, *ffn_plan],
                         [impl.out_features for c in chains for impl in c], [float(m.eps) for m in norms],
                         code, macs_per_row)

    @property
    def heads(self) -> int:
        return self.attention.heads

    @property
    def scaling(self) -> float:
        return self.attention.scaling

    def __call__(self, x: torch.Tensor, r: int, keys: torch.Tensor, values: torch.Tensor,
                 mask: torch.Tensor | None):
        """x (N, R + S, D) rows [right context, utterance]; keys/values (N, L', ·) left-context
        cache -> (output (N, R + S, D), all keys, all values (N, R + L' + S, ·))."""
        att, k, v = self.attention(self.ln_in(x), r, keys, values, mask)
        y = att + x
        y = self.ffn(y) + y
        return self.ln_out(y), k, v


class StreamingEncoder:
    """``step(features (N, T_in, F), state) -> (encodings (N, S, D_out), state)``."""

    name = "engine"

    def __init__(self, model: torch.nn.Module, fused: bool = True):
        if not supports(model):
            raise ValueError("StreamingEncoder needs torchaudio Emformer layers without memory")
        tr = model.transcriber
        em = tr.transformer
        self.input_linear = fast_linear(tr.input_linear)
        self.stride = tr.time_reduction.stride
        self.segment, self.right = em.segment_length, em.right_context_length
        self.left = em.left_context_length
        self.layers = [_Layer(layer) for layer in em.emformer_layers]
        self.stack = _Stack.build(self.layers) if fused else None  # None: a Python loop over layers
        self.output_linear = fast_linear(tr.output_linear)
        self.out_norm = tr.layer_norm

    def init(self, n: int) -> EncoderState:
        widths = [layer.attention.cache_widths for layer in self.layers]
        keys = [torch.zeros(n, self.left, wk) for wk, _ in widths]
        values = [torch.zeros(n, self.left, wv) for _, wv in widths]
        return EncoderState(keys, values, [0] * n)

    def reset(self, state: EncoderState, stream: int) -> None:
        """Start a new utterance in ``stream`` (its old history is masked from now on)."""
        state.past[stream] = 0

    def _loop(self, x: torch.Tensor, r: int, lo: int, s: int, keys_old: list[torch.Tensor],
              values_old: list[torch.Tensor], head: int, mask: torch.Tensor | None):
        """The layers one by one in Python: what ``_Stack`` does in one C++ call. New caches
        in age order (head 0)."""
        left = self.left
        keys_old = [in_age_order(k, head) for k in keys_old]
        values_old = [in_age_order(v, head) for v in values_old]
        keys, values = [], []
        for layer, k_old, v_old in zip(self.layers, keys_old, values_old, strict=True):
            x, k, v = layer(x, r, k_old[:, lo:], v_old[:, lo:], mask)
            # next left context: the last L rows of [old left context, this utterance]
            keys.append(k[:, -left:] if s >= lo else torch.cat([k_old[:, s:], k[:, -s:]], dim=1))
            values.append(v[:, -left:] if s >= lo else torch.cat([v_old[:, s:], v[:, -s:]], dim=1))
        return x, keys, values, 0

    @torch.inference_mode()
    def step(self, feats: torch.Tensor, state: EncoderState) -> tuple[torch.Tensor, EncoderState]:
        n, t_in, _ = feats.shape
        s, r, left = self.segment, self.right, self.left
        x = self.input_linear(feats)
        frames = (t_in - t_in % self.stride) // self.stride
        x = x[:, :frames * self.stride].reshape(n, frames, -1)
        if frames != s + r:
            raise ValueError(f"chunk of {t_in} feature frames gives {frames} frames; expected {s + r}")
        x = torch.cat([x[:, s:], x[:, :s]], dim=1)  # [right context, utterance]
        valid = [min(left, p) for p in state.past]
        lo = left - max(valid)
        mask = None
        if min(valid) < max(valid):  # streams with different histories
            cols = torch.arange(r + left - lo + s)
            start = torch.tensor([r + (left - v) - lo for v in valid])
            mask = (cols[None, :] >= r) & (cols[None, :] < start[:, None])
        run = self._loop if self.stack is None or self.stack.watched() else self.stack
        x, keys, values, head = run(x, r, lo, s, state.keys, state.values, state.head, mask)
        out = self.out_norm(self.output_linear(x[:, r:]))
        return out, EncoderState(keys, values, [p + s for p in state.past], head)
