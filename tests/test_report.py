"""Pareto front (pure function) and the report CLI on hand-made run folders."""

from __future__ import annotations

import json
import math

import pytest

from emformer_variants.metrics.pareto import pareto_front
from emformer_variants.report import main


def test_pareto_front_basic():
    #        0    1    2    3    4
    xs = [1.0, 2.0, 3.0, 2.5, 4.0]
    ys = [0.5, 0.3, 0.1, 0.35, 0.1]
    # 3 is dominated by 1 (cheaper and better); 4 by 2 (same WER, dearer).
    assert pareto_front(xs, ys) == [0, 1, 2]


def test_pareto_front_ties_missing_and_order():
    xs = [2.0, 2.0, 1.0, None, 3.0, math.nan, 1.0]
    ys = [0.2, 0.2, 0.4, 0.0, 0.2, 0.0, 0.5]
    # Exact duplicates (0, 1) are both on the front; 4 ties on WER but costs more; 6 is
    # dominated by 2 at equal cost; missing/NaN points take no part.
    assert pareto_front(xs, ys) == [2, 0, 1]
    assert pareto_front([], []) == []
    with pytest.raises(ValueError):
        pareto_front([1.0], [])


def test_pareto_front_matches_brute_force():
    import random

    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 12)
        xs = [rng.choice([1, 2, 3, 4]) for _ in range(n)]
        ys = [rng.choice([0.1, 0.2, 0.3]) for _ in range(n)]
        brute = {i for i in range(n) if not any(
            xs[j] <= xs[i] and ys[j] <= ys[i] and (xs[j] < xs[i] or ys[j] < ys[i]) for j in range(n))}
        assert set(pareto_front(xs, ys)) == brute


def _fake_run(root, name, variant, overrides, results):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / "metrics.json").write_text(json.dumps({"results": results, "variant_name": variant,
                                                  "split": "test"}))


def _m(wer, gflops, rtf, kv, params):
    return {"wer": wer, "cer": wer / 2, "gflops_per_audio_s": gflops, "rtf": rtf, "kv_cache_bytes": kv,
            "params_total": params, "params_active": params}


def test_report_writes_table_csv_and_plots(tmp_path, capsys):
    base = _m(0.30, 1.0, 0.05, 40000, 5_000_000)
    _fake_run(tmp_path, "a", "dense", [], {"base": base, "fine_tuned": _m(0.28, 1.0, 0.05, 40000, 5_000_000)})
    _fake_run(tmp_path, "b", "mla", ["variant=mla", "variant.kv_rank=16"],
              {"base": base, "fine_tuned": _m(0.33, 0.95, 0.045, 5000, 4_800_000)})
    _fake_run(tmp_path, "c", "mla", ["variant=mla", "variant.kv_rank=64"],
              {"base": base, "fine_tuned": _m(0.29, 0.97, 0.048, 20000, 4_900_000)})
    _fake_run(tmp_path, "d", "moe", ["variant=moe", "variant.top_k=2"],
              {"base": base, "fine_tuned": _m(0.35, 1.2, 0.07, 40000, 4_000_000)})
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mla kv_rank=16" in out and "mla kv_rank=64" in out and "moe top_k=2" in out
    assert (tmp_path / "report.csv").read_text().count("\n") == 1 + 4 * 2
    for stem in ("gflops", "rtf", "kv_bytes", "active_params"):
        png = tmp_path / f"pareto_wer_vs_{stem}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"plot: {png}" in out


def test_report_without_runs_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_report_tabulates_and_plots_a_sweep_with_only_validation(tmp_path, capsys):
    """Sweep jobs run with eval.before=false eval.after=false: each metrics.json has empty
    results and its validation; those become the rows and the plotted points."""
    runs = [(16, 0.31, 4_800_000, 0.9), (64, 0.27, 4_900_000, 0.95)]
    for i, (rank, wer, params, gflops) in enumerate(runs):
        run = tmp_path / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- variant=mla\n- variant.kv_rank={rank}\n")
        (run / "metrics.json").write_text(json.dumps({
            "results": {}, "variant_name": "mla", "split": "test",
            "val": {"val/wer": wer + 0.01, "val/wer_best": wer, "val/cer": wer / 2,
                    "val/num_utterances": 40.0},
            "model": {"params_total": params, "params_active": params,
                      "gflops_per_audio_s_encoder_analytic": gflops}}))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| validation | mla | mla kv_rank=16 | dev | 0.31 |" in out
    assert "| validation | mla | mla kv_rank=64 | dev | 0.27 |" in out
    for stem in ("active_params", "encoder_gflops"):
        png = tmp_path / f"pareto_wer_vs_{stem}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"plot: {png}" in out
