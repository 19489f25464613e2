"""variant=moe: exactness of upcycled identical experts, dispatch, losses, inits, FLOPs."""

from __future__ import annotations

import copy

import pytest
import torch

from emformer_variants.errors import UserError
from emformer_variants.metrics.flops import (
    analytic_emformer_rnnt_flops,
    measured_flops,
)
from emformer_variants.metrics.params import count_params
from emformer_variants.models.recognizer import Recognizer, load_recognizer, save_recognizer
from emformer_variants.surgery.moe import (
    MoEConfig,
    MoEFeedForward,
    analytic_encoder_flops_delta,
    collect_moe_losses,
    collect_router_stats,
    shared_neurons,
)
from emformer_variants.surgery.registry import apply_surgery_
from tests.conftest import RC, SEG, make_tiny_rec


def tiny_rec(seed: int = 0) -> Recognizer:
    """A model the project never saw: random weights, D = 64, F = 64, 2 layers."""
    return make_tiny_rec(seed)


def calibration(n: int = 3, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 64, 80, generator=g), torch.tensor([64, 52], dtype=torch.int32))
            for _ in range(n)]


def outputs(rec: Recognizer, x: torch.Tensor, chunks: int = 5):
    """Full-utterance encoder output and ``chunks`` streaming chunks with carried state."""
    with torch.no_grad():
        full, _ = rec.model.transcribe(x, torch.tensor([x.shape[1] - RC]))
        outs, state = [], None
        for c in range(chunks):
            out, _, state = rec.model.transcribe_streaming(
                x[:, c * SEG:c * SEG + SEG + RC], torch.tensor([SEG + RC]), state)
            outs.append(out)
    return full, torch.cat(outs, 1)


def test_upcycled_identical_experts_equal_dense_full_and_streaming():
    rec = tiny_rec()
    dense = copy.deepcopy(rec)
    report = apply_surgery_(rec, {"name": "moe", "num_experts": 4, "top_k": 2, "d_ff": 64})
    assert len(report.replaced) == 2 and report.params_after > report.params_before
    assert all(isinstance(rec.model.get_submodule(f)[1], MoEFeedForward) for f in report.replaced)
    x = torch.randn(1, SEG * 5 + RC, 80)
    full_d, stream_d = outputs(dense, x)
    full_m, stream_m = outputs(rec, x)
    torch.testing.assert_close(full_m, full_d)
    torch.testing.assert_close(stream_m, stream_d)
    # The router really spread tokens over several experts.
    loads = [v for k, v in collect_router_stats(rec.model).items() if "/load" in k and "max" not in k]
    assert sum(v > 0 for v in loads) > 2


@pytest.mark.parametrize("output_scale, expected", [(None, 2.0), (1.0, 1.0), (3.0, 3.0)])
def test_upcycled_partial_experts_scale_their_second_layer(output_scale, expected):
    """d_ff < F: each expert holds H of the F dense neurons, its second layer times
    output_scale (default top_k, so the K chosen parts add up instead of averaging)."""
    rec = tiny_rec()
    ffn = rec.model.transcriber.transformer.emformer_layers[0].pos_ff
    lin1, lin2 = ffn[1], ffn[4]
    apply_surgery_(rec, {"name": "moe", "num_experts": 4, "top_k": 2, "d_ff": 16,
                         "output_scale": output_scale})
    moe = rec.model.transcriber.transformer.emformer_layers[0].pos_ff[1]
    for e in range(4):  # the neurons of expert e: the rows of linear1 it copied
        idx = [int((lin1.weight == row).all(dim=1).nonzero()[0]) for row in moe.w1[e].t()]
        torch.testing.assert_close(moe.w2[e], lin2.weight[:, idx].t() * expected)


def test_round_trip_rebuilds_variant_from_checkpoint(tmp_path):
    rec = tiny_rec()
    spec = {"name": "moe", "num_experts": 4, "top_k": 2, "d_ff_ratio": 0.25, "init": "partition",
            "layers": [1]}
    report = apply_surgery_(rec, spec, calibration=calibration())
    assert report.replaced == ["transcriber.transformer.emformer_layers.1.pos_ff"]
    assert rec.variants[-1]["d_ff"] == 16 and rec.variants[-1]["layers"] == [1]
    save_recognizer(rec, tmp_path / "moe.pt")
    again = load_recognizer(tmp_path / "moe.pt").eval()
    assert again.variants == rec.variants
    x = torch.randn(1, SEG * 3 + RC, 80)
    for a, b in zip(outputs(rec, x, 3), outputs(again, x, 3), strict=True):
        torch.testing.assert_close(a, b)


