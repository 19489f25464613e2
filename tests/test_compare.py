"""compare: two evaluations of the same utterances, by hand and from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from emformer_variants.compare import compare, main, only_speakers, read_hyps
from emformer_variants.errors import UserError
from tests.conftest import ROOT


def _write(path, hyps, speakers=None):
    refs = ["a b c d", "e f", "g h i j"]
    speakers = speakers or ["x", "x", "y"]
    path.mkdir(parents=True, exist_ok=True)
    (path / "hyps.jsonl").write_text("".join(
        json.dumps({"audio": f"{i}.flac", "ref": r, "hyp": h, "speaker": s}) + "\n"
        for i, (r, h, s) in enumerate(zip(refs, hyps, speakers, strict=True))))
    return path


def test_counts_by_hand(tmp_path):
    a = _write(tmp_path / "a", ["a b c d", "e g", "g h i"])      # 0 + 1 + 1 edits of 10 words
    b = _write(tmp_path / "b", ["a b c d", "e f", "g h i j"])    # 0 edits
    res = compare(read_hyps(a), read_hyps(b), replicates=200)
    assert res["a"].value == pytest.approx(0.2) and res["b"].value == 0.0
    assert res["delta"].value == pytest.approx(-0.2) and res["delta"].high <= 0
    x = res["speakers"]["x"]
    assert (x["utterances"], x["a"], x["b"]) == (2, pytest.approx(1 / 6), 0.0)
    assert x["delta"].value == pytest.approx(-1 / 6) and x["delta"].high <= 0
    assert res["speakers"]["y"]["a"] == pytest.approx(0.25)


def test_cli_prints_the_difference_and_refuses_other_utterances(tmp_path, capsys):
    a = _write(tmp_path / "a", ["a b c d", "e g", "g h i"])
    b = _write(tmp_path / "b", ["a b c d", "e f", "g h i j"])
    assert main([str(a), str(b / "hyps.jsonl"), "--replicates", "200"]) == 0
    out = capsys.readouterr().out
    assert "A: 20.00%" in out and "B: 0.00%" in out and "B - A: -20.00 points" in out
    other = tmp_path / "c"
    other.mkdir()
    (other / "hyps.jsonl").write_text(json.dumps({"audio": "z.flac", "ref": "a", "hyp": "a"}) + "\n")
    with pytest.raises(UserError, match="different utterances"):
        compare(read_hyps(a), read_hyps(other))
    (other / "hyps.jsonl").write_text("{not json\n")
    proc = subprocess.run([sys.executable, "-m", "emformer_variants.compare", str(a), str(other)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "not an evaluate.py hyps.jsonl" in proc.stderr


def test_runs_from_another_checkout_pair_but_other_texts_do_not(tmp_path):
    """The same corpus decoded from a worktree: other absolute paths, same utterances."""
    rows = [{"audio": f"/work/main/cache/synthetic-1/test/{i}.flac", "ref": r, "hyp": r}
            for i, r in enumerate(["a b", "c d"])]
    moved = [dict(r, audio=r["audio"].replace("/work/main/", "/tmp/worktree/")) for r in rows]
    assert compare(rows, moved, replicates=50)["delta"].value == 0.0
    with pytest.raises(UserError, match="different utterances"):
        compare(rows, [dict(moved[0]), dict(moved[1], ref="c e")], replicates=50)
    with pytest.raises(UserError, match="different utterances"):
        compare(rows, [dict(r, audio=r["audio"].replace("synthetic-1", "synthetic-2")) for r in rows])


def test_only_pools_the_named_speakers(tmp_path, capsys):
    a = _write(tmp_path / "a", ["a b c d", "e g", "g h i"])      # speaker x: 1 edit of 6; y: 1 of 4
    b = _write(tmp_path / "b", ["a b c d", "e f", "g h i j"])
    assert main([str(a), str(b), "--replicates", "200", "--only", "y"]) == 0
    out = capsys.readouterr().out
    assert "utterances: 1" in out and "A: 25.00%" in out and "B - A: -25.00 points" in out
    with pytest.raises(UserError, match="has no speaker z; it has x, y"):
        only_speakers(read_hyps(a), ["y", "z"], "a")


def _results(path, sets: dict[str, list[str]]):
    """A results folder (``base.json``) whose base row scored ``sets``."""
    path.mkdir(parents=True)
    (path / "base.json").write_text("{}")
    for name, hyps in sets.items():
        _write(path / "base" / f"base-{name}", hyps)
    return path


def test_two_results_folders_pair_every_set_both_scored(tmp_path, capsys):
    old = _results(tmp_path / "old", {"test": ["a b c d", "e g", "g h i"],
                                      "asterisk": ["a", "e f", "g h i j"],
                                      "test_voice": ["a b c d", "e f", "g h i j"]})
    new = _results(tmp_path / "new", {"test": ["a b c d", "e f", "g h i j"],
                                      "asterisk": ["a b c d", "e f", "g"]})
    assert main([str(old), str(new), "--replicates", "200"]) == 0
    out = capsys.readouterr().out
    assert out.index("== asterisk") < out.index("== test") and "test_voice" not in out
    assert "B - A: -20.00 points" in out.split("== test")[1]  # 2 of 10 words mended
    assert main([str(old), str(new), "--replicates", "200", "--only", "y"]) == 0
    assert capsys.readouterr().out.count("==") == 2  # both sets have speaker y
    for other, message in ((new / "base" / "base-test", "not a results folder like the other"),
                           (_results(tmp_path / "dev", {"dev": ["a", "e", "g"]}), "no set in common")):
        with pytest.raises(SystemExit):
            main([str(old), str(other)])
        assert message in capsys.readouterr().err
