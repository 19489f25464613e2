"""Sweep files: expansion, W&B-identical overrides, up-front validation, and the local
runner end to end on a 2-point grid (tiny model, wandb offline)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from emformer_variants.data.manifest import read_manifest
from emformer_variants.errors import UserError
from emformer_variants.sweep.runner import plan
from emformer_variants.sweep.spec import expand, load_sweep, to_overrides
from tests.conftest import ROOT, TINY_ARCH, corpus_wer_of

COMMAND = "command:\n  - ${env}\n  - ${interpreter}\n  - ${program}\n  - ${args_no_hyphens}\n"


def _write(tmp_path: Path, body: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def _sweep(tmp_path, params: str, method: str = "grid", extra: str = COMMAND) -> Path:
    return _write(tmp_path, f"program: train.py\nmethod: {method}\nmetric:\n  name: val/wer\n"
                            f"  goal: minimize\nparameters:\n{params}{extra}")


def test_grid_is_the_product_in_file_order(tmp_path):
    spec = load_sweep(_sweep(tmp_path, "  variant:\n    value: moe\n  variant.top_k:\n    values: [1, 2]\n"
                                       "  variant.num_experts:\n    distribution: int_uniform\n"
                                       "    min: 2\n    max: 4\n"))
    points = expand(spec)
    assert len(points) == 6
    assert points[0] == {"variant": "moe", "variant.top_k": 1, "variant.num_experts": 2}
    assert points[-1] == {"variant": "moe", "variant.top_k": 2, "variant.num_experts": 4}
    assert expand(spec, count=2) == points[:2]


def test_random_is_seeded_and_in_range(tmp_path):
    params = ("  a:\n    distribution: uniform\n    min: 0.1\n    max: 0.2\n"
              "  b:\n    distribution: int_uniform\n    min: 3\n    max: 5\n"
              "  c:\n    distribution: q_uniform\n    min: 0\n    max: 1\n    q: 0.25\n"
              "  d:\n    distribution: log_uniform_values\n    min: 1.0e-5\n    max: 1.0e-3\n"
              "  e:\n    values: [x, y]\n    probabilities: [0.0, 1.0]\n"
              "  f:\n    min: 0.5\n    max: 1.5\n")
    spec = load_sweep(_sweep(tmp_path, params, method="random"))
    a, b = expand(spec, count=20, seed=7), expand(spec, count=20, seed=7)
    assert a == b and a != expand(spec, count=20, seed=8)
    for p in a:
        assert 0.1 <= p["a"] <= 0.2 and p["b"] in (3, 4, 5) and p["c"] in (0, 0.25, 0.5, 0.75, 1.0)
        assert 1e-5 <= p["d"] <= 1e-3 and p["e"] == "y" and 0.5 <= p["f"] <= 1.5
    logs = [math.log10(p["d"]) for p in expand(spec, count=200, seed=1)]
    assert min(logs) < -4.5 and max(logs) > -3.5  # spread over the decades, not the values


def test_overrides_are_formatted_like_wandb_agent():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    point = {"variant.top_k": 2, "variant.targets": ["ffn", "attention"], "variant.absorb": True,
             "variant.ratio": 0.25}
    wandb_args = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})
    assert to_overrides(point) == wandb_args["args_no_hyphens"]


@pytest.mark.parametrize("name", ["moe", "mla", "lowrank", "lowrank_rank"])
def test_shipped_sweep_files_compose(name):
    spec = load_sweep(ROOT / "sweeps" / f"{name}.yaml")
    assert spec.metric == "val/wer" and spec.goal == "minimize"
    runs = plan(spec, count=3, seed=0, method=None, extra=[])
    assert runs and all(f"variant={name.split('_')[0]}" in r["overrides"] for r in runs)


BAD = [
    ("method: grid\nparameters: [\n", "line"),
    ("program: train.py\nmethod: grid\nmetric: {name: val/wer}\n" + COMMAND, "parameters"),
    ("program: train.py\nmethod: hyperband\nmetric: {name: val/wer}\nparameters:\n  a: {value: 1}\n",
     "method"),
    ("program: train.py\nmethod: random\nmetric: {name: val/wer}\nparameters:\n"
     "  variant.top_k: {distribution: gamma, min: 1, max: 2}\n" + COMMAND, "distribution"),
    ("program: train.py\nmethod: grid\nmetric: {name: val/wer}\nparameters:\n"
     "  variant: {value: moe}\n  variant.topk: {values: [1, 2]}\n" + COMMAND, "parameters.variant.topk"),
    ("program: train.py\nmethod: grid\nmetric: {name: val/wer}\nparameters:\n"
     "  variant: {value: moe}\n  variant.top_k: {values: [2, 9]}\n" + COMMAND, "top_k=9 exceeds"),
    ("program: train.py\nmethod: grid\nmetric: {name: val/wer}\nparameters:\n"
     "  variant: {value: moe}\n  variant.d_ff: {values: [null]}\n" + COMMAND, "parameters.variant.d_ff"),
]


@pytest.mark.parametrize("body,needle", BAD)
def test_malformed_sweep_fails_before_any_run(body, needle, tmp_path):
    path = _write(tmp_path, body)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "emformer_variants.sweep", str(path), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert str(path) in err and needle in err, err
    assert not out.exists()


def test_unknown_extra_override_names_the_key(tmp_path):
    spec = load_sweep(ROOT / "sweeps" / "mla.yaml")
    with pytest.raises(UserError, match=r"command line: 'variant.kvrank' .*did you mean variant.kv_rank"):
        plan(spec, None, 0, None, ["variant.kvrank=3"])


@pytest.fixture(scope="module")
def sweep_run(mini_corpus, tmp_path_factory):
    """A 2-point grid over MoE top-k, tiny model from scratch, wandb offline."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = _sweep(tmp, "  variant:\n    value: moe\n  logger:\n    value: wandb\n"
                       "  variant.top_k:\n    values: [1, 2]\n  variant.num_experts:\n    value: 2\n")
    out = tmp / "out"
    overrides = ["data=manifest", f"data.root={mini_corpus}", "init=scratch", *TINY_ARCH,
                 "trainer.max_steps=2", "trainer.val_check_interval=2", "eval.before=false",
                 "eval.max_utterances=1", "eval.beam=1", "eval.flops=false", "calibration_batches=1",
                 "variant.calibration_batches=1", "trainer.enable_progress_bar=false", "threads=1"]
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp)}
    proc = subprocess.run([sys.executable, "-m", "emformer_variants.sweep", str(path), "--out", str(out),
                           *overrides], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_sweep_runs_each_point_in_its_own_folder(sweep_run, mini_corpus):
    out, proc = sweep_run
    dev = [u.text for u in read_manifest(mini_corpus / "dev.jsonl")]
    runs = sorted(out.glob("run-*"))
    assert [r.name for r in runs] == ["run-000", "run-001"]
    for r, k in zip(runs, (1, 2), strict=True):
        summary = json.loads((r / "metrics.json").read_text())
        assert summary["steps"] == 2
        corpus_wer_of(summary["val"]["val/wer"], dev)  # the corpus WER of the dev split
        assert f"variant.top_k={k}" in (r / ".hydra" / "overrides.yaml").read_text()
        assert list(r.glob("wandb/offline-run-*")), "logger=wandb ran offline"
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert sorted(r["variant.top_k"] for r in rows) == ["1", "2"] and all(r["status"] == "ok" for r in rows)
    assert "val/wer" in (out / "sweep.md").read_text()


def test_sweep_writes_report_and_pareto_plots(sweep_run):
    out, proc = sweep_run
    report = (out / "report.md").read_text()
    assert "moe top_k=1" in report and "moe top_k=2" in report
    for stem in ("pareto_wer_vs_rtf", "pareto_wer_vs_kv_bytes", "pareto_wer_vs_active_params"):
        png = out / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert f"plot: {png}" in proc.stdout
    # eval.flops=false: no GFLOPs were measured, and the report says so instead of plotting.
    assert "pareto_wer_vs_gflops: skipped" in proc.stdout
