"""Surgery registry: config dataclass type -> in-place function returning a report.

Shape of the API follows torchao's ``quantize_(model, config, filter_fn)``: each surgery
is a frozen ``*Config`` dataclass with a registered ``apply_*_`` function. A variant spec
stored in checkpoints is ``{"name": <registered name>, **config fields}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from emformer_variants.errors import UserError


@dataclass
class SurgeryReport:
    name: str
    replaced: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.name}: replaced {len(self.replaced)} modules, params "
                f"{self.params_before:,} -> {self.params_after:,}")


_REGISTRY: dict[str, tuple[type, Callable]] = {}


def register_surgery(name: str, config_cls: type):
    def deco(fn: Callable) -> Callable:
        _REGISTRY[name] = (config_cls, fn)
        return fn
    return deco


def registered() -> list[str]:
    return sorted(_REGISTRY)


def config_from_spec(spec: dict) -> Any:
    """``{"name": "moe", "top_k": 2, ...}`` -> ``MoEConfig(top_k=2, ...)`` with clear errors."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in _REGISTRY:
        raise UserError(f"variant.name={name!r} is not a known variant; choose one of {registered()}")
    cls, _ = _REGISTRY[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise UserError(f"variant {name}: unknown field(s) {unknown}; known: {sorted(known)}")
    try:
        return cls(**spec)
    except (TypeError, ValueError) as e:
        raise UserError(f"variant {name}: {e}") from None


def spec_from_config(name: str, config: Any) -> dict:
    return {"name": name, **dataclasses.asdict(config)}


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def apply_surgery_(rec, spec: dict, init: str = "convert", calibration=None) -> SurgeryReport:
    """Apply one registered surgery to ``rec`` (a Recognizer) in place.

    init="convert": build new modules from the current weights (training from a base);
    init="empty": only reshape the module tree (the checkpoint's weights load next).
    """
    config = config_from_spec(spec)
    _, fn = _REGISTRY[spec["name"]]
    before = count_params(rec.model)
    report: SurgeryReport = fn(rec, config, init=init, calibration=calibration)
    report.params_before, report.params_after = before, count_params(rec.model)
    if spec["name"] != "dense":
        # A surgery whose choices depend on data (e.g. per-layer ranks from calibration)
        # returns the fully resolved spec, so that init="empty" rebuilds the same shapes.
        rec.variants.append(report.extra.get("resolved_spec") or spec_from_config(spec["name"], config))
    return report
