"""variant=lowrank: exactness at full rank, error vs rank, activation-aware methods, budget
allocation, analytic FLOPs vs FlopCounterMode, checkpoint round trip, bad settings."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from emformer_variants.errors import UserError
from emformer_variants.metrics.flops import (
    analytic_emformer_rnnt_flops,
    emformer_base_arch,
    measured_flops,
)
from emformer_variants.models.features import FeatureConfig
from emformer_variants.models.recognizer import Recognizer, load_recognizer, save_recognizer
from emformer_variants.models.tokenizer import train_tokenizer
from emformer_variants.surgery.lowrank import (
    CalibStats,
    LowRankConfig,
    LowRankLinear,
    analytic_encoder_flops_delta,
    linear_geometry,
)
from emformer_variants.surgery.registry import apply_surgery_, config_from_spec
from tests.conftest import RC, SEG, TEXTS
from tests.conftest import tiny_arch as conftest_tiny_arch

ROOT = Path(__file__).resolve().parent.parent
ALL_GROUPS = ["ffn", "attention", "encoder_io", "predictor", "lstm", "joiner"]
ENCODER_GROUPS = ["ffn", "attention", "encoder_io"]


def tiny_arch(**kw) -> dict:
    # D = 16 x 4 = 64, FFN 96: square and non-square linears, ranks up to 64.
    return conftest_tiny_arch(**{"transformer_ffn_dim": 96, "transformer_dropout": 0.0,
                                 "lstm_dropout": 0.0, **kw})


def make_rec(**kw) -> Recognizer:
    torch.manual_seed(0)  # random weights: a model the project never saw
    return Recognizer(tiny_arch(**kw), FeatureConfig(), train_tokenizer(TEXTS * 5),
                      torch.randn(80), torch.rand(80) + 0.5).eval()


@pytest.fixture(scope="module")
def base() -> Recognizer:
    return make_rec()


@pytest.fixture(scope="module")
def calib() -> list:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(2, 80, 80, generator=g), torch.tensor([80, 64], dtype=torch.int32))
            for _ in range(3)]


def lowrank(base, calibration=None, init="convert", **spec):
    rec = copy.deepcopy(base)
    report = apply_surgery_(rec, {"name": "lowrank", **spec}, init=init, calibration=calibration)
    return rec, report


def outputs(rec, seed=2, chunks=6):
    """Full transcribe, chunked transcribe_streaming with carried state, predictor+joiner."""
    g = torch.Generator().manual_seed(seed)
    frames = SEG * chunks
    x = torch.randn(1, frames + RC, 80, generator=g)
    tokens = torch.randint(0, rec.tokenizer.num_symbols, (1, 5), generator=g)
    with torch.no_grad():
        full, _ = rec.model.transcribe(x, torch.tensor([frames]))
        outs, state = [], None
        for start in range(0, frames, SEG):
            out, _, state = rec.model.transcribe_streaming(x[:, start:start + SEG + RC],
                                                           torch.tensor([SEG + RC]), state)
            outs.append(out)
        pred, pred_len, _ = rec.model.predict(tokens, torch.tensor([5]), None)
        joint, _, _ = rec.model.join(full, torch.tensor([full.shape[1]]), pred, pred_len)
    return {"transcribe": full, "streaming": torch.cat(outs, 1), "joiner": joint}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------- exactness

@pytest.mark.parametrize("method", ["svd", "asvd", "whiten"])
def test_full_rank_reproduces_base(base, calib, method):
    targets = ALL_GROUPS if method == "svd" else ENCODER_GROUPS  # calibration runs the encoder
    rec, report = lowrank(base, calib, targets=targets, ratio=1.0, skip_if_not_smaller=False,
                          method=method)
    assert not report.extra["skipped"]
    n_linear = sum(type(m) is nn.Linear for m in base.model.modules())
    assert len(report.replaced) == (n_linear if method == "svd" else n_linear - 4)
    assert all(isinstance(rec.model.get_submodule(k), LowRankLinear) for k in report.replaced)
    got, want = outputs(rec), outputs(base)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("method", ["svd", "whiten"])
def test_output_error_shrinks_as_rank_grows(base, calib, method):
    want = outputs(base)
    errors = []
    for r in (4, 24, 48):
        rec, _ = lowrank(base, calib, rank=r, method=method, skip_if_not_smaller=False)
        got = outputs(rec)
        errors.append(max(rel_err(got[k], want[k]) for k in ("transcribe", "streaming")))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.5 * errors[0], errors


def _anisotropic(n: int, n_in: int, gen: torch.Generator) -> torch.Tensor:
    """Correlated inputs whose channel scales span 2.5 decades (like real activations)."""
    fixed = torch.Generator().manual_seed(5)
    mix = torch.eye(n_in) + 0.3 * torch.randn(n_in, n_in, generator=fixed)
    scales = torch.logspace(-1.5, 1.0, n_in)[torch.randperm(n_in, generator=fixed)]
    return (torch.randn(n, n_in, generator=gen) @ mix) * scales


def test_activation_aware_beats_plain_svd_on_anisotropic_inputs():
    torch.manual_seed(0)
    lin = nn.Linear(48, 64)
    gen = torch.Generator().manual_seed(1)
    x_cal, x_test = _anisotropic(4000, 48, gen), _anisotropic(4000, 48, gen)
    xd = x_cal.double()
    stats = CalibStats(abs_mean=xd.abs().mean(0), gram=xd.T @ xd / len(xd), rows=len(xd))
    with torch.no_grad():
        y = lin(x_test)
        for rank in (4, 12, 24):
            err = {m: rel_err(LowRankLinear.from_linear(lin, rank, m, stats)(x_test), y)
                   for m in ("svd", "asvd", "whiten")}
            # whiten minimises the calibration output error exactly (Eckart-Young on W L).
            assert err["whiten"] < 0.8 * err["svd"] and err["asvd"] < 0.8 * err["svd"], (rank, err)
            assert err["whiten"] <= err["asvd"] * 1.05, (rank, err)


# ---------------------------------------------------------------- rank selection

@pytest.mark.parametrize("metric", ["params", "flops"])
def test_budget_allocation_meets_target(base, metric):
    budget = 0.5
    rec, report = lowrank(base, targets=["ffn", "attention"], budget=budget, budget_metric=metric)
    layers = report.extra["layers"]
    if metric == "params":
        bias = {k: v["params_before"] - v["in"] * v["out"] for k, v in layers.items()}
        kept = (sum(v["params_after"] - bias[k] for k, v in layers.items())
                / sum(v["params_before"] - bias[k] for k, v in layers.items()))
    else:
        kept = (sum(v["flops_per_chunk_after"] for v in layers.values())
                / sum(v["flops_per_chunk_before"] for v in layers.values()))
    assert budget - 0.03 <= kept <= budget, kept
    ranks = report.extra["ranks"]
    assert len(set(ranks.values())) > 1  # allocated per layer, not one uniform rank
    for k, r in ranks.items():  # the report matches the modules
        assert rec.model.get_submodule(k).rank == r


def test_energy_picks_smallest_rank_keeping_the_energy(base):
    _, report = lowrank(base, energy=0.9, skip_if_not_smaller=False)
    for k, info in report.extra["layers"].items():
        assert info["energy_kept"] >= 0.9
        w = base.model.get_submodule(k).weight.detach().double()
        s2 = torch.linalg.svdvals(w).square()
        assert float(s2[:info["rank"] - 1].sum() / s2.sum()) < 0.9, k


def test_skip_if_not_smaller_reports_the_layers_left_dense(base):
    # ratio 0.6 -> r = 38: 38 x (64 + 64) >= 64 x 64 (square q/out proj: skipped), but
    # 38 x (64 + 128) < 64 x 128 (kv) and 38 x (64 + 96) < 64 x 96 (FFN): factorised.
    rec, report = lowrank(base, ratio=0.6)
    skipped = set(report.extra["skipped"])
    assert skipped and all(k.endswith(("emb_to_query", "out_proj")) for k in skipped)
    assert set(report.replaced) == set(report.extra["ranks"])
    assert all(k.endswith(("emb_to_key_value", "pos_ff.1", "pos_ff.4")) for k in report.replaced)
    assert all(type(rec.model.get_submodule(k)) is nn.Linear for k in skipped)
    assert report.params_after < report.params_before


# ---------------------------------------------------------------- FLOPs

def _last_chunk_flops(model, arch, chunks=4) -> int:
    """Left context (8 frames) and memory (2) are full from chunk index 2 on."""
    g = torch.Generator().manual_seed(3)
    frames = arch["segment_length"] + arch["right_context_length"]
    state, n = None, 0
    with torch.no_grad():
        for _ in range(chunks):
            x = torch.randn(1, frames, arch["input_dim"], generator=g)
            n, (_, _, state) = measured_flops(model.transcriber.infer, x, torch.tensor([frames]), state)
    return n


@pytest.mark.parametrize("memory", [0, 2])
def test_analytic_flops_delta_matches_flop_counter(memory):
    base = make_rec(transformer_max_memory_size=memory)
    rec, report = lowrank(base, targets=ENCODER_GROUPS, budget=0.6, budget_metric="flops")
    before, after = _last_chunk_flops(base.model, base.arch), _last_chunk_flops(rec.model, rec.arch)
    delta = analytic_encoder_flops_delta(base.arch, report.extra["ranks"])
    assert after - before == delta  # every changed matmul is accounted for exactly
    base_analytic = analytic_emformer_rnnt_flops(base.arch)["encoder"]
    assert report.extra["encoder_flops_per_chunk_before"] == base_analytic
    analytic_after = report.extra["encoder_flops_per_chunk_after"]
    assert after == analytic_after
    assert analytic_after < 0.7 * report.extra["encoder_flops_per_chunk_before"]


def test_analytic_delta_from_a_shape_only_config(base):
    config = LowRankConfig(rank=8)
    _, report = lowrank(base, rank=8)
    assert analytic_encoder_flops_delta(base.arch, config) == \
        analytic_encoder_flops_delta(base.arch, report.extra["ranks"]) < 0


@pytest.mark.parametrize("name", ["lowrank", "lowrank_asvd"])
def test_variant_yaml_cuts_base_encoder_flops_by_30_percent(name):
    spec = yaml.safe_load((ROOT / "conf" / "variant" / f"{name}.yaml").read_text())
    config = config_from_spec(spec)
    assert config.targets == ["ffn", "attention"] and config.budget_metric == "flops"
    arch = emformer_base_arch()
    geo = linear_geometry(arch)
    targeted = sum(2 * g.rows_per_chunk * g.in_features * g.out_features for k, g in geo.items()
                   if any(p in k for p in ("pos_ff", "attention.")))
    encoder = analytic_emformer_rnnt_flops(arch)["encoder"]
    # The allocation keeps at most budget x the targeted FLOPs (test above).
    assert (1 - config.budget) * targeted >= 0.30 * encoder


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_rebuilds_the_same_ranks(base, calib, tmp_path):
    # Data-dependent ranks (whitened spectra + global budget): only the recorded ranks can
    # rebuild them, since load_recognizer has no calibration data.
    rec, report = lowrank(base, calib, budget=0.5, budget_metric="params", method="whiten")
    spec = rec.variants[-1]
    assert spec == report.extra["resolved_spec"] and spec["ranks"] == report.extra["ranks"]
    path = tmp_path / "lowrank.pt"
    save_recognizer(rec, path)
    again = load_recognizer(path).eval()  # init="empty", no calibration data
    for k, r in report.extra["ranks"].items():
        assert again.model.get_submodule(k).rank == r
    for k in report.extra["skipped"]:
        assert type(again.model.get_submodule(k)) is nn.Linear
    got, want = outputs(again), outputs(rec)
    for key in want:
        torch.testing.assert_close(got[key], want[key])


# ---------------------------------------------------------------- bad settings

@pytest.mark.parametrize("spec, message", [
    ({"targets": ["fnn"], "rank": 4}, r"variant.targets: unknown group 'fnn'"),
    ({"targets": ["transcriber.nothing.*"], "rank": 4}, r"variant.targets: .* matches no nn.Linear"),
    ({"rank": 65}, r"variant.rank=65 exceeds .* max is 64"),
    ({"targets": ["joiner"], "rank": 64}, r"variant.rank=64 .* joiner.linear; max is \d+"),
    ({"rank": 4, "ratio": 0.5}, r"exactly one of rank, ratio, energy, budget"),
    ({}, r"exactly one of rank, ratio, energy, budget"),
    ({"ratio": 1.5}, r"variant.ratio=1.5 must be a number in \(0, 1\]"),
    ({"rank": 0}, r"variant.rank=0 must be an integer >= 1"),
    ({"rank": 4, "method": "pca"}, r"variant.method='pca'"),
    ({"budget": 0.5, "budget_metric": "time"}, r"variant.budget_metric='time'"),
    ({"rnak": 4}, r"unknown field\(s\) \['rnak'\]"),
    ({"rank": 4, "method": "whiten"}, r"variant.method=whiten needs calibration"),
    ({"rank": 4, "method": "asvd"}, r"variant.method=asvd needs calibration"),
    ({"targets": ["joiner"], "budget": 0.5}, r"budget_metric=flops .* not encoder linears"),
    ({"budget": 0.02, "min_rank": 8}, r"variant.budget=0.02: even min_rank=8"),
    ({"ranks": {"joiner.linear": 4}}, r"variant.ranks: .* not among the linears"),
])
def test_bad_settings_are_rejected_before_any_change(base, spec, message):
    rec = copy.deepcopy(base)
    with pytest.raises(UserError, match=message):
        apply_surgery_(rec, {"name": "lowrank", **spec})
    assert not any(isinstance(m, LowRankLinear) for m in rec.model.modules())
    assert rec.variants == []


def test_calibration_cannot_reach_predictor_or_joiner(base, calib):
    with pytest.raises(UserError, match=r"method=whiten needs activations of \['joiner.linear'\]"):
        lowrank(base, calib, targets=["attention", "joiner"], rank=4, method="whiten")


def test_empty_init_needs_resolved_ranks_for_energy(base):
    with pytest.raises(UserError, match=r"init='empty' needs the resolved variant.ranks"):
        lowrank(base, init="empty", energy=0.9)
    rec, report = lowrank(base, init="empty", method="whiten", ratio=0.25)  # shapes only: fine
    assert report.extra["ranks"] and not report.extra["skipped"]
