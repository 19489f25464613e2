"""The RNN-T joiner for a batch of (encoder frame, predictor output) pairs -> log-probs.

Shapes: M rows, D joiner input width, V symbols. Same math as torchaudio's ``_Joiner``
followed by ``RNNTBeamSearch``'s ``log_softmax(logits / temperature)``; logits are taken to
fp32 before the softmax whatever the precision of the weights. A tanh activation runs as
``engine.linear.tanh`` (the kernels' ``fast_tanh`` where they load, as in the C++ searches).
"""

from __future__ import annotations

import torch

from emformer_variants.engine.linear import fast_linear, tanh


class JoinerStep:
    def __init__(self, joiner: torch.nn.Module, temperature: float = 1.0):
        self.linear = fast_linear(joiner.linear)
        # tanh as the C++ searches compute it (engine.linear.tanh), any other activation as is
        self.activation = tanh if type(joiner.activation) is torch.nn.Tanh else joiner.activation
        self.temperature = temperature

    def __call__(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """enc (M, D) or (1, D), pred (M, D) -> log-probs (M, V) in fp32."""
        logits = self.linear(self.activation(enc + pred)).float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return torch.log_softmax(logits, dim=-1)
