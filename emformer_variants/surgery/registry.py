"""Surgery registry: one entry per variant holds everything the rest of the package knows
about it, so adding a variant touches ``surgery/`` and ``conf/variant/`` only.

Shape of the API follows torchao's ``quantize_(model, config, filter_fn)``: each surgery
is a frozen ``*Config`` dataclass with an in-place ``apply_*_`` function. A variant spec
stored in checkpoints is ``{"name": <registered name>, **config fields}``; a composed
variant (``conf/variant/mla_moe.yaml``) lists its parts under ``stack``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from emformer_variants.errors import UserError
from emformer_variants.metrics.flops import analytic_emformer_rnnt_flops
from emformer_variants.metrics.params import count_params

log = logging.getLogger(__name__)


@dataclass
class SurgeryReport:
    name: str
    replaced: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # Parameters of ``rec.model`` (by name) this surgery created: what ``module.train_only=surgery``
    # trains. Filled by ``apply_surgery_`` for every surgery alike, from object identity, so a
    # module a surgery wraps but keeps (e.g. the feed-forward inside an MLA layer) is not in it.
    new_parameters: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.name}: replaced {len(self.replaced)} modules, params "
                f"{self.params_before:,} -> {self.params_after:,}")


@dataclass(frozen=True)
class Telemetry:
    """What a variant reports while it runs; each part is optional and finds its own modules
    in the model (returning nothing when the model has none).

    ``losses(model)``: weighted auxiliary losses of the last forward, added to the training
    loss and logged as ``train/<name>``. ``train_stats(model)``: numbers logged as
    ``train/<name>`` every ``log_every_n_steps``. ``evaluation(model)``: an accumulator over a
    streaming evaluation, with ``close()`` and ``summary() -> {metrics.json key: value}``.
    """

    losses: Callable[[torch.nn.Module], dict[str, torch.Tensor]] | None = None
    train_stats: Callable[[torch.nn.Module], dict[str, float]] | None = None
    evaluation: Callable[[torch.nn.Module], Any] | None = None


def _no_calibration(config) -> int | None:
    return None


def _shapes_from_config(config) -> bool:
    return False


@dataclass(frozen=True)
class Surgery:
    """A registered variant.

    - ``apply(rec, config, init, calibration) -> SurgeryReport``: in place. ``init="convert"``
      builds the new modules from the current weights; ``init="empty"`` only reshapes the
      module tree (a checkpoint's weights load next).
    - ``flops_delta(arch, config, chunk_index) -> int``: change of the analytic encoder FLOPs
      of one streaming chunk (``chunk_index`` None: steady state) against
      ``metrics.flops.analytic_emformer_rnnt_flops``, for a recorded (resolved) config.
    - ``touches(config) -> set``: the parts of the model it rewrites (``"ffn"``,
      ``"attention"``, or linear fqns); deltas add up only over disjoint parts.
    - ``calibration(config) -> int | None``: None when ``init="convert"`` reads no calibration
      audio, else the batches it asks for (the run's ``calibration_batches`` is a floor).
    - ``resolved_fields``: fields the surgery fills in and records (from the model or the
      weights); a request that leaves them unset matches a checkpoint that has them.
    - ``shapes_from_weights(config)``: True when ``init="empty"`` cannot rebuild the shapes
      from this config (they come from the weights); ``check(rec, config)`` then runs the
      model-dependent checks alone, without changing the model.
    - ``telemetry``: see ``Telemetry``.
    - ``identity``: the surgery changes nothing (``dense``); it is not recorded.
    """

    name: str
    config: type
    apply: Callable[..., SurgeryReport]
    flops_delta: Callable[[dict, Any, int | None], int]
    touches: Callable[[Any], set[str]]
    calibration: Callable[[Any], int | None] = _no_calibration
    resolved_fields: frozenset[str] = frozenset()
    shapes_from_weights: Callable[[Any], bool] = _shapes_from_config
    check: Callable[[Any, Any], None] | None = None
    telemetry: Telemetry = Telemetry()
    identity: bool = False


_REGISTRY: dict[str, Surgery] = {}


def register_surgery(entry: Surgery) -> Surgery:
    _REGISTRY[entry.name] = entry
    return entry


def registered() -> list[str]:
    return sorted(_REGISTRY)


def get_surgery(name: str) -> Surgery:
    if name not in _REGISTRY:
        raise UserError(f"variant.name={name!r} is not a known variant; choose one of {registered()}")
    return _REGISTRY[name]


def resolved_fields(name: str) -> frozenset[str]:
    """The fields surgery ``name`` resolves itself (none for an unknown name)."""
    entry = _REGISTRY.get(name)
    return entry.resolved_fields if entry is not None else frozenset()


def variant_specs(variant: dict) -> list[dict]:
    """The surgery specs of a ``variant`` config: its ``stack``, or the variant itself."""
    return list(variant["stack"]) if "stack" in variant else [variant]


def config_from_spec(spec: dict) -> Any:
    """``{"name": "moe", "top_k": 2, ...}`` -> ``MoEConfig(top_k=2, ...)`` with clear errors."""
    spec = dict(spec)
    entry = get_surgery(spec.pop("name", None))
    known = {f.name for f in dataclasses.fields(entry.config)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise UserError(f"variant {entry.name}: unknown field(s) {unknown}; known: {sorted(known)}")
    try:
        return entry.config(**spec)
    except (TypeError, ValueError) as e:
        raise UserError(f"variant {entry.name}: {e}") from None


def spec_from_config(name: str, config: Any) -> dict:
    return {"name": name, **dataclasses.asdict(config)}


def requested_specs(variant: dict) -> list[dict]:
    """The specs a ``variant`` config records in a checkpoint: every field filled in
    (defaults included), identity surgeries left out."""
    return [spec_from_config(s["name"], config_from_spec(s)) for s in variant_specs(variant)
            if not get_surgery(s.get("name")).identity]


def variant_name(specs: list[dict]) -> str:
    """``dense`` for no surgery, else the surgery names joined by ``+`` (``mla+moe``)."""
    names = [s.get("name") for s in specs
             if not (s.get("name") in _REGISTRY and _REGISTRY[s.get("name")].identity)]
    return "+".join(names) if names else "dense"


def apply_surgery_(rec, spec: dict, init: str = "convert", calibration=None) -> SurgeryReport:
    """Apply one registered surgery to ``rec`` (a Recognizer) in place and record it."""
    config = config_from_spec(spec)
    entry = get_surgery(spec["name"])
    before = count_params(rec.model)[0]
    existing = {id(p): p for p in rec.model.parameters()}  # values keep the ids from being reused
    report: SurgeryReport = entry.apply(rec, config, init=init, calibration=calibration)
    report.params_before, report.params_after = before, count_params(rec.model)[0]
    report.new_parameters = [n for n, p in rec.model.named_parameters() if id(p) not in existing]
    if not entry.identity:
        # A surgery whose choices depend on data (e.g. per-layer ranks from calibration)
        # returns the fully resolved spec, so that init="empty" rebuilds the same shapes.
        rec.variants.append(report.extra.get("resolved_spec") or spec_from_config(spec["name"], config))
    return report


def apply_variant_(rec, variant: dict, init: str = "convert", calibration=None) -> list[SurgeryReport]:
    """Every surgery of ``variant`` (a single spec or ``{name, stack: [...]}``), in order."""
    return [apply_surgery_(rec, s, init=init, calibration=calibration) for s in variant_specs(variant)]


def convert_variant_(rec, variant: dict, data, floor: int) -> list[SurgeryReport]:
    """Surgery from the current weights (``init="convert"``) on ``rec`` in place, as train.py
    and ``evaluate.py surgery=NAME`` do it: calibration batches (at least ``floor``) come from
    ``data``'s training split (an ``ASRDataModule``, bound to ``rec``'s features and tokenizer
    here) and are read only when a surgery of ``variant`` asks for them."""
    data.bind(rec.features, rec.tokenizer)
    num = calibration_batches(variant, floor)
    calibration = data.calibration_batches(num) if num is not None else None
    return apply_variant_(rec, variant, init="convert", calibration=calibration)


def surgery_parameters(reports: list[SurgeryReport], model: torch.nn.Module) -> list[str]:
    """Names of the parameters of ``model`` the surgeries of ``reports`` created (a later
    surgery may have replaced an earlier one's): what ``module.train_only=surgery`` trains."""
    present = dict(model.named_parameters())
    names = dict.fromkeys(n for r in reports for n in r.new_parameters)
    return [n for n in names if n in present]


def calibration_batches(variant: dict, floor: int) -> int | None:
    """How many calibration batches the surgeries of ``variant`` read (at least ``floor``), or
    None when none of them reads any."""
    asks = [get_surgery(s["name"]).calibration(config_from_spec(s)) for s in variant_specs(variant)]
    asks = [a for a in asks if a is not None]
    return max([*asks, floor]) if asks else None


def check_variant(variant: dict, arch: dict | None = None, applied: list[dict] = ()) -> list[dict]:
    """Check a ``variant`` config before any work; returns its specs.

    Always: known names and fields, valid values (each config dataclass's own checks). Given
    the ``arch`` it will be applied to (after the base's own ``applied`` surgeries): every
    model-dependent check of each surgery, run on a meta-device model of that architecture
    (no weights, no memory), so a rank above a matrix size or a layer index out of range fails
    here exactly as it would after loading the base. Errors are one-line UserErrors.
    """
    if not isinstance(variant, dict) or "name" not in variant:
        raise UserError(f"variant={variant!r}: expected a variant config with a name (see conf/variant/)")
    specs = variant_specs(variant)
    if not specs:
        raise UserError(f"variant {variant['name']}: 'stack' is empty")
    for spec in specs:
        config_from_spec(spec)
    if arch is not None:
        _dry_run(arch, specs, applied)
    return specs


def _dry_run(arch: dict, specs: list[dict], applied: list[dict]) -> None:
    import types

    from torchaudio.models import emformer_rnnt_model

    with torch.device("meta"):
        rec = types.SimpleNamespace(model=emformer_rnnt_model(**arch), arch=arch, variants=[])
        for spec in [*applied, *specs]:
            entry, config = get_surgery(spec["name"]), config_from_spec(spec)
            try:
                if entry.shapes_from_weights(config):
                    # Its shapes come from the weights: run its checks alone, stop the stack here.
                    if entry.check is not None:
                        entry.check(rec, config)
                    return
                apply_surgery_(rec, spec, init="empty")
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - a meta-device limitation, not the user's config
                log.debug("config dry run of %s skipped: %s", spec.get("name"), e)
                return


def analytic_encoder_flops(arch: dict, variants: list[dict], chunk_index: int | None = None) -> int | None:
    """Encoder FLOPs of one streaming chunk of ``arch`` after the recorded ``variants``: the
    base count plus each variant's delta. Deltas add up only when the variants touch disjoint
    parts (e.g. MLA + MoE); for overlapping stacks the count is None."""
    total = analytic_emformer_rnnt_flops(arch, chunk_index=chunk_index)["encoder"]
    touched: set[str] = set()
    for spec in variants:
        entry, config = get_surgery(spec["name"]), config_from_spec(spec)
        parts = entry.touches(config)
        if touched & parts:
            return None
        touched |= parts
        total += entry.flops_delta(arch, config, chunk_index)
    return total


# ---------------------------------------------------------------- telemetry of every variant

def auxiliary_losses(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weighted auxiliary training losses of every registered variant in ``model``."""
    out: dict[str, torch.Tensor] = {}
    for entry in _REGISTRY.values():
        if entry.telemetry.losses is not None:
            out.update(entry.telemetry.losses(model))
    return out


def training_stats(model: torch.nn.Module) -> dict[str, float]:
    out: dict[str, float] = {}
    for entry in _REGISTRY.values():
        if entry.telemetry.train_stats is not None:
            out.update(entry.telemetry.train_stats(model))
    return out


class EvaluationTelemetry:
    """Every registered variant's evaluation accumulator on ``model``; ``summary()`` merges them."""

    def __init__(self, model: torch.nn.Module):
        self.parts = [entry.telemetry.evaluation(model) for entry in _REGISTRY.values()
                      if entry.telemetry.evaluation is not None]

    def close(self) -> None:
        for part in self.parts:
            part.close()

    def summary(self) -> dict:
        out: dict = {}
        for part in self.parts:
            out.update(part.summary())
        return out
