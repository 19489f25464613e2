"""Latency figures (pure functions of evaluation rows) and evaluate.py's decoder,
precision, plots, profile and subset options through the real CLI."""

from __future__ import annotations

import json

import pytest
import torch

from emformer_variants.data.manifest import read_manifest
from emformer_variants.engine.packed import isa, kernel
from emformer_variants.evaluation.evaluate import pick_utterances
from emformer_variants.reporting.latency_plots import latency_figures, write_latency_plots
from tests.conftest import run_cli

ROWS = [
    {"audio_s": 2.0 + i, "rtf": 0.1 * (i + 1), "ttft_s": None if i == 3 else 0.3 + 0.05 * i,
     "chunk_ms": [10.0 + i + k for k in range(12 + i)],
     "features_ms": [1.0] * (12 + i), "encoder_ms": [4.0 + i] * (12 + i),
     "decoder_ms": [5.0 + k for k in range(12 + i)]}
    for i in range(4)
]


def test_latency_figures_are_pure_and_complete():
    figs = latency_figures(ROWS, segment_ms=160, algorithmic_s=0.2)
    assert set(figs) == {"latency_cdf", "ttft", "rtf", "latency_over_time"}
    cdf = figs["latency_cdf"].axes[0]
    assert [line.get_label() for line in cdf.get_lines()][:4] == ["features", "encoder", "decoder", "total"]
    assert ROWS[0]["chunk_ms"][0] == 10.0  # inputs untouched


def test_write_latency_plots_writes_pngs(tmp_path):
    paths = write_latency_plots(ROWS, tmp_path / "run")
    names = sorted(p.name for p in paths)
    assert names == ["latency_cdf.png", "latency_over_time.png", "rtf.png", "ttft.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_ttft_still_plots(tmp_path):
    rows = [dict(r, ttft_s=None) for r in ROWS]
    assert len(write_latency_plots(rows, tmp_path)) == 4


def test_evaluate_cli_decoder_precision_plots_profile(mini_corpus, tmp_path):
    decoder, precision = "exact", "int8"
    proc = run_cli("evaluate.py", "ckpt=base", "data=manifest", f"data.root={mini_corpus}", "beam=3",
                   f"decoder={decoder}", f"precision={precision}", "plots=true", "profile=true",
                   "flops=false", "split=train", "max_utterances=3", "subset=random", "seed=7",
                   f"paths.output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["decoder"] == decoder and metrics["precision"] == precision
    assert metrics["precision_method"].startswith("dynamic int8") and (
        (f"packed {isa()} int8 kernel" in metrics["precision_method"]) == (kernel() is not None))
    assert metrics["linear_kernel"] == (f"packed-{isa()}" if kernel() is not None else "torch")
    # the checkpoint's parameters, not what is left as nn.Parameter after the int8 swap
    assert metrics["params_total"] == metrics["params_active"] == 5_948_958
    # subset=random: the seeded sample, in corpus order
    train = read_manifest(mini_corpus / "train.jsonl")
    picked = [u.audio for u in pick_utterances(train, 3, "random", seed=7)]
    decoded = [json.loads(line)["audio"] for line in (tmp_path / "hyps.jsonl").read_text().splitlines()]
    assert decoded == picked and metrics["subset"] == "random (seed 7)"
    assert metrics["algorithmic_latency_s"] == pytest.approx(0.2)
    for name in ("latency_cdf", "ttft", "rtf", "latency_over_time"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert "stage:search" in (tmp_path / "profile.txt").read_text()
    row = json.loads((tmp_path / "hyps.jsonl").read_text().splitlines()[0])
    assert len(row["encoder_ms"]) == len(row["chunk_ms"]) == len(row["decoder_ms"])


def test_pick_utterances_first_or_seeded_random():
    utts = list(range(10))
    assert pick_utterances(utts, 3) == [0, 1, 2]
    assert pick_utterances(utts, None) == utts and pick_utterances(utts, 20) == utts
    a = pick_utterances(utts, 4, "random", seed=1)
    assert a == sorted(a) and len(set(a)) == 4 and a == pick_utterances(utts, 4, "random", seed=1)
    assert a != pick_utterances(utts, 4, "random", seed=2) or a != pick_utterances(utts, 4, "random", seed=3)


@pytest.mark.parametrize("setting,message", [
    ("decoder=viterbi", "decoder=viterbi: unknown; choose one of stock, exact, modified, greedy"),
    ("precision=fp8", "precision=fp8: unknown; choose one of fp32, bf16, fp16, int8, int4, int8-fbgemm"),
    ("max_symbols=2", "max_symbols=2: a count >= 1, for decoder=modified or greedy only"),
])
def test_evaluate_rejects_unknown_settings_first(setting, message, capsys):
    from hydra import compose, initialize_config_dir

    import evaluate
    from emformer_variants.utils.paths import PROJECT_ROOT

    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=["ckpt=missing.pt", "threads=1", setting])
    threads = torch.get_num_threads()
    with pytest.raises(SystemExit) as exc:
        evaluate.run(cfg)  # before the missing checkpoint is noticed
    torch.set_num_threads(threads)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