def test_bad_settings_rejected_before_anything_changes():
    rec = tiny_rec()
    keys = set(rec.state_dict())
    with pytest.raises(UserError, match=r"top_k=3 exceeds num_experts=2"):
        apply_surgery_(rec, {"name": "moe", "num_experts": 2, "top_k": 3})
    with pytest.raises(UserError, match=r"unknown field\(s\) \['experts'\]"):
        apply_surgery_(rec, {"name": "moe", "experts": 4})
    with pytest.raises(UserError, match=r"variant.d_ff=128 exceeds the dense FFN width 64"):
        apply_surgery_(rec, {"name": "moe", "d_ff": 128})
    with pytest.raises(UserError, match=r"init=partition would drop neurons"):
        apply_surgery_(rec, {"name": "moe", "num_experts": 4, "d_ff": 8, "init": "partition"},
                       calibration=calibration(1))
    with pytest.raises(UserError, match=r"needs calibration audio"):
        apply_surgery_(rec, {"name": "moe", "init": "partition"})
    with pytest.raises(UserError, match=r"output_scale=0 must be null or a number > 0"):
        apply_surgery_(rec, {"name": "moe", "output_scale": 0})
    with pytest.raises(UserError, match=r"variant.layers=\[0, 5\]: \[5\] out of range"):
        apply_surgery_(rec, {"name": "moe", "layers": [0, 5]})
    assert set(rec.state_dict()) == keys and rec.variants == []


def test_dispatch_equals_naive_per_token_reference():
    torch.manual_seed(0)
    moe = MoEFeedForward(12, 10, num_experts=5, top_k=3).eval()
    torch.nn.init.normal_(moe.router.weight, std=1.0)  # varied routing
    x = torch.randn(7, 3, 12)
    out = moe(x)
    flat = x.reshape(-1, 12)
    weights, experts, _, _ = moe.route(flat)
    ref = torch.zeros_like(flat)
    for n in range(len(flat)):
        for j in range(moe.top_k):
            e = int(experts[n, j])
            h = torch.nn.functional.gelu(flat[n] @ moe.w1[e] + moe.b1[e])
            ref[n] += weights[n, j] * (h @ moe.w2[e] + moe.b2[e])
    torch.testing.assert_close(out, ref.reshape(7, 3, 12))
    assert len(set(experts.flatten().tolist())) == 5


def test_gradients_reach_router_and_experts():
    torch.manual_seed(0)
    moe = MoEFeedForward(12, 10, num_experts=4, top_k=2, router_jitter=0.01).train()
    moe(torch.randn(20, 12)).pow(2).sum().backward()  # task loss alone trains the router
    for p in (moe.router.weight, moe.w1, moe.b1, moe.w2, moe.b2):
        assert p.grad is not None and p.grad.abs().sum() > 0
    moe.zero_grad()
    moe(torch.randn(20, 12))
    sum(collect_moe_losses(moe).values()).backward()
    assert moe.router.weight.grad.abs().sum() > 0
    assert copy.deepcopy(moe).last_aux_loss is None  # graph telemetry is not copied


def test_aux_losses_finite_and_minimal_at_uniform_routing():
    torch.manual_seed(0)
    moe = MoEFeedForward(12, 10, num_experts=4, top_k=2, aux_loss_weight=0.01, z_loss_weight=1e-3)
    x = torch.randn(64, 12)
    with torch.no_grad():
        moe.router.weight.zero_()
    moe(x)
    torch.testing.assert_close(moe.last_aux_loss, torch.tensor(1.0))  # E * sum (1/E) f_e
    torch.testing.assert_close(moe.last_z_loss, torch.log(torch.tensor(4.0)) ** 2)
    torch.testing.assert_close(moe.last_entropy, torch.log(torch.tensor(4.0)))
    with torch.no_grad():
        moe.router.bias.copy_(torch.tensor([3.0, 2.0, 0.0, 0.0]))  # experts 0, 1 take everything
    moe(x)
    assert moe.last_aux_loss > 1.5 and torch.isfinite(moe.last_z_loss)
    assert moe.last_load.tolist() == [0.5, 0.5, 0.0, 0.0]
    losses = collect_moe_losses(moe)
    torch.testing.assert_close(losses["moe_aux"], 0.01 * moe.last_aux_loss)
    assert collect_moe_losses(torch.nn.Linear(2, 2)) == {}


