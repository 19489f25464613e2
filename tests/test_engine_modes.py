"""Fast modes against plain reference implementations written from the papers'
pseudo-code with torchaudio's ``predict``/``join`` (one hypothesis at a time, predictor
re-run from the start of each prefix), and batched streams against single streams."""

from __future__ import annotations

import math

import pytest
import torch

from emformer_variants.engine.pipeline import build_pipeline
from tests.conftest import make_tiny_rec

pytestmark = pytest.mark.usefixtures("one_thread")


def encodings(rec, chunks: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state, out = None, []
    with torch.inference_mode():
        for _ in range(chunks):
            enc, _, state = rec.model.transcribe_streaming(torch.randn(1, 21, 80, generator=gen),
                                                           torch.tensor([21]), state)
            out.append(enc)
    return out


def log_probs(model, enc_t: torch.Tensor, tokens: tuple) -> torch.Tensor:
    pred, _, _ = model.predict(torch.tensor([list(tokens)]), torch.tensor([len(tokens)]), None)
    logits, _, _ = model.join(enc_t.view(1, 1, -1), torch.tensor([1]), pred[:, -1:], torch.tensor([1]))
    return torch.log_softmax(logits[0, 0, 0], dim=-1)


def reference_modified(model, blank: int, beam: int, encs, max_symbols: int) -> dict[tuple, float]:
    """icefall's modified beam search, generalised to K rounds per frame as documented in
    engine/modified.py: per round the beam best (hypothesis, symbol) pairs over blank and
    symbols; blank ends the frame, a symbol is scored again (last round: moves on)."""
    hyps = {(blank,): 0.0}
    with torch.inference_mode():
        for enc in encs:
            for t in range(enc.shape[1]):
                ended: dict[tuple, float] = {}
                current = hyps
                for rnd in range(max_symbols):
                    if not current:
                        break
                    keys = list(current)
                    cand = torch.tensor([[current[k]] for k in keys]) + torch.stack(
                        [log_probs(model, enc[0, t], k) for k in keys])
                    scores, idx = cand.reshape(-1).topk(min(beam, cand.numel()))
                    floor = -math.inf
                    if rnd and len(ended) >= beam:
                        floor = sorted(ended.values(), reverse=True)[beam - 1]
                    extended: dict[tuple, float] = {}
                    for s, i in zip(scores.tolist(), idx.tolist(), strict=True):
                        if s <= floor:
                            break
                        parent, v = keys[i // cand.shape[1]], i % cand.shape[1]
                        last = rnd == max_symbols - 1
                        if v == blank:
                            key, table = parent, ended
                        else:
                            key, table = parent + (v,), ended if last else extended
                        table[key] = float(torch.tensor(table[key]).logaddexp(torch.tensor(s))) \
                            if key in table else s
                    current = extended
                hyps = dict(sorted(ended.items(), key=lambda kv: -kv[1])[:beam])
    return hyps


def reference_greedy(model, blank: int, encs, max_symbols: int) -> tuple:
    tokens = (blank,)
    with torch.inference_mode():
        for enc in encs:
            for t in range(enc.shape[1]):
                for _ in range(max_symbols):
                    v = int(log_probs(model, enc[0, t], tokens).argmax())
                    if v == blank:
                        break
                    tokens = tokens + (v,)
    return tokens


def run_search(pipe, encs, streams: int = 1):
    states = [None] * streams
    for enc in encs:
        states = pipe.search.step(enc.expand(streams, -1, -1), states)
    return states


@pytest.mark.parametrize("max_symbols", [1, 2, 3])
def test_modified_beam_search_equals_reference(max_symbols):
    rec = make_tiny_rec(4)
    encs = encodings(rec, 4, seed=max_symbols)
    want = reference_modified(rec.model, rec.blank, 4, encs, max_symbols)
    pipe = build_pipeline(rec, "modified", 4, max_symbols=max_symbols)
    [got] = run_search(pipe, encs)
    assert {h.tokens for h in got} == set(want)
    for h in got:
        assert h.score == pytest.approx(want[h.tokens], abs=1e-3)


@pytest.mark.parametrize("max_symbols", [1, 3])
def test_greedy_equals_reference(max_symbols):
    rec = make_tiny_rec(5)
    encs = encodings(rec, 4, seed=7)
    pipe = build_pipeline(rec, "greedy", 1, max_symbols=max_symbols)
    [got] = run_search(pipe, encs)
    assert got[0].tokens == reference_greedy(rec.model, rec.blank, encs, max_symbols)
    assert len(got[0].tokens) > 1


@pytest.mark.parametrize("decoder,opts", [("modified", {"max_symbols": 2}), ("greedy", {}), ("exact", {})])
def test_streams_batched_equal_streams_alone(decoder, opts):
    rec = make_tiny_rec(6)
    a, b = encodings(rec, 3, seed=1), encodings(rec, 3, seed=2)
    pipe = build_pipeline(rec, decoder, 3, **opts)
    together = [None, None]
    for x, y in zip(a, b, strict=True):
        together = pipe.search.step(torch.cat([x, y]), together)
    for i, encs in enumerate([a, b]):
        [alone] = run_search(build_pipeline(rec, decoder, 3, **opts), encs)
        assert [h.tokens for h in together[i]] == [h.tokens for h in alone]


def test_prefix_cache_frees_stale_prefixes_and_keeps_live_ones():
    rec = make_tiny_rec(7)
    encs = encodings(rec, 12, seed=3)
    pipe = build_pipeline(rec, "exact", 4, keep_chunks=1)
    states = [None]
    for enc in encs:
        states = pipe.search.step(enc, states)
        cache = pipe.search.cache
        live = {h.tokens for h in states[0]}
        assert live <= set(cache.slot_of)
        assert len(cache.slot_of) + len(cache.free) == cache.capacity
    assert pipe.search.cache.computed > len(pipe.search.cache.slot_of)  # something was freed


def test_a_beam_not_passed_to_recent_steps_is_rejected_not_misread():
    rec = make_tiny_rec(8)
    encs = encodings(rec, 9, seed=4)
    pipe = build_pipeline(rec, "exact", 3, keep_chunks=1)
    gen = torch.Generator().manual_seed(9)
    first = pipe.search.step(torch.randn(3, *encs[0].shape[1:], generator=gen), [None] * 3)
    live, paused, forgotten = first[:1], first[1:2], first[2:]
    for enc in encs[1:8]:
        # stream 0 runs; stream 1 is paused: its beam is passed and the old one kept
        new = pipe.search.step(torch.cat([enc, enc]), [live[0], paused[0]])
        live = new[:1]
    assert pipe.search.step(encs[8], paused)  # still valid after 7 steps
    assert any(pipe.search.cache.slot_of.get(h.tokens) != h.slot for h in forgotten[0])
    with pytest.raises(ValueError, match="stale beam"):
        pipe.search.step(encs[8], forgotten)


@pytest.mark.parametrize("decoder", ["exact", "modified", "greedy"])
def test_identical_streams_share_prefixes_without_leaking_slots(decoder):
    """Streams reaching the same prefix in the same round compute it once."""
    rec = make_tiny_rec(9)
    encs = encodings(rec, 4, seed=5)
    pipe = build_pipeline(rec, decoder, 3)
    states = run_search(pipe, encs, streams=3)
    assert [h.tokens for h in states[0]] == [h.tokens for h in states[1]] == [h.tokens for h in states[2]]
    cache = pipe.search.cache
    assert len(cache.slot_of) + len(cache.free) == cache.capacity
    assert len(set(cache.slot_of.values())) == len(cache.slot_of)
