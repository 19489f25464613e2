"""``evaluate.py ckpt=... surgery=NAME``: the variant straight after surgery (calibrated where it
reads activations), saved as surgery.pt, which scores the same when evaluated again."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli


def _eval(mini_corpus, out, *overrides):
    return run_cli("evaluate.py", "data=manifest", f"data.root={mini_corpus}", "beam=2", "flops=false",
                   f"paths.output_dir={out}", *overrides)


def test_surgery_is_applied_calibrated_saved_and_reloads(mini_corpus, tiny_base_ckpt, tmp_path):
    out = tmp_path / "asvd"
    proc = _eval(mini_corpus, out, f"ckpt={tiny_base_ckpt}", "surgery=lowrank_asvd", "calibration_batches=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [v["name"] for v in metrics["variants"]] == ["lowrank"]
    assert metrics["variants"][0]["method"] == "whiten"  # activation-aware: calibration audio was read
    assert metrics["surgery"]["name"] == "lowrank_asvd"
    saved = torch.load(out / "surgery.pt", map_location="cpu", weights_only=False)
    assert saved["meta"]["steps"] == 0
    again = tmp_path / "again"
    proc = _eval(mini_corpus, again, f"ckpt={out / 'surgery.pt'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((again / "metrics.json").read_text())["wer"] == pytest.approx(metrics["wer"])


def test_dense_surgery_changes_nothing_and_unknown_names_fail_first(mini_corpus, tiny_base_ckpt, tmp_path):
    out = tmp_path / "dense"
    proc = _eval(mini_corpus, out, f"ckpt={tiny_base_ckpt}", "surgery=dense")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["variants"] == []
    assert not (out / "surgery.pt").exists()
    proc = _eval(mini_corpus, tmp_path / "bad", f"ckpt={tiny_base_ckpt}", "surgery=nope")
    assert proc.returncode == 2
    assert "surgery=nope: no conf/variant/nope.yaml" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr


def test_surgery_args_replace_fields_of_the_variant_file(mini_corpus, tiny_base_ckpt, tmp_path):
    out = tmp_path / "moe"
    proc = _eval(mini_corpus, out, f"ckpt={tiny_base_ckpt}", "surgery=moe", "max_utterances=2",
                 "surgery_args={output_scale: 1.5, num_experts: 4}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (variant,) = json.loads((out / "metrics.json").read_text())["variants"]
    assert (variant["name"], variant["output_scale"], variant["num_experts"]) == ("moe", 1.5, 4)
    bad = [("surgery_args={experts: 4}", "surgery_args: ['experts'] not in conf/variant/moe.yaml"),
           ("surgery_args={output_scale: -1}", "output_scale=-1 must be null or a number > 0")]
    for args, message in bad:
        proc = _eval(mini_corpus, tmp_path / "bad", f"ckpt={tiny_base_ckpt}", "surgery=moe", args)
        assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    proc = _eval(mini_corpus, tmp_path / "bad2", f"ckpt={tiny_base_ckpt}", "surgery_args={top_k: 1}")
    assert proc.returncode == 2
    assert "surgery_args: set only with surgery=NAME" in proc.stderr.strip().splitlines()[-1]
