"""Parameter counts: total, and active per token (MoE counts only the chosen experts)."""

from __future__ import annotations

import torch


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(total, active). A module may define ``active_param_count()``: the parameters one
    token uses (e.g. router + k of E experts); its subtree is then not walked further."""
    total = sum(p.numel() for p in model.parameters())

    def active(module: torch.nn.Module) -> int:
        if hasattr(module, "active_param_count"):
            return int(module.active_param_count())
        own = sum(p.numel() for p in module.parameters(recurse=False))
        return own + sum(active(child) for child in module.children())

    return total, active(model)
