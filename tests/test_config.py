"""Every config group composes, and entry-point configs carry what the code reads."""

from __future__ import annotations

import pytest

from emformer_variants.utils.paths import PROJECT_ROOT
from tests.conftest import compose_config

CONF = PROJECT_ROOT / "conf"


@pytest.mark.parametrize("group", ["data", "model", "variant", "trainer", "callbacks", "logger", "module",
                                   "experiment"])
def test_every_option_composes(group):
    options = sorted(str(p.relative_to(CONF / group).with_suffix("")) for p in (CONF / group).rglob("*.yaml"))
    assert options
    for option in options:
        overrides = [f"{group}={option}"]
        if group == "data" and option in ("audiofolder",):
            overrides.append("data.path=/nonexistent")
        if group == "data" and option in ("librispeech", "manifest"):
            overrides.append("data.root=/nonexistent")
        cfg = compose_config("train", overrides)
        assert cfg[group if group != "experiment" else "task_name"] is not None


def test_evaluate_requires_ckpt():
    from omegaconf.errors import MissingMandatoryValue

    cfg = compose_config("evaluate", [])
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.ckpt


def test_the_default_module_distils_from_the_base_and_not_from_scratch():
    """module=recovery_short: from the base, a teacher and only the surgery's parameters; with
    init=scratch (no base) no teacher and every parameter, unless a run sets them itself."""
    base = compose_config("train", [])
    assert base.module.distill.weight == 1.0 and base.module.train_only == "auto"
    assert base.module.optimizer.lr == 1e-4 and base.trainer.max_steps == 300
    scratch = compose_config("train", ["init=scratch"])
    assert scratch.module.distill.weight == 0.0 and scratch.module.train_only == "all"
    assert compose_config("train", ["init=scratch", "module.distill.weight=1"]).module.distill.weight == 1
