"""Evaluation precisions: cast or quantise the model's linear layers in place.

- fp32: everything in fp32 (default); nothing changes.
- bf16 / fp16: linears keep their weights in bf16 / fp16 (``WeightCastLinear``); the packed
  AVX2 kernel (``engine.packed``) widens them to fp32 in registers, so activations and
  accumulation stay fp32 and only half the weight bytes are read. Norms, softmax, LSTM cell
  math and scores stay fp32.
- int8: dynamic int8 (``Int8DynamicLinear`` over ``engine.packed.Int8Linear``): int8 weights
  with one scale per output row; each input row quantised per call to 7 bits (asymmetric, 0
  exact); integer products summed exactly in int32, then scaled to fp32. Without the kernel
  the same numbers come from torch (slowly).
- int4: weight-only int4 (``Int4DynamicLinear`` over ``engine.packed.Int4Linear``): 4-bit
  weights in groups of 64 k per output row, each group with its own fp32 scale (the group's
  largest magnitude, or a clipped fraction of it where that errs less); inputs quantised per row
  to 7 bits as for int8; exact integer sums per group. 0.56 bytes per weight against int8's 1:
  for one stream, whose every call streams the weights from memory. No AMX path (tiles take
  int8), so many streams run it on AVX-512 VNNI. Only the encoder (``transcriber``) goes to
  int4: the predictor and joiner run at the beam's few rows, where int8 is compute-bound and no
  slower, and their error moves every hypothesis's score; a MoE router stays int8 too.
- int8-fbgemm: torch's own dynamic quantisation (``torch.ao.quantization.quantize_dynamic``
  with ``per_channel_dynamic_qconfig``, fbgemm: per-channel int8 weights, one activation
  scale per call), kept as the reference method. It was ``int8`` until the packed int8
  kernel, which is 1.6x faster on the base's encoder linears (``scripts/bench_linears.py``).

torchaudio's predictor LSTM is built from ``nn.Linear`` (``x2g``, ``p2g``), not ``nn.LSTM``,
so "Linear/LSTM layers" are all covered by the linear swap. ``quantize_dynamic`` is
deprecated in torch 2.14 in favour of torchao's ``quantize_`` but is what ships with
torch and works here; its warnings are silenced. (An earlier bf16 mode cast activations to
bf16 too and ran torch's bf16 matmul: without AVX-512 BF16 / AMX that is a generic path,
slower than fp32; fp16 used fbgemm's fp16 linear, 1.2-1.6x slower than the packed kernel in
``scripts/bench_linears.py``.)
Embeddings and layer norms stay fp32. A MoE FFN's stacked experts are first split into
``nn.Linear`` pairs (``engine.moe.split_experts_``), so they are converted like the rest.
"""

from __future__ import annotations

import warnings

import torch

from emformer_variants.engine.moe import split_experts_
from emformer_variants.engine.names import PRECISIONS
from emformer_variants.engine.packed import INT4_GROUP, Int4Linear, Int8Linear, PackedLinear, isa, kernel
from emformer_variants.errors import UserError
from emformer_variants.surgery.swap import swap_modules_

CAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class KernelLinear(torch.nn.Module):
    """An ``nn.Linear`` replaced by one of ``engine.packed``'s kernels (``impl``); fp32 in and
    out. ``weight`` is what the kernel multiplies by, as fp32 (N, K); the bias stays fp32."""

    def __init__(self, linear: torch.nn.Linear, impl):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.impl = impl

    @property
    def weight(self) -> torch.Tensor:
        return self.impl.weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.impl.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.impl(x)


class WeightCastLinear(KernelLinear):
    """Weights stored in fp16 or bf16, fp32 compute."""

    def __init__(self, linear: torch.nn.Linear, dtype: torch.dtype):
        super().__init__(linear, PackedLinear(linear.weight, linear.bias, dtype))
        self.dtype = dtype

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight_dtype={self.dtype}"


class Int8DynamicLinear(KernelLinear):
    """int8 weights (one scale per row), inputs quantised per row and call, int32 sums."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__(linear, Int8Linear(linear.weight, linear.bias))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dynamic int8"


class Int4DynamicLinear(KernelLinear):
    """int4 weights (a scale per row and group of k), inputs quantised per row and call, int32
    sums per group."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__(linear, Int4Linear(linear.weight, linear.bias))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int4 weights (groups of {self.impl.group}), dynamic inputs")


def _swap_linears_(model: torch.nn.Module, make) -> int:
    """Every ``nn.Linear`` replaced by ``make(linear, its name)`` (built first, then swapped in)."""
    new = {name: make(mod, name) for name, mod in model.named_modules() if type(mod) is torch.nn.Linear}
    return len(swap_modules_(model, new))


def int4_weights(name: str) -> bool:
    """Whether ``precision=int4`` gives the linear called ``name`` int4 weights (else int8): the
    encoder's, whose weights one stream reads from memory once per chunk, but not a MoE router's
    (its few bytes buy nothing at 4 bits, and its top-k is discrete) nor the predictor's and
    joiner's (run at the beam's rows, compute-bound, and in every hypothesis's score)."""
    return name.startswith("transcriber.") and not name.endswith("router")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision}: unknown; choose one of {', '.join(PRECISIONS)}")


def apply_precision_(rec, precision: str) -> dict:
    """Convert ``rec.model`` in place for inference; returns what was replaced."""
    check_precision(precision)
    model = rec.model.eval()
    if precision == "fp32":
        return {"precision": "fp32", "replaced": 0}
    split_experts_(model)  # stacked MoE experts -> nn.Linear pairs, converted below like every linear
    if precision in CAST_DTYPES:
        dtype = CAST_DTYPES[precision]
        replaced = _swap_linears_(model, lambda m, _: WeightCastLinear(m, dtype))
        kernel_used = kernel() is not None
        return {"precision": precision, "replaced": replaced,
                "method": f"{precision} weights, fp32 compute ("
                          + (f"packed {isa()} kernel" if kernel_used else "F.linear on widened weights")
                          + ")"}
    if precision == "int8":
        replaced = _swap_linears_(model, lambda m, _: Int8DynamicLinear(m))
        return {"precision": precision, "replaced": replaced,
                "method": "dynamic int8: int8 weights (scale per row), inputs to 7 bits per row and call, "
                          + (f"packed {isa()} int8 kernel" if kernel() is not None else "torch reference")}
    if precision == "int4":
        replaced = _swap_linears_(model, lambda m, name: (Int4DynamicLinear(m) if int4_weights(name)
                                                          else Int8DynamicLinear(m)))
        return {"precision": precision, "replaced": replaced,
                "method": f"int4 encoder weights (groups of {INT4_GROUP} k, a scale each; predictor, "
                          "joiner and routers int8), "
                          "inputs to 7 bits per row and call, "
                          + (f"packed {isa()} int4 kernel" if kernel() is not None else "torch reference")}
    from torch.ao import quantization as tq

    before = sum(type(m) is torch.nn.Linear for m in model.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.quantize_dynamic(model, {torch.nn.Linear: tq.per_channel_dynamic_qconfig}, inplace=True)
    after = sum(type(m) is torch.nn.Linear for m in model.modules())
    return {"precision": precision, "replaced": before - after,
            "method": "torch.ao.quantization.quantize_dynamic(per_channel_dynamic_qconfig)"}
