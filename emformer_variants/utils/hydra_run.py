"""Glue between a Hydra job and its outputs: one run folder per job, the objective value a
sweeper optimises, and the hint that tells the user how to tabulate runs.

Used by the thin entry points (train.py, evaluate.py); no Lightning import.
"""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Sequence

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from emformer_variants.errors import UserError


def check_overrides(config_name: str, argv: Sequence[str]) -> None:
    """Compose the config once before Hydra runs the job: an override Hydra cannot apply (an
    unknown key, with a did-you-mean; a config file that does not exist, with the choices;
    bad syntax) becomes one ``error:`` line and exit code 2, instead of Hydra's report.

    Multirun (``-m``): the fixed overrides are checked here, the swept ones (``a=1,2``,
    ``range(...)``) per job by the sweep callback. Other Hydra flags (``--cfg``, ``-cn``, ...)
    are left to Hydra.
    """
    flags = {a for a in argv if a.startswith("-")}
    if flags - {"-m", "--multirun"}:
        return
    overrides = [a for a in argv if not a.startswith("-")]
    if flags:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
        except Exception:  # bad syntax: Hydra's own message names the override
            return
        overrides = [o.input_line for o in parsed if not o.is_sweep_override()]
    from emformer_variants.sweep.validate import compose_checked

    try:
        compose_checked(config_name, overrides, {}, where=f"{config_name}.py")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def pin_output_dir(cfg: DictConfig) -> str:
    """Make ``paths.output_dir`` the folder Hydra chose for this job, and return it.

    A single run: ``hydra.run.dir`` is ``${paths.output_dir}``, so nothing changes (the
    timestamp is fixed once). Multirun: ``<sweep dir>/<job number>``, so every job of a
    sweep lands in one folder. A DDP child started by Lightning gets the parent's run dir,
    so every rank writes to the same folder.
    """
    if not HydraConfig.initialized():
        return str(cfg.paths.output_dir)
    out = HydraConfig.get().runtime.output_dir
    with open_dict(cfg):
        cfg.paths.output_dir = out
    return out


def metric_value(summary: dict, name: str | None) -> float | None:
    """The number called ``name`` in a run's summary (what train.py writes to metrics.json).

    ``val/wer`` (any key logged under ``val/``, last validation; ``val/wer_best`` is the best
    one) or ``<row>/<metric>`` for an evaluation row, e.g. ``fine_tuned/wer``, ``base/rtf``.
    ``None`` when ``name`` is None (no sweeper asked for one). NaN becomes +inf so a
    minimising sweeper ranks a run that never scored last.
    """
    if name is None:
        return None
    value = summary.get("val", {}).get(name)
    if value is None and "/" in name:
        row, key = name.split("/", 1)
        value = summary.get("results", {}).get(row, {}).get(key)
    if value is None:
        known = sorted(summary.get("val", {})) + sorted(
            f"{row}/{k}" for row, m in summary.get("results", {}).items() for k in ("wer", "cer", "rtf"))
        raise UserError(f"optimized_metric={name}: this run has no such metric; choose one of {known}")
    value = float(value)
    return math.inf if math.isnan(value) else value


def report_hint(*dirs: str) -> str:
    """The one command that tabulates and plots these run folders."""
    args = " ".join(shlex.quote(str(d)) for d in dirs)
    return f"report: python -m emformer_variants.report {args}"
