"""Analytic encoder FLOPs of a (possibly surgically changed) recognizer.

Base count from ``metrics.flops.analytic_emformer_rnnt_flops`` plus each recorded
variant's ``analytic_encoder_flops_delta``. Deltas add up only when variants touch
disjoint modules (e.g. MLA + MoE); for overlapping stacks the count is None.
"""

from __future__ import annotations

from emformer_variants.metrics.flops import analytic_emformer_rnnt_flops
from emformer_variants.surgery import lowrank, mla, moe
from emformer_variants.surgery.registry import config_from_spec

# Which modules each variant rewrites (for the disjointness check).
_TOUCHES = {"moe": {"ffn"}, "mla": {"attention"}}


def _lowrank_touches(config) -> set[str]:
    return {"attention" if ".attention." in fqn else "ffn" if ".pos_ff." in fqn else fqn
            for fqn in (config.ranks or {})}


def analytic_encoder_flops(arch: dict, variants: list[dict], chunk_index: int | None = None) -> int | None:
    total = analytic_emformer_rnnt_flops(arch, chunk_index=chunk_index)["encoder"]
    touched: set[str] = set()
    for spec in variants:
        config = config_from_spec(spec)
        name = spec["name"]
        if name == "moe":
            delta, parts = moe.analytic_encoder_flops_delta(arch, config), _TOUCHES["moe"]
        elif name == "mla":
            delta = mla.analytic_encoder_flops_delta(arch, config, chunk_index=chunk_index)
            parts = _TOUCHES["mla"]
        elif name == "lowrank":
            delta, parts = lowrank.analytic_encoder_flops_delta(arch, config), _lowrank_touches(config)
        else:
            return None
        if touched & parts:
            return None
        touched |= parts
        total += delta
    return total
