"""Many streams at once on the shipped tiny base with TTS speech: streams that start at
different chunks, decoded in one batch (one encoder, joiner and predictor call per step for
all of them), give each stream the transcript it gets alone; the batched one-symbol
selection of modified beam search equals one top-k per stream."""

from __future__ import annotations

import pytest
import torch

from emformer_variants.bench import SENTENCES, bench_audio
from emformer_variants.engine.pipeline import build_pipeline
from emformer_variants.engine.stream import Stream, chunk_windows, stream_decode
from emformer_variants.metrics.wer import error_rates
from emformer_variants.models.recognizer import load_recognizer
from emformer_variants.utils.paths import PROJECT_ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rec_and_waves():
    rec = load_recognizer(PROJECT_ROOT / "checkpoints" / "tiny_base.pt").eval()
    waves, _ = bench_audio(80, rec.features.cfg.segment_samples)
    return rec, waves[:3]  # whole utterances


def staggered(rec, pipe, waves: list[torch.Tensor]) -> list[list[int]]:
    """Stream i starts at chunk i; idle slots before the start and after the end get
    silence and keep their beam. Returns each stream's best tokens."""
    cfg = rec.features.cfg
    windows = [list(chunk_windows(w, cfg.segment_samples, cfg.window_samples)) for w in waves]
    n = len(waves)
    stream = Stream(rec, pipe, n)
    silence = torch.zeros(cfg.window_samples)
    steps = max(i + len(w) for i, w in enumerate(windows))
    for k in range(steps):
        live = [0 <= k - i < len(windows[i]) for i in range(n)]
        for i in range(n):
            if k == i:
                stream.restart(i)
        batch = torch.stack([windows[i][k - i] if live[i] else silence for i in range(n)])
        before = list(stream.beams)
        stream.step(batch)
        stream.beams = [stream.beams[i] if live[i] else before[i] for i in range(n)]
    return [stream.best_tokens(i) for i in range(n)]


@pytest.mark.parametrize("decoder,opts", [("modified", {}), ("modified", {"max_symbols": 4}),
                                          ("greedy", {"max_symbols": 1}), ("greedy", {})])
def test_batched_streams_equal_each_stream_alone(rec_and_waves, decoder, opts):
    rec, waves = rec_and_waves
    together = staggered(rec, build_pipeline(rec, decoder, 4, **opts), waves)
    alone_opts = {**opts, "batched": False} if decoder == "modified" else opts
    for wave, tokens in zip(waves, together, strict=True):
        alone = stream_decode(rec, wave, pipeline=build_pipeline(rec, decoder, 4, **alone_opts))
        assert rec.tokenizer.decode(tokens) == alone.text
    texts = [rec.tokenizer.decode(t) for t in together]
    assert error_rates(SENTENCES[:len(texts)], texts)["wer"] < 0.7  # speech, not noise, was decoded


@pytest.mark.parametrize("max_symbols", [1, 4])
def test_batched_selection_equals_per_stream_loop(rec_and_waves, max_symbols):
    """Beams (tokens and scores) with the batched selection equal the per-stream top-k's."""
    rec, waves = rec_and_waves
    fast = build_pipeline(rec, "modified", 4, max_symbols=max_symbols)
    slow = build_pipeline(rec, "modified", 4, max_symbols=max_symbols, batched=False)
    cfg = rec.features.cfg
    n = len(waves)
    windows = [list(chunk_windows(w, cfg.segment_samples, cfg.window_samples)) for w in waves]
    beams_fast, beams_slow = [None] * n, [None] * n
    state = fast.encoder.init(n)
    with torch.inference_mode():
        for k in range(min(len(w) for w in windows)):
            feats = rec.features.streaming(torch.stack([w[k] for w in windows]))
            enc, state = fast.encoder.step(feats, state)
            beams_fast = fast.search.step(enc, beams_fast)
            beams_slow = slow.search.step(enc, beams_slow)
            for a, b in zip(beams_fast, beams_slow, strict=True):
                assert [(h.tokens, h.score) for h in a] == [(h.tokens, h.score) for h in b]
