"""variant=mla: exactness at full rank (plain and absorbed), error vs rank, latent cache
size, checkpoint round trip, clear errors, analytic FLOPs vs FlopCounterMode."""

from __future__ import annotations

import copy

import pytest
import torch

from emformer_variants.errors import UserError
from emformer_variants.metrics.flops import analytic_emformer_rnnt_flops, emformer_base_arch, measured_flops
from emformer_variants.metrics.memory import tensor_bytes
from emformer_variants.models.recognizer import Recognizer, load_recognizer, save_recognizer
from emformer_variants.surgery.mla import (
    MLAAttention,
    MLAConfig,
    MLAEmformerLayer,
    analytic_encoder_flops_delta,
)
from emformer_variants.surgery.registry import apply_surgery_, config_from_spec
from tests.conftest import RC, SEG, make_tiny_rec

D = 64  # tiny model width: time_reduction_input_dim 16 x stride 4


def make_rec(**kw) -> Recognizer:
    rec = make_tiny_rec(**kw)
    with torch.no_grad():  # a non-zero key/value bias, so dropping/folding it is tested
        for layer in rec.model.transcriber.transformer.emformer_layers:
            layer.attention.emb_to_key_value.bias.normal_()
    return rec.eval()


@pytest.fixture(scope="module")
def base_rec() -> Recognizer:
    return make_rec()


def mla(rec: Recognizer, **fields) -> Recognizer:
    rec = copy.deepcopy(rec)
    apply_surgery_(rec, {"name": "mla", **fields})
    return rec.eval()


def stream(rec: Recognizer, x: torch.Tensor, chunks: int):
    """Encoder output of ``chunks`` streaming steps with carried state, and the last state."""
    outs, state = [], None
    with torch.no_grad():
        for k in range(chunks):
            out, _, state = rec.model.transcribe_streaming(x[:, k * SEG:k * SEG + SEG + RC],
                                                           torch.tensor([SEG + RC]), state)
            outs.append(out)
    return torch.cat(outs, 1), state


def full(rec: Recognizer, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return rec.model.transcribe(x, lengths)[0]


@pytest.mark.parametrize("memory", [0, 2])
@pytest.mark.parametrize("absorb", [False, True])
def test_full_rank_reproduces_base(memory, absorb):
    base = make_rec(transformer_max_memory_size=memory) if memory else make_rec()
    var = mla(base, kv_rank=D, absorb=absorb)
    assert all(isinstance(layer, MLAEmformerLayer)
               for layer in var.model.transcriber.transformer.emformer_layers)
    torch.manual_seed(1)
    chunks = 6
    x = torch.randn(2, chunks * SEG + RC, 80)
    # Full utterance, batch of 2 with padding (padding mask over keys).
    lengths = torch.tensor([chunks * SEG, chunks * SEG - 20])
    torch.testing.assert_close(full(var, x, lengths), full(base, x, lengths), atol=1e-5, rtol=1e-5)
    # Streaming, state carried over the chunks (left-context cache full after 2 chunks).
    a, state_a = stream(var, x[:1], chunks)
    b, _ = stream(base, x[:1], chunks)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert state_a[0][1].shape == (8, 1, D)  # latent cache: L frames x r


def test_absorbed_equals_plain_at_reduced_rank(base_rec):
    x = torch.randn(1, 5 * SEG + RC, 80)
    plain_rec, absorbed_rec = mla(base_rec, kv_rank=12), mla(base_rec, kv_rank=12, absorb=True)
    with torch.inference_mode():  # as engine.stream.stream_decode runs it
        absorbed, _ = stream(absorbed_rec, x, 5)
    torch.testing.assert_close(absorbed, stream(plain_rec, x, 5)[0], atol=1e-5, rtol=1e-5)
    # The cached W_o W_uv follows in-place weight updates (optimizer steps, load_state_dict).
    with torch.no_grad():
        for rec in (plain_rec, absorbed_rec):
            rec.model.transcriber.transformer.emformer_layers[0].attention.value_up.weight.mul_(2)
    torch.testing.assert_close(stream(absorbed_rec, x, 5)[0], stream(plain_rec, x, 5)[0],
                               atol=1e-5, rtol=1e-5)


def test_error_shrinks_with_rank(base_rec):
    torch.manual_seed(2)
    x = torch.randn(1, 6 * SEG + RC, 80)
    ref, _ = stream(base_rec, x, 6)
    errors = []
    for r in (D // 8, D // 4, D // 2, D):
        out, _ = stream(mla(base_rec, kv_rank=r), x, 6)
        errors.append(((out - ref).norm() / ref.norm()).item())
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-5, errors


def test_state_caches_latent(base_rec):
    x = torch.randn(1, 4 * SEG + RC, 80)
    _, base_state = stream(base_rec, x, 4)
    _, state = stream(mla(base_rec, kv_rank_ratio=0.25), x, 4)
    lc, r = 8, D // 4
    for layer_base, layer in zip(base_state, state, strict=True):
        assert len(layer) == 3 and layer[1].shape == (lc, 1, r)
        assert tensor_bytes(layer_base[1:3]) == 2 * D / r * tensor_bytes(layer[1])  # 8x
        assert tensor_bytes(layer[0]) == tensor_bytes(layer_base[0])  # memory as before
        assert torch.equal(layer[2], layer_base[3])  # past_length as before
    per_layer_saved = 4 * lc * (2 * D - r)
    assert tensor_bytes(base_state) - tensor_bytes(state) == 2 * per_layer_saved
    # Only the chosen layers change.
    _, state = stream(mla(base_rec, kv_rank=8, layers=[1]), x, 4)
    assert len(state[0]) == 4 and len(state[1]) == 3


@pytest.mark.parametrize("absorb", [False, True])
def test_checkpoint_round_trip(base_rec, tmp_path, absorb):
    var = mla(base_rec, kv_rank=16, absorb=absorb, layers=[0, 1])
    path = tmp_path / "mla.pt"
    save_recognizer(var, path)
    again = load_recognizer(path).eval()
    assert again.variants == var.variants
    attn = again.model.transcriber.transformer.emformer_layers[0].attention
    assert isinstance(attn, MLAAttention) and attn.kv_rank == 16 and attn.absorb is absorb
    x = torch.randn(1, 4 * SEG + RC, 80)
    torch.testing.assert_close(stream(again, x, 4)[0], stream(var, x, 4)[0])
    assert "model.transcriber.transformer.emformer_layers.0.attention.kv_down.weight" in var.state_dict()


def test_training_forward_has_gradients(base_rec):
    var = mla(base_rec, kv_rank=16).train()
    out, _ = var.model.transcribe(torch.randn(2, 2 * SEG + RC, 80), torch.tensor([2 * SEG, SEG]))
    out.square().mean().backward()
    attn = var.model.transcriber.transformer.emformer_layers[0].attention
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in (attn.kv_down.weight, attn.key_up.weight, attn.value_up.weight))


def test_rank_too_large_is_rejected_before_any_change(base_rec):
    rec = copy.deepcopy(base_rec)
    before = {k: v.clone() for k, v in rec.state_dict().items()}
    with pytest.raises(UserError, match=r"variant\.kv_rank=65 .*maximum 64"):
        apply_surgery_(rec, {"name": "mla", "kv_rank": 65})
    with pytest.raises(UserError, match=r"variant\.layers=\[0, 2\].*2 Emformer layers"):
        apply_surgery_(rec, {"name": "mla", "kv_rank": 8, "layers": [0, 2]})
    assert rec.variants == [] and rec.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in rec.state_dict().items())
    apply_surgery_(rec, {"name": "mla", "kv_rank": 8})
    with pytest.raises(UserError, match="only once"):
        apply_surgery_(rec, {"name": "mla", "kv_rank": 8})


