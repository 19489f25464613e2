"""Linear layers for the inference engine.

The engine multiplies small batches (M = 1-20 rows: a beam of hypotheses, one chunk of
frames). fp32 ``nn.Linear`` layers run through ``engine.packed.PackedLinear``, a C++ kernel
for such batches (AVX2 or AVX-512, chosen at run time; 2.0-2.7x ``F.linear`` on the base's
linears, ``scripts/bench_linears.py``).
Results agree with ``F.linear`` to fp32 rounding, not bit for bit. Where that kernel cannot
be built, a large fp32 weight with a long reduction (e.g. the base joiner, 1024 -> 4097) runs
through oneDNN's ``mkldnn::_linear_pointwise`` (1.4-1.9x faster than MKL at these sizes on this
CPU) and smaller ones through ``F.linear``. Any other module (an fp16/bf16-weight or int8 linear, a
low-rank or MoE layer) is called as it is.

Shapes: (..., K) -> (..., N).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from emformer_variants.engine.packed import Int4Linear, Int8Linear, PackedLinear, kernel

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
    """A callable computing ``module(x)`` for the engine's small batches. A module that is a
    chain of linears (``linear_chain()``, e.g. the low-rank surgery's ``down`` then ``up``)
    runs each link this way."""
    if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32:
        if kernel() is not None:
            return PackedLinear(module.weight, module.bias)
        big = module.in_features >= ONEDNN_MIN_IN and module.weight.numel() >= ONEDNN_MIN_NUMEL
        return OneDNNLinear(module) if big and onednn_available() else PlainLinear(module)
    chain = getattr(module, "linear_chain", None)
    if chain is not None:
        return LinearChain([fast_linear(m) for m in chain()])
    return module


class LinearChain:
    """Linears applied one after the other."""

    def __init__(self, links: list):
        self.links = links

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for link in self.links:
            x = link(x)
        return x


NO_TENSOR = torch.empty(0)  # "none" in the C++ kernels' tensor lists


def kernel_impl(linear) -> PackedLinear | Int8Linear | Int4Linear | None:
    """The packed kernel behind ``linear`` (a ``PackedLinear``/``Int8Linear``/``Int4Linear``, or a module
    wrapping one), or None when it does not run in one (no kernel here, or another module)."""
    from emformer_variants.engine.precision import KernelLinear

    if isinstance(linear, KernelLinear):
        linear = linear.impl
    ok = isinstance(linear, PackedLinear | Int8Linear | Int4Linear) and kernel() is not None
    return linear if ok else None


def kernel_args(impl: PackedLinear | Int8Linear | Int4Linear) -> list[torch.Tensor]:
    """A kernel linear as the C++ kernels take it (``kernel_linear`` in kernels/linears.h):
    packed weight, bias, and for int8 the weight scales and column sums, for int4 the group
    scales and zero corrections; empty = none."""
    bias = NO_TENSOR if impl.bias is None else impl.bias
    if isinstance(impl, Int8Linear):
        return [impl.packed, bias, impl.scale, impl.colsum]
    if isinstance(impl, Int4Linear):
        return [impl.packed, bias, impl.scales, impl.zc]
    return [impl.packed, bias, NO_TENSOR, NO_TENSOR]


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh for the searches: the kernels' ``fast_tanh`` (within 1 ulp, several times faster
    than torch's on a beam's rows) where they load, as their C++ searches use it, else torch's."""
    if kernel() is not None and x.dtype == torch.float32:
        return kernel().fast_tanh(x)
    return torch.tanh(x)


def plain_norm(m: torch.nn.Module) -> bool:
    """An affine ``nn.LayerNorm`` over the last dimension (what the C++ kernels assume)."""
    return (type(m) is torch.nn.LayerNorm and m.weight is not None and m.bias is not None
            and tuple(m.normalized_shape) == (m.weight.numel(),))


def concat_linears(modules: list[torch.nn.Module]) -> torch.nn.Linear | None:
    """One fp32 ``nn.Linear`` whose output is ``cat([m(x) for m in modules], -1)``, from
    modules with ``weight`` (N_i, K) and ``bias`` (N_i,) or None; None when some have a bias
    and others do not."""
    biases = [m.bias for m in modules]
    if len({b is None for b in biases}) != 1:
        return None
    fused = torch.nn.Linear(modules[0].in_features, sum(m.out_features for m in modules),
                            bias=biases[0] is not None)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight.detach() for m in modules]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([b.detach() for b in biases]))
    return fused


def fuse_linears(modules: list[torch.nn.Module]):
    """One callable computing ``cat([m(x) for m in modules], -1)`` with a single matmul, or
    None when the modules cannot be fused exactly (different types or weight dtypes, bias on
    some but not all, per-tensor int8).

    fp32 and fp16/bf16-weight linears concatenate their weights (the 16-bit ones widened,
    which is exact); int8 linears (the packed kernel's, or fbgemm's with per-channel scales)
    concatenate their rows, which is lossless. Saves a call's fixed cost (for int8: quantising the input
    again) per extra module.
    """
    from emformer_variants.engine.precision import Int4DynamicLinear, Int8DynamicLinear, WeightCastLinear

    kinds = {type(m) for m in modules}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind is WeightCastLinear and len({m.dtype for m in modules}) != 1:
        return None
    if kind in (torch.nn.Linear, WeightCastLinear, Int8DynamicLinear, Int4DynamicLinear):
        fused = concat_linears(modules)
        if fused is None:
            return None
        if kind is WeightCastLinear:
            return WeightCastLinear(fused, modules[0].dtype)
        if kind is Int4DynamicLinear:  # rows are quantised one by one: the same integers and scales
            return Int4DynamicLinear(fused)
        # int8: the rows are quantised one by one, so requantising the dequantised rows
        # gives the same integers (scales to fp32 rounding)
        return Int8DynamicLinear(fused) if kind is Int8DynamicLinear else fast_linear(fused)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    if kind is not DynamicLinear:
        return None
    parts = [m._weight_bias() for m in modules]
    if len({b is None for _, b in parts}) != 1:
        return None
    dtype = modules[0]._packed_params.dtype
    bias = None if parts[0][1] is None else torch.cat([b for _, b in parts])
    per_channel = all(w.qscheme() == torch.per_channel_affine and w.q_per_channel_axis() == 0
                      for w, _ in parts)
    if dtype == torch.qint8 and per_channel:
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
