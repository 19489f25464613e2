"""models.average: checkpoint averaging is the arithmetic mean and refuses mismatched models."""

from __future__ import annotations

import pytest
import torch

from emformer_variants.errors import UserError
from emformer_variants.models.average import average_recognizers, main
from emformer_variants.models.recognizer import load_recognizer, save_recognizer
from tests.conftest import make_tiny_rec


def _pair():
    a, b = make_tiny_rec(seed=0), make_tiny_rec(seed=1)
    b.features.load_state_dict(a.features.state_dict())  # one recipe: the same feature statistics
    return a, b


def test_average_is_the_mean_of_every_weight():
    a, b = _pair()
    sa, sb = ({k: v.clone() for k, v in r.state_dict().items()} for r in (a, b))
    avg = average_recognizers([a, b], ["a", "b"])
    key = "model.transcriber.transformer.emformer_layers.0.pos_ff.1.weight"
    assert not torch.equal(sa[key], sb[key])
    for k, v in avg.state_dict().items():
        torch.testing.assert_close(v, (sa[k] + sb[k]) / 2 if v.is_floating_point() else sa[k])


def test_mismatched_checkpoints_are_refused():
    a, b = _pair()
    with pytest.raises(UserError, match="at least two"):
        average_recognizers([a], ["a"])
    with pytest.raises(UserError, match=r"^b: features.mean differs from a"):
        average_recognizers([a, make_tiny_rec(seed=1)], ["a", "b"])
    with pytest.raises(UserError, match="^c: a different architecture"):
        average_recognizers([a, make_tiny_rec(transformer_ffn_dim=32)], ["a", "c"])


def test_cli_writes_an_export_that_loads(tmp_path, capsys):
    a, b = _pair()
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for rec, p in zip((a, b), paths, strict=True):
        save_recognizer(rec, p)
    dst = tmp_path / "avg.pt"
    assert main([str(dst), *map(str, paths), "--fp32"]) == 0
    assert "averaged 2 checkpoints" in capsys.readouterr().out
    key = "model.joiner.linear.weight"
    torch.testing.assert_close(load_recognizer(dst).state_dict()[key],
                               (a.state_dict()[key] + b.state_dict()[key]) / 2)
    with pytest.raises(SystemExit):
        main([str(paths[0]), *map(str, paths)])
    assert "also a source" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "new.pt"), str(paths[0]), str(tmp_path / "missing.pt")])
    assert "missing.pt: checkpoint not found; give the path of an existing" in capsys.readouterr().err
    assert not (tmp_path / "new.pt").exists()
