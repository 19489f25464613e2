"""models.grow: FFN growth computes exactly what the base computes, and the new units can learn."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from emformer_variants.errors import UserError
from emformer_variants.models.grow import _insert_after, grow_depth, grow_ffn, main
from emformer_variants.models.recognizer import load_recognizer, save_recognizer
from emformer_variants.surgery.registry import apply_surgery_
from tests.conftest import RC, ROOT, SEG, make_tiny_rec
from tests.test_surgery_moe import outputs


def rnnt_logits(rec, x):
    tokens = torch.tensor([[rec.blank, 3, 5, 2]])
    with torch.no_grad():
        logits, *_ = rec.model(x, torch.tensor([x.shape[1]]), tokens, torch.tensor([4]))
    return logits


def test_grown_model_equals_base_full_streaming_and_joint():
    rec = make_tiny_rec()
    before = {k: v.clone() for k, v in rec.state_dict().items()}
    grown, report = grow_ffn(rec, 160, seed=3)
    grown.eval()
    assert report["ffn_dim"] == [64, 160] and report["layers"] == 2
    d = rec.arch["time_reduction_input_dim"] * rec.arch["time_reduction_stride"]
    assert report["params"][1] - report["params"][0] == 2 * (160 - 64) * (2 * d + 1)
    assert grown.arch["transformer_ffn_dim"] == 160 and rec.arch["transformer_ffn_dim"] == 64
    assert all(torch.equal(v, rec.state_dict()[k]) for k, v in before.items())  # source untouched
    x = torch.randn(1, SEG * 5 + RC, 80)
    for a, b in zip(outputs(grown, x), outputs(rec, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(rnnt_logits(grown, x), rnnt_logits(rec, x), rtol=0, atol=1e-6)
    # The new units are real: random input weights, and their zero output weights get gradient.
    ffn_in = grown.model.transcriber.transformer.emformer_layers[0].pos_ff[1]
    ffn_out = grown.model.transcriber.transformer.emformer_layers[0].pos_ff[4]
    assert ffn_in.weight[64:].abs().sum() > 0 and ffn_out.weight[:, 64:].abs().sum() == 0
    grown.train()
    out, _ = grown.model.transcribe(x, torch.tensor([x.shape[1] - RC]))
    out.square().mean().backward()
    assert ffn_out.weight.grad[:, 64:].abs().sum() > 0


def test_seed_fixes_new_units_and_same_width_is_a_copy():
    rec = make_tiny_rec()
    a, _ = grow_ffn(rec, 96, seed=1)
    b, _ = grow_ffn(rec, 96, seed=1)
    c, _ = grow_ffn(rec, 96, seed=2)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.state_dict()["model.transcriber.transformer.emformer_layers.0.pos_ff.1.weight"],
                           c.state_dict()["model.transcriber.transformer.emformer_layers.0.pos_ff.1.weight"])
    same, _ = grow_ffn(rec, 64)
    assert all(torch.equal(v, rec.state_dict()[k]) for k, v in same.state_dict().items())


def test_bad_requests_are_one_line_errors():
    rec = make_tiny_rec()
    with pytest.raises(UserError, match=r"--ffn-dim 32: smaller than the current 64"):
        grow_ffn(rec, 32)
    apply_surgery_(rec, {"name": "moe", "num_experts": 2, "top_k": 1, "d_ff": 32})
    with pytest.raises(UserError, match=r"carries surgery \['moe'\]; grow a base without surgery"):
        grow_ffn(rec, 128)


def test_cli_writes_a_base_that_reloads_with_the_new_width(tmp_path, capsys):
    src, dst = tmp_path / "base.pt", tmp_path / "grown.pt"
    rec = make_tiny_rec()
    save_recognizer(rec, src)
    assert main([str(src), str(dst), "--ffn-dim", "128", "--fp32"]) == 0
    assert "ffn 64 -> 128 in 2 layers" in capsys.readouterr().out
    grown = load_recognizer(dst).eval()
    assert grown.arch["transformer_ffn_dim"] == 128 and grown.variants == []
    x = torch.randn(1, SEG * 3 + RC, 80)
    torch.testing.assert_close(outputs(grown, x, 3)[1], outputs(rec, x, 3)[1], rtol=0, atol=1e-6)
    # A bad request leaves no file behind and prints one line, no traceback.
    bad = tmp_path / "bad.pt"
    proc = subprocess.run([sys.executable, "-m", "emformer_variants.models.grow", str(src), str(bad),
                           "--ffn-dim", "8"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and not bad.exists()
    assert "--ffn-dim 8: smaller than the current 64" in proc.stderr


@pytest.mark.parametrize("num_layers", [3, 5])
def test_deeper_model_equals_base_full_streaming_and_joint(num_layers):
    rec = make_tiny_rec()
    # Non-trivial output-norm affines, so moving them is tested (a fresh LayerNorm is 1 and 0).
    with torch.no_grad():
        for layer in rec.model.transcriber.transformer.emformer_layers:
            layer.layer_norm_output.weight.uniform_(0.5, 1.5)
            layer.layer_norm_output.bias.uniform_(-0.3, 0.3)
    before = {k: v.clone() for k, v in rec.state_dict().items()}
    grown, report = grow_depth(rec, num_layers)
    grown.eval()
    assert report["layers"] == [2, num_layers] and len(report["inserted_after"]) == num_layers - 2
    assert grown.arch["transformer_num_layers"] == num_layers and rec.arch["transformer_num_layers"] == 2
    assert all(torch.equal(v, rec.state_dict()[k]) for k, v in before.items())  # source untouched
    per_layer = sum(p.numel() for p in rec.model.transcriber.transformer.emformer_layers[0].parameters())
    assert report["params"][1] - report["params"][0] == (num_layers - 2) * per_layer
    x = torch.randn(1, SEG * 5 + RC, 80)
    for a, b in zip(outputs(grown, x), outputs(rec, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    torch.testing.assert_close(rnnt_logits(grown, x), rnnt_logits(rec, x), rtol=0, atol=1e-4)
    # The zeroed branches learn: their output weights get gradient at once.
    new = grown.model.transcriber.transformer.emformer_layers[report["inserted_after"][0] + 1]
    assert new.attention.out_proj.weight.abs().sum() == 0
    grown.train()
    out, _ = grown.model.transcribe(x, torch.tensor([x.shape[1] - RC]))
    out.square().mean().backward()
    assert new.attention.out_proj.weight.grad.abs().sum() > 0 and new.pos_ff[4].weight.grad.abs().sum() > 0


def test_new_layers_spread_evenly_and_fewer_layers_is_an_error():
    assert _insert_after(6, 10) == [0, 1, 3, 4]
    assert _insert_after(6, 9) == [1, 2, 4]
    assert _insert_after(2, 3) == [0]
    assert _insert_after(6, 6) == []
    with pytest.raises(UserError, match=r"--layers 1: fewer than the current 2"):
        grow_depth(make_tiny_rec(), 1)


def test_cli_grows_width_and_depth_in_one_call(tmp_path, capsys):
    src, dst = tmp_path / "base.pt", tmp_path / "grown.pt"
    rec = make_tiny_rec()
    save_recognizer(rec, src)
    assert main([str(src), str(dst), "--ffn-dim", "96", "--layers", "4", "--fp32"]) == 0
    out = capsys.readouterr().out
    assert "ffn 64 -> 96 in 2 layers" in out and "layers 2 -> 4" in out
    grown = load_recognizer(dst).eval()
    assert grown.arch["transformer_num_layers"] == 4 and grown.arch["transformer_ffn_dim"] == 96
    x = torch.randn(1, SEG * 3 + RC, 80)
    torch.testing.assert_close(outputs(grown, x, 3)[1], outputs(rec, x, 3)[1], rtol=0, atol=1e-4)
