"""The side-by-side benchmark CLI at tiny size: every mode runs, exact agrees with stock,
many streams report throughput; bad modes are one-line errors."""

from __future__ import annotations

import json
import re

import pytest
import torch

from emformer_variants.bench import SENTENCES, Mode, main
from emformer_variants.engine.packed import kernel
from tests.conftest import corpus_wer_of


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_bench_tiny_interleaved_modes_and_streams(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["--model", "tiny", "--chunks", "8", "--beam", "4", "--modes", "stock", "exact",
                 "modified:2@int8", "greedy@int8-fbgemm", "--streams", "1", "3", "--stream-modes", "exact",
                 "--json", str(out), "--plot", str(tmp_path / "streams.png")])
    assert code == 0
    text = capsys.readouterr().out
    assert "tiny: the shipped trained base" in text and "| stock@fp32 |" in text
    result = json.loads(out.read_text())
    rows = {r["mode"]: r for r in result["single_stream"]}
    assert set(rows) == {"stock@fp32", "exact@fp32", "modified:2@int8", "greedy@int8-fbgemm"}
    assert rows["stock@fp32"]["speedup_vs_stock"] == 1.0
    n = rows["exact@fp32"]["same_as_stock"].split("/")[1]
    assert rows["exact@fp32"]["same_as_stock"] == f"{n}/{n}"
    assert all(r["chunk_ms_p50"] > 0 and r["rtf"] > 0 for r in rows.values())
    assert rows["exact@fp32"]["wer"] == rows["stock@fp32"]["wer"]  # the same transcripts
    n_utts = int(re.search(r"beam 4, (\d+) utterances", text).group(1))
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(n_utts)]  # the bench's references
    assert all(corpus_wer_of(r["wer"], texts) >= 0 for r in rows.values())  # whole numbers of errors
    # matmul work is counted for modes whose linears all run in the packed kernels (or their
    # fallbacks); the fp32-peak floor only for fp32 arithmetic
    assert "gflop_per_chunk" not in rows["stock@fp32"] and "gflop_per_chunk" not in rows["greedy@int8-fbgemm"]
    assert rows["exact@fp32"]["gflop_per_chunk"] > 0 and rows["exact@fp32"]["floor_ms"] > 0
    assert rows["modified:2@int8"]["gflop_per_chunk"] > 0 and "floor_ms" not in rows["modified:2@int8"]
    assert result["fp32_peak_gflops"] > 0
    streams = result["streams"]
    assert [s["streams"] for s in streams] == [1, 3]
    assert all(s["throughput"] > 0 and s["audio_s"] > 0 for s in streams)
    assert all(s["cpu_ms_p99"] > 0 and s["step_ms_p99"] >= s["step_ms_p50"] for s in streams)
    # batched streams decode as a stream alone does: the same WER at every N
    assert streams[0]["wer"] == streams[1]["wer"] == rows["exact@fp32"]["wer"]
    assert (tmp_path / "streams.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_profile_writes_operator_tables(tmp_path, capsys):
    assert main(["--chunks", "3", "--beam", "2", "--modes", "stock", "exact@int8",
                 "--profile", str(tmp_path)]) == 0
    tables = sorted(p.name for p in tmp_path.glob("profile_tiny_*.txt"))
    assert tables == ["profile_tiny_exact_int8.txt", "profile_tiny_stock_fp32.txt"]
    text = (tmp_path / tables[0]).read_text()
    assert "stage:encoder" in text and "stage:search" in text and "Self CPU" in text


def test_bench_mode_syntax():
    assert Mode.parse("modified:4@int8") == Mode("modified", "int8", 4)
    assert Mode.parse("exact").label == "exact@fp32"


@pytest.mark.parametrize("mode,message", [
    ("beam@fp32", "unknown decoder 'beam'"),
    ("exact@fp8", "unknown precision 'fp8'"),
    ("exact:3", "applies to modified and greedy"),
])
def test_bench_bad_modes_are_one_line_errors(mode, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--modes", mode])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_bench_linears_script_prints_every_backend():
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_linears.py"), "--reps", "1"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| encoder") or line.startswith("| joiner")]
    backends = {line.split(" | ")[1] for line in rows}
    assert {"F.linear (MKL)", "fbgemm fp16", "fbgemm dynamic int8"} <= backends
    assert all(float(line.split(" | ")[2]) > 0 for line in rows)


def test_bench_fused_script_compares_fused_and_loop():
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_fused.py"), "--model", "tiny",
                          "--chunks", "3"], capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| fp")]
    assert [r[0] for r in rows] == ["| fp32", "| fp16"] * 3  # encoder, predictor, exact search tables
    assert all(r[-1] == "yes |" and float(r[1]) > 0 and float(r[2]) > 0 for r in rows)


def test_bench_moe_script_times_dense_packed_moe_and_module():
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_moe.py"), "--model", "tiny",
                          "--precision", "fp32", "int8", "--streams", "1", "2", "--chunks", "2"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [line.strip("| ").split(" | ") for line in out.splitlines()
            if line.startswith(("| fp32", "| int8"))]
    assert [(r[0], r[1]) for r in rows] == [("fp32", "1"), ("fp32", "2"), ("int8", "1"), ("int8", "2")]
    assert all(float(v) > 0 for r in rows for v in r[2:5])
    assert all(float(r[7]) < 1e-3 for r in rows)  # the packed MoE computes what the module does


def test_bench_variants_interleaves_stock_and_exact_per_variant(tmp_path, capsys):
    out = tmp_path / "variants.json"
    assert main(["--model", "tiny", "--chunks", "4", "--beam", "3", "--variants", "dense", "lowrank", "mla",
                 "--variant-modes", "exact", "exact@int8", "--json", str(out)]) == 0
    rows = {(r["variant"], r["mode"]): r for r in json.loads(out.read_text())["variants"]}
    modes = ("stock", "exact", "exact@int8")
    assert set(rows) == {(v, m) for v in ("dense", "lowrank", "mla") for m in modes}
    assert rows[("dense", "exact")]["flops_vs_dense"] == 1.0
    assert rows[("lowrank", "exact")]["flops_vs_dense"] < 1.0  # conf/variant/lowrank.yaml: budget 0.58
    assert rows[("mla", "exact")]["encoder"] == "engine"  # the latent cache in the engine (engine/mla.py)
    if kernel() is not None:  # low-rank chains and latent attention run in the fused C++ stack
        assert {rows[(v, "exact")]["encoder_path"] for v in ("dense", "lowrank", "mla")} == {"fused stack"}
    for v in ("dense", "lowrank", "mla"):  # exact search: the stock transcript on every variant
        assert rows[(v, "exact")]["wer"] == rows[(v, "stock")]["wer"]
    assert "| lowrank |" in capsys.readouterr().out