def test_partition_init_closer_to_dense_than_random():
    """Neutral split (8 experts of F/8, K=2): partition vs random on calibration audio."""
    rec = tiny_rec()
    report = apply_surgery_(rec, {"name": "moe", "num_experts": 8, "top_k": 2,
                                  "d_ff_ratio": 0.125, "init": "partition"},
                            calibration=calibration())
    err = report.extra["calibration_rel_error"]
    print("rel error vs dense (neutral, E=8 K=2 H=F/8):", err)
    assert set(err) == {"upcycle", "partition", "shared", "random"}
    assert err["partition"] < err["upcycle"] < err["random"]
    assert err["partition"] < 0.9
    # Neutral up to the routers and the per-expert copies of the output bias.
    assert report.params_after - report.params_before == 2 * ((64 * 8 + 8) + 7 * 64)
    # Default width (H = 0.375 F) with more overlap gets closer.
    rec2 = tiny_rec()
    err2 = apply_surgery_(rec2, {"name": "moe", "num_experts": 8, "init": "partition"},
                          calibration=calibration()).extra["calibration_rel_error"]
    print("rel error vs dense (E=8 K=2 H=0.375F):", err2)
    assert err2["partition"] < err["partition"]
    assert err2["shared"] < err2["upcycle"]


def test_shared_init_gives_every_expert_the_most_important_neurons_and_keeps_every_neuron():
    g = torch.Generator().manual_seed(0)
    # later neurons matter more
    hidden = torch.linspace(0.1, 2.0, 64) * (1 + 0.1 * torch.rand(200, 64, generator=g))
    w2 = torch.ones(16, 64)
    neurons, core = shared_neurons(hidden, w2, num_experts=8, d_ff=24, generator=g)
    assert core == (8 * 24 - 64) // 7 == 18 and neurons.shape == (8, 24)
    for e in range(8):
        assert set(neurons[e, :core].tolist()) == set(range(64 - core, 64))  # the same core, the top 18
        assert len(set(neurons[e].tolist())) == 24
    assert set(neurons.flatten().tolist()) == set(range(64))  # no neuron dropped
    few, core = shared_neurons(hidden, w2, num_experts=4, d_ff=8)  # E H < F: the 32 most important
    assert core == 0 and set(few.flatten().tolist()) == set(range(32, 64))
    same, core = shared_neurons(hidden, w2, num_experts=4, d_ff=64)  # H = F: identical experts
    assert core == 64 and all(torch.equal(same[e], same[0]) for e in range(4))


def test_active_params_and_flops_of_one_steady_state_chunk():
    rec = tiny_rec()
    config = MoEConfig(num_experts=4, top_k=2)
    report = apply_surgery_(rec, {"name": "moe", "num_experts": 4, "top_k": 2})
    total, active = count_params(rec.model)
    assert total == report.params_after and active < total == count_params(rec.model)[0]
    assert active == report.extra["params_active_after"]
    moe = rec.model.get_submodule(report.replaced[0])[1]
    assert moe.d_ff == 24 and moe.active_param_count() == 64 * 4 + 4 + 2 * (2 * 64 * 24 + 24 + 64)

    analytic = analytic_emformer_rnnt_flops(rec.arch)["encoder"] + analytic_encoder_flops_delta(
        rec.arch, config)
    assert analytic == report.extra["encoder_flops_per_chunk_after"]
    x = torch.randn(1, SEG * 9 + RC, 80)
    state = None
    with torch.no_grad():
        for c in range(9):
            flops, (_, _, state) = measured_flops(
                rec.model.transcribe_streaming, x[:, c * SEG:c * SEG + SEG + RC],
                torch.tensor([SEG + RC]), state)
    assert flops == analytic  # FlopCounterMode counts exactly the K active experts
    assert report.extra["encoder_flops_per_chunk_after"] < report.extra["encoder_flops_per_chunk_before"]
