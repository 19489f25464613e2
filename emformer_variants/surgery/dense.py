"""variant=dense: no surgery (the baseline and the pretraining recipe)."""

from __future__ import annotations

from dataclasses import dataclass

from emformer_variants.surgery.registry import SurgeryReport, register_surgery


@dataclass(frozen=True)
class DenseConfig:
    pass


@register_surgery("dense", DenseConfig)
def apply_dense_(rec, config: DenseConfig, init: str = "convert", calibration=None) -> SurgeryReport:
    return SurgeryReport(name="dense")
