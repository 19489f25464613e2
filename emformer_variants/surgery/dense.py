"""variant=dense: no surgery (the baseline and the pretraining recipe)."""

from __future__ import annotations

from dataclasses import dataclass

from emformer_variants.surgery.registry import Surgery, SurgeryReport, register_surgery


@dataclass(frozen=True)
class DenseConfig:
    pass


def apply_dense_(rec, config: DenseConfig, init: str = "convert", calibration=None) -> SurgeryReport:
    return SurgeryReport(name="dense")


register_surgery(Surgery(
    name="dense", config=DenseConfig, apply=apply_dense_,
    flops_delta=lambda arch, config, chunk_index: 0, touches=lambda config: set(), identity=True,
))
