"""Hydra multirun with the Optuna sweeper: the search-space configs compose, a 2-trial
search runs end to end (tiny model) and writes its report, bad keys fail before any trial."""

from __future__ import annotations

import json

import pytest
import yaml
from hydra import compose, initialize_config_dir

from emformer_variants.sweep.hydra_callbacks import check_swept_keys
from tests.conftest import ROOT, TINY_ARCH, run_cli

SEARCHES = sorted(p.stem for p in (ROOT / "conf" / "hparams_search").glob("*.yaml"))


@pytest.mark.parametrize("name", SEARCHES)
def test_search_space_keys_exist(name):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={name}"], return_hydra_config=True)
    assert cfg.optimized_metric == "val/wer"
    assert cfg.hydra.sweeper.params and cfg.hydra.sweeper.direction == "minimize"
    check_swept_keys(cfg)  # raises on a key the config does not have


def _tiny(mini_corpus, sweep_dir):
    return ["data=manifest", f"data.root={mini_corpus}", "init=scratch", *TINY_ARCH,
            "trainer.max_steps=2", "trainer.val_check_interval=2", "eval.before=false",
            "eval.max_utterances=1", "eval.beam=1", "eval.flops=false", "calibration_batches=1",
            "variant.calibration_batches=1", "trainer.enable_progress_bar=false", "threads=1",
            f"hydra.sweep.dir={sweep_dir}"]


@pytest.fixture(scope="module")
def optuna_run(mini_corpus, tmp_path_factory):
    sweep = tmp_path_factory.mktemp("optuna") / "sweep"
    # The shipped MoE search, with expert sizes that fit the tiny test model (FFN 64).
    proc = run_cli("train.py", "-m", "hparams_search=moe_optuna", "hydra.sweeper.n_trials=2",
                   "variant.d_ff=choice(16, 32)", "variant.num_experts=choice(2, 4)",
                   *_tiny(mini_corpus, sweep))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return sweep, proc


def test_optuna_two_trials_return_the_objective(optuna_run):
    sweep, _ = optuna_run
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    wers = [json.loads((j / "metrics.json").read_text())["val"]["val/wer"] for j in jobs]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(wers))
    assert set(best["best_params"]) == {"variant.top_k", "variant.num_experts", "variant.d_ff"}


def test_multirun_writes_report_and_plots(optuna_run):
    sweep, proc = optuna_run
    report = (sweep / "report.md").read_text()
    assert report.count("| fine_tuned | moe |") == 2
    for stem in ("rtf", "kv_bytes", "active_params"):
        png = sweep / f"pareto_wer_vs_{stem}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"plot: {png}" in proc.stdout
    assert f"report: python -m emformer_variants.report {sweep / '0'}" in proc.stdout


def test_unknown_swept_key_fails_before_any_trial(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("train.py", "-m", "hparams_search=moe_optuna", "variant.dff=choice(16, 32)",
                   f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "'variant.dff'" in err and "did you mean variant.d_ff" in err, err
    assert not any(p.is_dir() for p in sweep.glob("*"))


def test_unknown_key_in_a_search_space_file(tmp_path):
    (tmp_path / "hparams_search").mkdir()
    (tmp_path / "hparams_search" / "typo.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /variant: moe\n  - override /hydra/sweeper: optuna\n"
        "hydra:\n  sweeper:\n    n_trials: 2\n    params:\n      variant.topk: choice(1, 2)\n")
    proc = run_cli("train.py", "-m", "hparams_search=typo", f"hydra.searchpath=[file://{tmp_path}]",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "hydra.sweeper.params.variant.topk" in proc.stderr and "variant.top_k" in proc.stderr
    assert not (tmp_path / "sweep" / "0").exists()


def test_unknown_fixed_key_in_a_multirun_fails_before_any_trial(tmp_path):
    proc = run_cli("train.py", "-m", "hparams_search=moe_optuna", "variant.dff=16",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err, proc.stderr[-2000:]
    assert err == ("error: train.py: 'variant.dff' is not a key of the train config; "
                   "did you mean variant.d_ff?")
    assert not (tmp_path / "sweep").exists()


def test_required_values_count_as_keys():
    from emformer_variants.sweep.hydra_callbacks import has_key

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", return_hydra_config=True)
    assert has_key(cfg, "ckpt") and has_key(cfg, "paths.output_dir")  # ??? and interpolation
    assert not has_key(cfg, "ckptt") and not has_key(cfg, "paths.nope")
