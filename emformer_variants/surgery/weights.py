"""A linear layer's weight and bias as plain tensors, whatever evaluation made of the layer.

Surgery modules that use a child linear's weight directly (MLA's absorbed attention, the MoE
router) must also work after ``engine.precision`` has replaced their ``nn.Linear``s:
- ``nn.Linear``: the parameters;
- the engine's ``KernelLinear`` (fp16/bf16/int8): ``weight`` is a property giving the
  widened or dequantised weight, fixed from construction on;
- torch.ao's dynamically quantised ``Linear`` (int8-fbgemm): ``weight()``/``bias()`` are
  methods, the weight a quantised tensor.
"""

from __future__ import annotations

import torch


def dense_weight(linear: torch.nn.Module) -> torch.Tensor:
    """(N, K) float weight of ``linear``."""
    weight = linear.weight
    if callable(weight):
        weight = weight()
    return weight.dequantize() if weight.is_quantized else weight


def dense_bias(linear: torch.nn.Module) -> torch.Tensor | None:
    bias = linear.bias
    return bias() if callable(bias) else bias


def is_trainable(linear: torch.nn.Module) -> bool:
    """True when the weight is a parameter (it may change: cache nothing keyed on it alone)."""
    return isinstance(linear.weight, torch.nn.Parameter)
