"""Evaluation precisions: cast or quantise the model's linear layers in place.

- fp32: everything in fp32 (default); nothing changes.
- bf16: linears in bf16 (``Bf16Linear``: bf16 weights, inputs cast to bf16, outputs back to
  fp32); norms, softmax, LSTM cell math and scores stay fp32.
- fp16: linears with fp16 weights and fp32 activations
  (``torch.ao.quantization.quantize_dynamic(dtype=torch.float16)``, fbgemm).
- int8: linears with int8 weights (per output channel), activations quantised per call
  (``torch.ao.quantization.quantize_dynamic`` with ``per_channel_dynamic_qconfig``, fbgemm).

torchaudio's predictor LSTM is built from ``nn.Linear`` (``x2g``, ``p2g``), not ``nn.LSTM``,
so "Linear/LSTM layers" are all covered by the linear swap. ``quantize_dynamic`` is
deprecated in torch 2.14 in favour of torchao's ``quantize_`` but is what ships with
torch and works here; its warnings are silenced. Whether bf16 is fast depends on the CPU:
without AVX-512 BF16 / AMX, torch computes bf16 matmuls in a slow generic path.
Embeddings and layer norms stay fp32.
"""

from __future__ import annotations

import warnings

import torch
from torch.nn import functional as F

from emformer_variants.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16", "int8")


class Bf16Linear(torch.nn.Module):
    """A linear with bf16 weights: computes in bf16, returns the input's dtype."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = torch.nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def _swap_linears_(model: torch.nn.Module, make) -> int:
    """Collect every ``nn.Linear``, then set its replacement on the parent."""
    found = {name: mod for name, mod in model.named_modules() if type(mod) is torch.nn.Linear}
    for name, mod in found.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, make(mod))
    return len(found)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision}: unknown; choose one of {', '.join(PRECISIONS)}")


def apply_precision_(rec, precision: str) -> dict:
    """Convert ``rec.model`` in place for inference; returns what was replaced."""
    check_precision(precision)
    model = rec.model.eval()
    if precision == "fp32":
        return {"precision": "fp32", "replaced": 0}
    if precision == "bf16":
        return {"precision": "bf16", "replaced": _swap_linears_(model, Bf16Linear)}
    from torch.ao import quantization as tq

    before = sum(type(m) is torch.nn.Linear for m in model.modules())
    qconfig = tq.float16_dynamic_qconfig if precision == "fp16" else tq.per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.quantize_dynamic(model, {torch.nn.Linear: qconfig}, inplace=True)
    after = sum(type(m) is torch.nn.Linear for m in model.modules())
    return {"precision": precision, "replaced": before - after,
            "method": f"torch.ao.quantization.quantize_dynamic({precision} dynamic qconfig)"}
