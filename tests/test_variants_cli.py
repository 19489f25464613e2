"""Each variant fine-tuned through train.py from a base, rebuilt by evaluate.py from its
checkpoint alone; bad settings rejected before any work starts."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_ARCH, run_cli


@pytest.fixture(scope="module")
def base_ckpt(mini_corpus, tmp_path_factory):
    """A tiny base trained from scratch for a few steps (the same recipe as the shipped one)."""
    out = tmp_path_factory.mktemp("base")
    proc = run_cli("train.py", "data=manifest", f"data.root={mini_corpus}", "init=scratch", *TINY_ARCH,
                   "trainer.max_steps=2", "trainer.val_check_interval=2", "eval.after=false",
                   f"paths.output_dir={out}", "trainer.enable_progress_bar=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "final.pt"


def _common(mini_corpus, base_ckpt, out):
    return ["data=manifest", f"data.root={mini_corpus}", f"model.ckpt={base_ckpt}",
            "trainer.max_steps=2", "trainer.val_check_interval=2", "eval.max_utterances=1",
            "eval.beam=2", "calibration_batches=1", f"paths.output_dir={out}",
            "trainer.enable_progress_bar=false"]


@pytest.mark.parametrize("variant,extra", [
    ("moe", ["variant.calibration_batches=1"]),
    ("moe_neutral", ["variant.calibration_batches=1"]),
    ("mla", []),
    ("lowrank", []),
    ("lowrank_asvd", []),
    ("mla_moe", []),
    ("mla_moe", ["module.distill.weight=10"]),  # the MoE rows' recipe (conf/experiment/finetune/moe.yaml)
])
def test_variant_fine_tunes_and_reloads(variant, extra, mini_corpus, base_ckpt, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train.py", f"variant={variant}", *extra, *_common(mini_corpus, base_ckpt, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert {"base", "after_surgery", "fine_tuned"} <= set(summary["results"])
    assert summary["steps"] == 2
    assert summary["surgery"][0]["replaced"] > 0
    # evaluate.py rebuilds the variant from the checkpoint alone (no variant config given).
    ev = tmp_path / "ev"
    proc = run_cli("evaluate.py", f"ckpt={out / 'final.pt'}", "data=manifest", f"data.root={mini_corpus}",
                   "beam=2", f"paths.output_dir={ev}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["variants"], "the checkpoint must record its surgery"
    assert metrics["wer"] == pytest.approx(summary["results"]["fine_tuned"]["wer"])
    if "gflops_per_audio_s_encoder_analytic" in metrics:  # FlopCounterMode's, but for one feature frame
        ratio = metrics["gflops_per_audio_s_encoder"] / metrics["gflops_per_audio_s_encoder_analytic"]
        assert 1 <= ratio < 1.02, ratio
    assert (out / "surgery.pt").is_file()
    if variant == "mla":  # the variant before fine-tuning reloads to the after-surgery row
        ev = tmp_path / "ev_surgery"
        proc = run_cli("evaluate.py", f"ckpt={out / 'surgery.pt'}", "data=manifest",
                       f"data.root={mini_corpus}", "beam=2", "flops=false", f"paths.output_dir={ev}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        before = json.loads((ev / "metrics.json").read_text())
        assert before["wer"] == pytest.approx(summary["results"]["after_surgery"]["wer"])
    if variant.startswith("moe"):
        assert metrics["params_active"] < metrics["params_total"]
        assert "moe_router_entropy_mean" in metrics


@pytest.mark.parametrize("overrides,needle", [
    (["variant=moe", "variant.top_k=9"], "top_k"),
    (["variant=mla", "variant.kv_rank=100000"], "kv_rank"),
    (["variant=lowrank", "variant.targets=[nonexistent]"], "targets"),
    (["variant=moe", "+variant.topk=2"], "unknown field"),
])
def test_bad_settings_rejected_before_work(overrides, needle, mini_corpus, base_ckpt, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train.py", *overrides, *_common(mini_corpus, base_ckpt, out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "checkpoints").exists()
