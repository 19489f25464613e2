"""Hydra callbacks for multirun (``python train.py -m ...``, the Optuna sweeper):

- before the first job: every swept key (``hydra.sweeper.params`` and sweep overrides on
  the command line) must exist in the composed config, else one line and exit 2, so a
  typo never costs a trial;
- after the last job: ``report.md`` / ``report.csv`` and the Pareto plots of every job
  into the sweep folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from emformer_variants.errors import UserError

_MISSING = object()


def swept_keys(config: DictConfig) -> list[tuple[str, str]]:
    """``(key, where)`` of every swept key: sweeper params, then sweep overrides."""
    keys = [(str(k), f"hydra.sweeper.params.{k}") for k in (config.hydra.sweeper.get("params") or {})]
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys += [(o.key_or_group, f"command line {o.input_line}") for o in parsed
             if o.is_sweep_override() and not o.is_add() and not o.is_force_add()]
    return keys


def has_key(config: DictConfig, key: str) -> bool:
    """``key`` exists in ``config`` (also when its value is ``???`` or an interpolation)."""
    try:
        return OmegaConf.select(config, key, default=_MISSING, throw_on_missing=True) is not _MISSING
    except (MissingMandatoryValue, InterpolationResolutionError):
        return True


def check_swept_keys(config: DictConfig) -> None:
    from emformer_variants.sweep.validate import close_keys

    groups = set(config.hydra.runtime.choices)
    for key, where in swept_keys(config):
        if key in groups or has_key(config, key):
            continue
        hint = close_keys(config, key)
        raise UserError(f"{where}: '{key}' is not a key of the config"
                        + (f"; did you mean {' or '.join(hint)}?" if hint else ""))


class SweepChecksAndReport(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_swept_keys(config)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from emformer_variants.reporting.runs import collect, write_report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = collect([sweep_dir]) if sweep_dir.is_dir() else []
        if not rows:
            print(f"report: no metrics.json under {sweep_dir}", file=sys.stderr)
            return
        for line in write_report(sweep_dir, rows):
            print(line, flush=True)
