"""The results tables: WER with bootstrap intervals and paired differences to the base, per
set and per held-out voice; and results.py end to end on tiny sizes through the real CLIs."""

from __future__ import annotations

import hashlib
import json

import pytest

from emformer_variants.results import cell, main, voice_table, wer_table


def _m(wer: float, low: float, high: float, delta: tuple | None = None, **kw) -> dict:
    m = {"wer": wer, "wer_interval": {"value": wer, "low": low, "high": high}, **kw}
    if delta:
        m["delta_vs_base"] = {"value": delta[0], "low": delta[1], "high": delta[2],
                              "significant": not delta[1] <= 0 <= delta[2]}
    return m


def test_cells_mark_significant_differences_only():
    assert cell(None) == "-"
    assert cell(_m(0.30, 0.25, 0.35)) == "30.0 [25.0, 35.0]"
    assert cell(_m(0.40, 0.35, 0.45, (0.10, 0.04, 0.16))) == "40.0 [35.0, 45.0]; Δ +10.0 [+4.0, +16.0]*"
    assert cell(_m(0.31, 0.26, 0.36, (0.01, -0.02, 0.04))) == "31.0 [26.0, 36.0]; Δ +1.0 [-2.0, +4.0]"


def test_tables_per_set_and_per_voice():
    scored = {
        "base": {"base": {"test_voice": _m(0.5, 0.4, 0.6, wer_by_speaker={"a": 0.4, "b": 0.6},
                                           wer_speaker_mean=0.5)}},
        "mla": {"surgery": {"test_voice": _m(0.7, 0.6, 0.8, (0.2, 0.1, 0.3),
                                             wer_by_speaker={"a": 0.6, "b": 0.8}, wer_speaker_mean=0.7)},
                "final": {}},
    }
    lines = wer_table(scored, "test_voice").splitlines()
    assert lines[2] == "| base | 50.0 [40.0, 60.0] | 50.0 [40.0, 60.0] |"
    assert lines[3] == "| mla | 70.0 [60.0, 80.0]; Δ +20.0 [+10.0, +30.0]* | - |"
    voices = voice_table(scored).splitlines()
    assert voices[0] == "| row | stage | a | b | mean of voices |"
    assert voices[3] == "| mla | surgery | 60.0 | 80.0 | 70.0 |"


def test_bad_options_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--rows", "nope"])
    assert e.value.code == 2 and "unknown" in capsys.readouterr().err


def _run(mini_corpus, tiny_base_ckpt, out, *extra):
    data = ["data=manifest", f"data.root={mini_corpus}", f"model.ckpt={tiny_base_ckpt}"]
    return main(["--rows", "base", "mla", "--sets", "test", "--max-utterances", "2", "--replicates", "200",
                 "--jobs", "1", "--out", str(out), *extra, "--eval", *data, "beam=2",
                 "--train", *data, "augment=none", "module.val_beam=2"])


def test_surgery_rows_without_training(mini_corpus, tiny_base_ckpt, tmp_path, capsys):
    """Fast: base and mla right after surgery (evaluate.py surgery=mla), no train run."""
    assert _run(mini_corpus, tiny_base_ckpt, tmp_path, "--stages", "base", "surgery") == 0
    out = capsys.readouterr().out
    assert "| mla | " in out and "Δ" in out
    data = json.loads((tmp_path / "results.json").read_text())
    mla = data["rows"]["mla"]["surgery"]["test"]
    assert mla["variants"][0]["name"] == "mla" and mla["num_utterances"] == 2
    assert mla["wer_interval"]["low"] <= mla["wer"] <= mla["wer_interval"]["high"]
    assert mla["delta_vs_base"]["num_utterances"] == 2
    assert not (tmp_path / "mla" / "train").exists()
    assert (tmp_path / "pareto_wer_vs_encoder_gflops.png").read_bytes()[:4] == b"\x89PNG"
    # --no-run: the same table from what exists; the missing final stage and set run nothing
    (tmp_path / "results.json").unlink()
    assert _run(mini_corpus, tiny_base_ckpt, tmp_path, "--no-run", "--sets", "test", "test_voice") == 0
    again = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert again["mla"]["surgery"]["test"]["wer"] == mla["wer"] and "final" not in again["mla"]
    assert "test_voice" not in again["mla"]["surgery"] and not (tmp_path / "mla" / "train").exists()


@pytest.mark.slow
def test_results_end_to_end_with_recovery(mini_corpus, tiny_base_ckpt, tmp_path, capsys):
    """Every stage: base, after surgery, after the mla recovery recipe (1 step)."""
    assert _run(mini_corpus, tiny_base_ckpt, tmp_path, "--steps", "1") == 0
    data = json.loads((tmp_path / "results.json").read_text())
    final = data["rows"]["mla"]["final"]["test"]
    assert "delta_vs_base" in final and final["variants"][0]["name"] == "mla"
    train = json.loads((tmp_path / "mla" / "train" / "metrics.json").read_text())
    assert train["steps"] == 1 and train["exported"]["export"] in ("start", "best")
    md = (tmp_path / "results.md").read_text()
    assert "### test" in md and "Costs of the final models" in md and "train.py experiment=finetune/mla" in md
    for stem in ("encoder_gflops", "latency", "kv_bytes"):
        assert (tmp_path / f"pareto_wer_vs_{stem}.png").is_file()


def test_a_results_folder_belongs_to_one_base(tmp_path):
    """The default folder is named by the base's SHA-256; a folder made with another base is
    refused with a one-line error instead of mixing two bases' numbers in one table."""
    from emformer_variants.errors import UserError
    from emformer_variants.results import base_identity, claim_out

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"base a")
    b.write_bytes(b"base b")
    ida, idb = base_identity([f"model.ckpt={a}"]), base_identity(["beam=2", f"model.ckpt={b}"])
    assert ida["sha256"] == hashlib.sha256(b"base a").hexdigest() != idb["sha256"]
    assert base_identity([])["base"].endswith("checkpoints/tiny_base.pt")
    out = tmp_path / "results"
    claim_out(out, ida)
    claim_out(out, ida)  # the same base again: fine (a resumed run)
    with pytest.raises(UserError, match="another base"):
        claim_out(out, idb)
    with pytest.raises(UserError, match="not found"):
        base_identity([f"model.ckpt={tmp_path / 'missing.pt'}"])


def test_an_interrupted_recipe_resumes_from_its_last_checkpoint(tmp_path):
    """A train folder with last.ckpt and no metrics.json is resumed (ckpt_path=, its ended
    run's claim released); a run still going is not touched; a finished one runs nothing."""
    import os
    import socket

    from emformer_variants.errors import UserError
    from emformer_variants.results import _resume_args

    train = tmp_path / "train"
    assert _resume_args(train) == []
    (train / "checkpoints").mkdir(parents=True)
    (train / "checkpoints" / "last.ckpt").write_bytes(b"x")
    claim = train / ".run.json"
    claim.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(UserError, match="still going"):
        _resume_args(train)
    claim.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))  # no such process
    assert _resume_args(train) == [f"ckpt_path={train / 'checkpoints' / 'last.ckpt'}"]
    assert not claim.exists()
    (train / "metrics.json").write_text("{}")
    assert _resume_args(train) == []
