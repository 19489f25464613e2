"""MoE FFNs (``variant=moe``) in the engine: each expert's two linears as packed kernels.

- ``LinearExpertsFeedForward``: the MoE with each expert held as two ``nn.Linear`` modules
  instead of the stacked ``w1``/``b1``/``w2``/``b2`` tensors, so that ``engine.precision``,
  which converts ``nn.Linear`` modules, converts the experts too (fp16/bf16 weights, int8).
  Same routing and combination (``surgery.moe.combine``); torchaudio's pipeline runs it as a
  module.
- ``PackedMoE``: the FFN ``Sequential(LayerNorm, MoE, Dropout)`` as a plain callable for the
  encoder: the norm, the router (the module's own fp32 ``F.linear``, so the same experts are
  picked), then ``combine`` with every expert's linears through ``engine.linear.fast_linear``
  (the packed kernel at every precision); when all of them are packed kernels, the experts run
  in one C++ call (``kernels/moe_experts.cpp``), bit for bit the Python loop over experts.
  Router telemetry (``surgery.moe.RouterTelemetry``) is kept: when the module has observers,
  its telemetry is set and they are called (``forward`` hooks are not: the module's
  ``forward`` does not run).

A MoE FFN reads the weights of every expert that got a row: with 5 rows per stream and chunk
(``emformer_base``) and top-2 of 8, about 6 experts per layer, so at one stream its
bytes, and so its time, are above the dense FFN's; with many streams it does fewer
multiply-adds than the dense FFN (``scripts/bench_moe.py``, docs/engine.md).

Shapes: N rows, D model width, H expert width, E experts, K active experts per row.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from emformer_variants.engine import packed
from emformer_variants.engine.linear import fast_linear, kernel_args, kernel_impl
from emformer_variants.surgery.moe import RoutedFeedForward, combine, per_expert
from emformer_variants.surgery.swap import swap_modules_
from emformer_variants.surgery.weights import dense_bias, dense_weight


class LinearExpertsFeedForward(RoutedFeedForward):
    """A ``RoutedFeedForward`` whose expert e is ``down[e](act(up[e](x)))`` (inference)."""

    @classmethod
    def from_moe(cls, moe: RoutedFeedForward) -> LinearExpertsFeedForward:
        """The same function as ``moe``, router and activation shared, expert weights copied."""
        new = cls(moe.d_model, moe.d_ff, moe.num_experts, moe.top_k, moe.activation,
                  moe.dropout.p, moe.aux_loss_weight, moe.z_loss_weight, moe.router_jitter)
        new.router = moe.router
        pairs = moe.expert_linears()
        new.up = nn.ModuleList(u for u, _ in pairs)
        new.down = nn.ModuleList(d for _, d in pairs)
        new.layer_index = moe.layer_index
        return new.train(moe.training)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return self.down[e](self.dropout(self.activation(self.up[e](x))))

    def expert_linears(self) -> list[tuple[nn.Module, nn.Module]]:
        return list(zip(self.up, self.down, strict=True))

    def expert_param_count(self) -> int:
        return sum(p.numel() for m in (self.up[0], self.down[0]) for p in m.parameters())


def split_experts_(model: nn.Module) -> int:
    """Every MoE FFN with stacked experts becomes a ``LinearExpertsFeedForward``; returns how many."""
    new = {name: LinearExpertsFeedForward.from_moe(m) for name, m in model.named_modules()
           if isinstance(m, RoutedFeedForward) and not isinstance(m, LinearExpertsFeedForward)}
    return len(swap_modules_(model, new))


class PackedMoE:
    """``Sequential(LayerNorm, RoutedFeedForward, Dropout)`` in eval mode as a callable:
    (..., D) -> (..., D)."""

    def __init__(self, norm: nn.Module, moe: RoutedFeedForward):
        self.norm, self.moe = norm, moe
        self.top_k, self.width = moe.top_k, moe.d_model
        bias = dense_bias(moe.router)
        self.router_weight = dense_weight(moe.router).detach().float()
        self.router_bias = None if bias is None else bias.detach().float()
        self.experts = [(fast_linear(u), fast_linear(d)) for u, d in moe.expert_linears()]
        self.activation = moe.activation
        self.run = self._fused_run() or per_expert(self.expert)

    def _fused_run(self):
        """Every expert in one C++ call (``kernels/moe_experts.cpp``, the same kernels and
        activation in the same order as ``per_expert(self.expert)``), or None unless every
        expert linear is a packed kernel and the activation is ReLU, GELU or SiLU."""
        from emformer_variants.engine.encoder import _activation_code

        impls = [kernel_impl(lin) for pair in self.experts for lin in pair]
        code = _activation_code(self.activation)
        if None in impls or code is None:
            return None
        params = [t for impl in impls for t in kernel_args(impl)]
        hidden = [impl.out_features for impl in impls[0::2]]
        out_dim = impls[1].out_features
        macs = [up.in_features * up.out_features + down.in_features * down.out_features
                for up, down in zip(impls[0::2], impls[1::2], strict=True)]

        def run(grouped: torch.Tensor, sizes: list[int]) -> torch.Tensor:
            packed.count_flops(2 * sum(n * m for n, m in zip(sizes, macs, strict=True)))
            return packed.run("moe_experts", grouped, sizes, params, hidden, out_dim, code)
        return run

    @classmethod
    def from_ffn(cls, ff: nn.Module) -> PackedMoE | None:
        """The packed form of an FFN made by ``variant=moe``, or None for any other module."""
        if not (isinstance(ff, nn.Sequential) and len(ff) == 3 and isinstance(ff[1], RoutedFeedForward)
                and isinstance(ff[0], nn.LayerNorm) and isinstance(ff[2], nn.Dropout)):
            return None
        return cls(ff[0], ff[1])

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        up, down = self.experts[e]
        return down(self.activation(up(x)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = self.norm(x).reshape(-1, self.width)
        if h.shape[0] == 0:
            return x.new_zeros(shape)
        logits = F.linear(h, self.router_weight, self.router_bias)
        out, probs, counts = combine(h, logits, self.top_k, self.run)
        moe = self.moe
        if moe.observers:  # someone watches the module (RouterTelemetry): as its forward would
            moe.record(probs, logits, counts)
        return out.reshape(shape)
