"""scripts/probe_mismatch.py: every transform gives usable audio; the probe scores a real
checkpoint on transformed copies and pairs each with the untouched audio."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.conftest import ROOT


def _probe():
    spec = importlib.util.spec_from_file_location("probe_mismatch", ROOT / "scripts" / "probe_mismatch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_transform_gives_finite_mono_audio():
    probe = _probe()
    t = torch.arange(16000) / 16000
    wave = 0.3 * torch.sin(2 * torch.pi * 150 * t) * (1 + torch.sin(2 * torch.pi * 3 * t))
    for name, (_, fn) in probe.TRANSFORMS.items():
        y = fn(wave)
        assert y.dim() == 1 and torch.isfinite(y).all() and 8000 < y.numel() <= 32000, name
    assert torch.equal(probe.TRANSFORMS["orig"][1](wave), wave)


def test_probe_scores_transformed_copies_against_the_original(mini_corpus, tiny_base_ckpt, tmp_path, capsys,
                                                             monkeypatch):
    probe = _probe()
    monkeypatch.chdir(tmp_path.parent)  # --out relative to the caller's folder, not the project's
    args = ["--ckpt", str(tiny_base_ckpt), "--manifest", str(mini_corpus / "test.jsonl"),
            "--transforms", "quiet", "--out", tmp_path.name]
    assert probe.main(args) == 0
    out = capsys.readouterr().out
    assert "| orig |" in out and "| quiet | peak at -20 dBFS |" in out
    rows = json.loads((tmp_path / "test-2" / "probe.json").read_text())["rows"]
    assert set(rows) == {"orig", "quiet"} and rows["orig"]["delta"] == 0.0
    assert rows["quiet"]["delta"] == pytest.approx(rows["quiet"]["wer"] - rows["orig"]["wer"])
    assert json.loads((tmp_path / "test-2" / "quiet" / "test.jsonl").read_text().splitlines()[0])["audio"] \
        == "audio/00000.flac"  # the manifest moves with its folder
    assert probe.main(args) == 0  # scored once: the second run reads the same runs back
    assert capsys.readouterr().out.count("[probe]") == 2
