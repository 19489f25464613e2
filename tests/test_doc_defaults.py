"""docs/evaluation.md's option table states each evaluate.py default: it must match conf/evaluate.yaml."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT, compose_config

WORDS = {"null": None, "all": None, "true": True, "false": False}


def documented_defaults(doc: Path) -> dict[str, str]:
    """``{option: default as written}`` from the table rows ``| `a`, `b` | x, y | what |``."""
    out = {}
    for line in doc.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        values = [v.strip() for v in cells[1].split(",")]
        if len(names) == len(values):
            out.update(zip(names, values, strict=True))
    return out


def parse(value: str):
    value = value.strip("`")
    if value in WORDS:
        return WORDS[value]
    try:
        return float(value)
    except ValueError:
        return value


def test_evaluation_md_states_the_config_defaults():
    conf = compose_config("evaluate", [])
    documented = documented_defaults(ROOT / "docs" / "evaluation.md")
    assert {"lm_weight", "beam", "decoder", "threads"} <= set(documented)
    for name, written in documented.items():
        assert name in conf, f"docs/evaluation.md documents {name}, which conf/evaluate.yaml lacks"
        actual = conf[name]
        want = parse(written)
        if isinstance(want, float) and not isinstance(actual, bool) and actual is not None:
            actual = float(actual)
        assert actual == want, f"{name}: docs/evaluation.md says {written}, conf/evaluate.yaml {conf[name]}"