@pytest.mark.parametrize("fields, match", [
    ({}, "kv_rank"),
    ({"kv_rank": 0}, "kv_rank=0"),
    ({"kv_rank_ratio": 1.5}, "kv_rank_ratio=1.5"),
    ({"kv_rank": 8, "layers": [1, 1]}, "duplicates"),
    ({"kv_rank": 8, "rank": 3}, "unknown field"),
])
def test_bad_settings_give_clear_errors(fields, match):
    with pytest.raises(UserError, match=match):
        config_from_spec({"name": "mla", **fields})


def test_yaml_default_shrinks_cache_at_least_4x():
    import yaml

    from emformer_variants.utils.paths import PROJECT_ROOT

    spec = yaml.safe_load((PROJECT_ROOT / "conf/variant/mla.yaml").read_text())
    config = config_from_spec(spec)
    assert 2 * 512 / config.rank_for(512) >= 4 and 2 * D / config.rank_for(D) >= 4


@pytest.mark.parametrize("absorb", [False, True])
def test_analytic_flops_match_flop_counter(base_rec, absorb):
    config = MLAConfig(kv_rank=12, absorb=absorb)
    var = mla(base_rec, kv_rank=12, absorb=absorb)
    x = torch.randn(1, 9 * SEG + RC, 80)
    _, state = stream(var, x, 8)
    with torch.no_grad():
        measured, _ = measured_flops(var.model.transcribe_streaming, x[:, 8 * SEG:8 * SEG + SEG + RC],
                                     torch.tensor([SEG + RC]), state)
    analytic = (analytic_emformer_rnnt_flops(var.arch)["encoder"]
                + analytic_encoder_flops_delta(var.arch, config))
    assert measured == analytic


@pytest.mark.slow
def test_base_arch_state_bytes():
    """emformer_base_arch (D = 512, L = 30, 20 layers), random weights, conf/variant/mla.yaml:
    per-stream state 2,457,680 -> 307,280 bytes (K/V cache 2D -> r = D/4 floats per frame)."""
    import types

    import yaml
    from torchaudio.models import emformer_rnnt_model

    from emformer_variants.utils.paths import PROJECT_ROOT

    torch.manual_seed(0)
    arch = emformer_base_arch(4097)
    rec = types.SimpleNamespace(model=emformer_rnnt_model(**arch).eval(), arch=arch, variants=[])
    x = torch.randn(1, 8 * SEG + RC, 80)

    def state_bytes() -> int:
        return tensor_bytes(stream(rec, x, 8)[1])

    before = state_bytes()
    apply_surgery_(rec, yaml.safe_load((PROJECT_ROOT / "conf/variant/mla.yaml").read_text()))
    after = state_bytes()
    layers, lc, d, r, past_length = 20, 30, 512, 128, 4
    assert before == layers * (2 * lc * d * 4 + past_length) == 2_457_680
    assert after == layers * (lc * r * 4 + past_length) == 307_280
