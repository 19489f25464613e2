"""Surgery: registered, in-place module swaps that return a report."""

# Importing a surgery module registers it.
from emformer_variants.surgery import dense, lowrank, mla, moe  # noqa: F401
from emformer_variants.surgery.registry import (  # noqa: F401
    SurgeryReport,
    apply_surgery_,
    config_from_spec,
    register_surgery,
    registered,
)


def apply_variant_spec_(rec, spec: dict, init: str = "convert", calibration=None) -> SurgeryReport:
    return apply_surgery_(rec, spec, init=init, calibration=calibration)
