"""Learning-rate schedules built from config (``_partial_: true``)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int = 200,
                  total_steps: int | None = None, min_ratio: float = 0.05
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr, then cosine decay to ``min_ratio`` x base lr.

    ``total_steps=None`` is filled in by the LightningModule from the trainer's estimate.
    """
    total = max(int(total_steps or 1), warmup_steps + 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
