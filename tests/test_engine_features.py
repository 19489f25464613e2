"""The engine's feature step (kernels/log_mel.cpp): the extractor's frames, bit for bit."""

from __future__ import annotations

import pytest
import torch

from emformer_variants.engine.features import EngineFeatures
from emformer_variants.engine.pipeline import build_pipeline
from emformer_variants.engine.stream import chunk_windows
from tests.conftest import require_kernel


def test_same_bits_as_the_extractor_on_speech_noise_and_silence(base_rec, two_sentences):
    require_kernel()
    fe = base_rec.features
    cfg = fe.cfg
    fast = EngineFeatures(fe)
    windows = list(chunk_windows(two_sentences, cfg.segment_samples, cfg.window_samples))
    g = torch.Generator().manual_seed(0)
    windows += [torch.randn(cfg.window_samples, generator=g) * s for s in (1e-5, 0.01, 1.0, 30.0)]
    windows += [torch.zeros(cfg.window_samples)]
    for w in windows:
        assert torch.equal(fast(w), fe.streaming(w).unsqueeze(0))
    batch = torch.stack(windows[:5])
    assert torch.equal(fast(batch), fe.streaming(batch))


def test_windows_shorter_than_one_fft_take_the_extractor(base_rec):
    fe = base_rec.features
    short = torch.randn(fe.cfg.n_fft - 1)
    assert torch.equal(EngineFeatures(fe)(short), fe.streaming(short.unsqueeze(0)))


@pytest.mark.parametrize("decoder", ["stock", "exact", "greedy"])
def test_engine_pipelines_use_it_and_stock_keeps_torchaudio(base_rec, decoder):
    pipe = build_pipeline(base_rec, decoder, beam=2)
    assert (pipe.features is None) == (decoder == "stock")
