"""The engine's packed MoE FFN (``engine/moe.py``) against the PyTorch MoE module.

Tiny random torchaudio models with ``variant=moe``; the reference is torchaudio's
``transcribe_streaming`` on the same model, chunk by chunk with state carried.
"""

from __future__ import annotations

import copy

import pytest
import torch

from emformer_variants.engine.encoder import StreamingEncoder
from emformer_variants.engine.linear import kernel_impl
from emformer_variants.engine.moe import LinearExpertsFeedForward, PackedMoE
from emformer_variants.engine.pipeline import StockEncoder
from emformer_variants.engine.precision import Int4DynamicLinear, Int8DynamicLinear, apply_precision_
from emformer_variants.surgery.moe import MoEFeedForward, RouterTelemetry, moe_modules
from emformer_variants.surgery.registry import apply_surgery_
from tests.conftest import feature_chunks, make_tiny_rec, require_kernel, run_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


def moe_rec(top_k: int, d_ff: int = 24, init: str = "random", seed: int = 4):
    rec = make_tiny_rec(seed)
    torch.manual_seed(seed)
    apply_surgery_(rec, {"name": "moe", "num_experts": 4, "top_k": top_k, "d_ff": d_ff, "init": init})
    return rec.eval()


@pytest.mark.parametrize("top_k", [1, 2])
def test_packed_moe_equals_the_module_streaming_fp32(top_k):
    require_kernel()
    rec = moe_rec(top_k)
    engine = StreamingEncoder(rec.model)
    assert all(isinstance(layer.ffn, PackedMoE) for layer in engine.layers)
    assert all(kernel_impl(lin) is not None for layer in engine.layers
               for pair in layer.ffn.experts for lin in pair)
    feats = feature_chunks()
    torch.testing.assert_close(run_encoder(engine, feats), run_encoder(StockEncoder(rec.model), feats),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision,kind", [("int8", Int8DynamicLinear), ("int4", Int4DynamicLinear)])
@pytest.mark.parametrize("top_k", [1, 2])
def test_packed_moe_equals_the_quantised_module_streaming(top_k, precision, kind):
    """int8 / int4: the stock pipeline runs the split experts' quantised linears (the same kernel)."""
    require_kernel()
    rec = moe_rec(top_k)
    apply_precision_(rec, precision)
    engine = StreamingEncoder(rec.model)
    assert all(type(lin) is kind for m in moe_modules(rec.model)
               for pair in m.expert_linears() for lin in pair)
    feats = feature_chunks()
    got, want = run_encoder(engine, feats), run_encoder(StockEncoder(rec.model), feats)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_int8_moe_stays_close_to_fp32():
    rec = moe_rec(2)
    fp32 = run_encoder(StreamingEncoder(rec.model), feature_chunks())
    apply_precision_(rec, "int8")
    int8 = run_encoder(StreamingEncoder(rec.model), feature_chunks())
    assert float((int8 - fp32).norm() / fp32.norm()) < 0.05


def test_identical_experts_equal_dense_in_the_engine():
    """Upcycled with d_ff = the dense width: every expert is the dense FFN, the K weights sum to
    1, so the MoE engine gives the dense engine's output (dense runs the fused C++ stack)."""
    dense = make_tiny_rec(4)
    rec = copy.deepcopy(dense)
    apply_surgery_(rec, {"name": "moe", "num_experts": 4, "top_k": 2, "d_ff": 64, "init": "upcycle"})
    feats = feature_chunks(streams=2)
    torch.testing.assert_close(run_encoder(StreamingEncoder(rec.model), feats),
                               run_encoder(StreamingEncoder(dense.model), feats), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4", "int8-fbgemm"])
def test_precision_converts_the_experts(precision):
    rec = moe_rec(2)
    x = torch.randn(1, 6, 64)
    with torch.no_grad():
        want = [m(x) for m in moe_modules(rec.model)]
        apply_precision_(rec, precision)
        mods = moe_modules(rec.model)
        assert mods and all(type(m) is LinearExpertsFeedForward for m in mods)
        assert not any(type(lin) is torch.nn.Linear for m in mods for pair in m.expert_linears()
                       for lin in pair)
        for m, w in zip(mods, want, strict=True):
            assert float((m(x) - w).norm() / w.norm()) < (0.25 if precision == "int4" else 0.05)
            if precision == "int4":  # the router stays int8: same top-k choices as int8 would make
                assert type(m.router) is Int8DynamicLinear


def test_split_experts_compute_the_same_function():
    moe = MoEFeedForward(12, 10, num_experts=5, top_k=3).eval()
    split = LinearExpertsFeedForward.from_moe(moe).eval()
    x = torch.randn(7, 12)
    torch.testing.assert_close(split(x), moe(x))
    assert split.active_param_count() == moe.active_param_count()


def test_router_telemetry_sees_the_engine():
    rec = moe_rec(2)
    telemetry = RouterTelemetry(rec.model)
    run_encoder(StreamingEncoder(rec.model), feature_chunks(3))
    summary = telemetry.summary()
    telemetry.close()
    assert telemetry.calls == 3 and len(summary["moe_load_per_layer"]) == 2
    assert summary["moe_router_entropy_mean"] > 0
    assert all(not m.observers for m in moe_modules(rec.model))  # close() detaches


def test_a_copy_of_a_watched_moe_is_not_watched():
    import copy

    rec = moe_rec(2)
    telemetry = RouterTelemetry(rec.model)
    twin = copy.deepcopy(rec.model)  # a distillation teacher, an EMA
    run_encoder(StreamingEncoder(twin), feature_chunks(2))
    assert telemetry.calls == 0 and all(not m.observers for m in moe_modules(twin))
    telemetry.close()


def test_from_ffn_only_takes_moe():
    rec = make_tiny_rec(4)
    ff = rec.model.transcriber.transformer.emformer_layers[0].pos_ff
    assert PackedMoE.from_ffn(ff) is None
    assert PackedMoE.from_ffn(torch.nn.Linear(4, 4)) is None


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_fused_experts_are_bit_for_bit_the_python_loop(precision):
    from emformer_variants.surgery.moe import per_expert

    require_kernel()
    rec = moe_rec(2)
    apply_precision_(rec, precision)
    ffn = PackedMoE.from_ffn(rec.model.transcriber.transformer.emformer_layers[0].pos_ff)
    grouped = torch.randn(11, 64, generator=torch.Generator().manual_seed(3))
    sizes = [4, 0, 6, 1]
    with torch.inference_mode():
        assert torch.equal(ffn.run(grouped, sizes), per_expert(ffn.expert)(grouped, sizes))
