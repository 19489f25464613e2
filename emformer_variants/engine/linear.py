"""Linear layers for the inference engine.

The engine multiplies small batches (M = 1-20 rows: a beam of hypotheses, one chunk of
frames). For a large fp32 weight with a long reduction (e.g. the base joiner, 1024 ->
4097), oneDNN's ``mkldnn::_linear_pointwise`` runs such batches 1.4-1.9x faster than
``F.linear`` (MKL) on this CPU; for smaller weights MKL is as fast or faster and has less
call overhead. Results agree to fp32 rounding, not bit for bit. (MKL's pre-packed
``mkl::_mkl_linear`` only uses its packed weight when M equals the batch size it was
packed for and otherwise falls back to ``F.linear``, so it does not help a varying beam.)
Any other module (a dynamically quantised int8 or fp16 linear, a bf16 cast linear, a
low-rank or MoE layer) is called as it is.

Shapes: (..., K) -> (..., N).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

ONEDNN_MIN_IN = 1024
ONEDNN_MIN_NUMEL = 1 << 20

_ONEDNN: bool | None = None


def onednn_available() -> bool:
    global _ONEDNN
    if _ONEDNN is None:
        try:
            torch.ops.mkldnn._linear_pointwise(torch.zeros(1, 2), torch.zeros(2, 2), None, "none", [], "")
            _ONEDNN = True
        except (AttributeError, RuntimeError):
            _ONEDNN = False
    return _ONEDNN


class PlainLinear:
    """``F.linear`` with detached parameters, as a plain callable."""

    def __init__(self, linear: torch.nn.Linear):
        self.weight = linear.weight.detach()
        self.bias = None if linear.bias is None else linear.bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class OneDNNLinear(PlainLinear):
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), self.weight, self.bias,
                                               "none", [], "")
        return y.reshape(*x.shape[:-1], y.shape[-1])


def fast_linear(module: torch.nn.Module):
    """A callable computing ``module(x)`` for the engine's small batches."""
    if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32:
        big = module.in_features >= ONEDNN_MIN_IN and module.weight.numel() >= ONEDNN_MIN_NUMEL
        return OneDNNLinear(module) if big and onednn_available() else PlainLinear(module)
    return module


def fuse_linears(modules: list[torch.nn.Module]):
    """One callable computing ``cat([m(x) for m in modules], -1)`` with a single matmul, or
    None when the modules cannot be fused exactly (different types, per-tensor int8).

    fp32 and bf16 linears concatenate their weights; dynamically quantised linears
    (fp16, or int8 with per-channel scales) concatenate their rows, which is lossless.
    Saves a call's fixed cost (for int8: quantising the input again) per extra module.
    """
    kinds = {type(m) for m in modules}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind is torch.nn.Linear or kind.__name__ == "Bf16Linear":
        weight = torch.cat([m.weight.detach() for m in modules])
        biases = [m.bias for m in modules]
        bias = None if any(b is None for b in biases) else torch.cat([b.detach() for b in biases])
        fused = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        if kind is torch.nn.Linear:
            fused.weight.data, fused.bias.data = weight, bias  # type: ignore[assignment]
            return fast_linear(fused)
        fused.weight.data = weight.float()
        if bias is not None:
            fused.bias.data = bias.float()
        return kind(fused)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    if kind is not DynamicLinear:
        return None
    parts = [m._weight_bias() for m in modules]
    dtype = modules[0]._packed_params.dtype
    biases = [b for _, b in parts]
    bias = None if any(b is None for b in biases) else torch.cat(biases)
    if dtype == torch.float16:
        weight = torch.cat([w for w, _ in parts])
    elif all(w.qscheme() == torch.per_channel_affine and w.q_per_channel_axis() == 0 for w, _ in parts):
        weight = torch._make_per_channel_quantized_tensor(
            torch.cat([w.int_repr() for w, _ in parts]),
            torch.cat([w.q_per_channel_scales() for w, _ in parts]),
            torch.cat([w.q_per_channel_zero_points() for w, _ in parts]), 0)
    else:
        return None
    fused = DynamicLinear(weight.shape[1], weight.shape[0], dtype=dtype)
    fused.set_weight_bias(weight, bias)
    fused.version = modules[0].version
    return fused
