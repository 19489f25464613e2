"""The engine's MLA attention (``engine/mla.py``): a latent left-context cache, absorbed
projections, against the MLA surgery's module run by torchaudio's ``transcribe_streaming``.

Tiny random torchaudio models with ``variant=mla``; chunk by chunk with state carried.
"""

from __future__ import annotations

import pytest
import torch

from emformer_variants.engine.encoder import StreamingEncoder
from emformer_variants.engine.mla import LatentAttention
from emformer_variants.engine.pipeline import EngineEncoder, StockEncoder, build_pipeline
from emformer_variants.engine.precision import Int4DynamicLinear, Int8DynamicLinear, apply_precision_
from emformer_variants.surgery.registry import apply_surgery_
from tests.conftest import feature_chunks, make_tiny_rec, run_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


def mla_rec(kv_rank: int, absorb: bool = True, seed: int = 3):
    rec = make_tiny_rec(seed)
    apply_surgery_(rec, {"name": "mla", "kv_rank": kv_rank, "absorb": absorb})
    return rec.eval()


@pytest.mark.parametrize("absorb", [True, False])
def test_latent_engine_equals_the_module_streaming(absorb):
    """Over more chunks than the left context holds, so the cache wraps."""
    rec = mla_rec(kv_rank=16, absorb=absorb)
    engine = StreamingEncoder(rec.model)
    assert all(isinstance(layer.attention, LatentAttention) for layer in engine.layers)
    feats = feature_chunks(12)
    torch.testing.assert_close(run_encoder(engine, feats), run_encoder(StockEncoder(rec.model), feats),
                               atol=2e-5, rtol=1e-4)


def test_the_cache_holds_the_latent_only():
    rec = mla_rec(kv_rank=16)
    dense = StreamingEncoder(make_tiny_rec(3).eval().model)
    engine = StreamingEncoder(rec.model)
    state = engine.init(2)
    d = rec.model.transcriber.transformer.emformer_layers[0].input_dim
    left = engine.left
    assert state.nbytes() == len(engine.layers) * 2 * left * 16 * 4
    assert dense.init(2).nbytes() == state.nbytes() * (2 * d // 16)
    _, state = engine.step(feature_chunks(1, streams=2)[0], state)
    assert [tuple(k.shape) for k in state.keys] == [(2, left, 16)] * len(engine.layers)
    assert all(v.numel() == 0 for v in state.values)


def test_full_rank_latent_engine_equals_dense_engine():
    """kv_rank = D: the MLA conversion is exact, so the engine's output is the base's."""
    base = make_tiny_rec(3).eval()
    d = base.model.transcriber.transformer.emformer_layers[0].input_dim
    feats = feature_chunks(6)
    dense = run_encoder(StreamingEncoder(base.model), feats)
    torch.testing.assert_close(run_encoder(StreamingEncoder(mla_rec(kv_rank=d).model), feats), dense,
                               atol=5e-5, rtol=1e-4)


def test_streams_with_different_histories_equal_each_stream_alone():
    """Stream 1 starts two chunks after stream 0: its unused cache slots are masked."""
    rec = mla_rec(kv_rank=8)
    engine = StreamingEncoder(rec.model)
    feats = feature_chunks(6, streams=2)
    state = engine.init(2)
    outs = []
    for i, x in enumerate(feats):
        if i == 2:
            engine.reset(state, 1)
        out, state = engine.step(x, state)
        outs.append(out)
    together = torch.stack(outs)  # (chunks, 2, S, D)
    alone0 = run_encoder(engine, [x[:1] for x in feats])
    alone1 = run_encoder(engine, [x[1:] for x in feats[2:]])
    torch.testing.assert_close(torch.cat(list(together[:, 0]), dim=0), alone0[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(list(together[2:, 1]), dim=0), alone1[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision,kind,tol", [("int8", Int8DynamicLinear, 0.05),
                                                ("int4", Int4DynamicLinear, 0.3)])
def test_quantised_latent_engine_stays_close_and_quantises_the_absorbed_linears(precision, kind, tol):
    rec = mla_rec(kv_rank=16)
    feats = feature_chunks(5)
    ref = run_encoder(StreamingEncoder(rec.model), feats)
    apply_precision_(rec, precision)
    engine = StreamingEncoder(rec.model)
    att = engine.layers[0].attention
    assert isinstance(att.project_in, kind) and isinstance(att.project_out, kind)
    out = run_encoder(engine, feats)
    assert (out - ref).abs().max() < tol * ref.abs().max()


def test_decoders_use_the_engine_encoder_for_mla():
    rec = mla_rec(kv_rank=16)
    assert isinstance(build_pipeline(rec, "exact", 4).encoder, EngineEncoder)
    assert isinstance(build_pipeline(rec, "stock", 4).encoder, StockEncoder)
