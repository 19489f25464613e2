"""The C++ modified beam search (kernels/modified_search.cpp) against the Python loop of
``ModifiedBeamSearch._frame``, and greedy search run as its beam-1 case."""

from __future__ import annotations

import pytest
import torch

from emformer_variants.engine import packed
from emformer_variants.engine.greedy import GreedySearch
from emformer_variants.engine.modified import ModifiedBeamSearch
from tests.conftest import every_linear_at_, make_tiny_rec, require_kernel

pytestmark = pytest.mark.usefixtures("one_thread")


def run_pair(fused, loop, rec, chunks: int = 10, streams: int = 3, seed: int = 12, restart: int = 6):
    """Both searches on the same random encodings; stream 1 restarts at chunk ``restart``."""
    g = torch.Generator().manual_seed(seed)
    width = rec.model.joiner.linear.in_features
    a, b = [None] * streams, [None] * streams
    for chunk in range(chunks):
        if chunk == restart:
            a[1] = b[1] = None
        enc = 2 * torch.randn(streams, 4, width, generator=g)
        a, b = fused.step(enc, a), loop.step(enc, b)
        yield a, b


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
@pytest.mark.parametrize("max_symbols", [1, 2, 3])
def test_fused_modified_search_is_bit_for_bit_the_python_loop(precision, max_symbols):
    require_kernel()
    rec = make_tiny_rec(11)
    every_linear_at_(rec, precision)
    fused = ModifiedBeamSearch(rec.model, rec.blank, 6, max_symbols=max_symbols, keep_chunks=3)
    loop = ModifiedBeamSearch(rec.model, rec.blank, 6, max_symbols=max_symbols, keep_chunks=3, fused=False)
    assert fused.fused is not None and loop.fused is None
    for a, b in run_pair(fused, loop, rec):
        for x, y in zip(a, b, strict=True):
            assert fused.hypotheses(x) == loop.hypotheses(y)  # same tokens, same scores, same order
    assert len(a[0][0].tokens) > 10
    assert (fused.cache.computed, fused.cache.hits) == (loop.cache.computed, loop.cache.hits)
    assert set(fused.cache.slot_of) == set(loop.cache.slot_of)


def test_fused_modified_search_breaks_ties_as_the_python_loop():
    """A joiner whose every output is the same: every candidate ties, the one-pass pick gives
    way to at::topk per row and over the rows, as ``_select`` runs it."""
    require_kernel()
    rec = make_tiny_rec(3)
    with torch.no_grad():
        rec.model.joiner.linear.weight.zero_()
        rec.model.joiner.linear.bias.zero_()
    fused = ModifiedBeamSearch(rec.model, rec.blank, 4, max_symbols=2)
    loop = ModifiedBeamSearch(rec.model, rec.blank, 4, max_symbols=2, fused=False)
    for a, b in run_pair(fused, loop, rec, chunks=3, streams=2, restart=99):
        for x, y in zip(a, b, strict=True):
            assert fused.hypotheses(x) == loop.hypotheses(y)
    assert fused.fused.impl.fallback_select > 0


@pytest.mark.parametrize("max_symbols", [1, 3])
def test_fused_greedy_is_the_python_greedy(max_symbols):
    """Same tokens; scores differ by fp32 rounding (the C++ search adds each log-prob to the
    fp32-rounded score, the Python loop in double)."""
    require_kernel()
    rec = make_tiny_rec(5)
    fused = GreedySearch(rec.model, rec.blank, max_symbols=max_symbols)
    loop = GreedySearch(rec.model, rec.blank, max_symbols=max_symbols, fused=False)
    assert fused.fused is not None and loop.fused is None
    for a, b in run_pair(fused, loop, rec):
        for x, y in zip(a, b, strict=True):
            assert [h.tokens for h in x] == [h.tokens for h in y]
            assert x[0].score == pytest.approx(y[0].score, rel=1e-5, abs=1e-3)
    assert len(a[0][0].tokens) > 10


@pytest.mark.parametrize("search", [ModifiedBeamSearch, GreedySearch])
def test_fused_search_counts_the_same_flops_as_the_loop(search):
    require_kernel()
    rec = make_tiny_rec(13)
    enc = torch.randn(2, 4, rec.model.joiner.linear.in_features, generator=torch.Generator().manual_seed(1))
    counted = []
    for fused in (True, False):
        s = search(rec.model, rec.blank, 4, max_symbols=2, fused=fused)
        with packed.counting_flops() as flops:
            s.step(enc, [None, None])
        counted.append(flops[0])
    assert counted[0] == counted[1] > 0


def test_fused_modified_search_rejects_a_stale_beam():
    require_kernel()
    rec = make_tiny_rec(7)
    search = ModifiedBeamSearch(rec.model, rec.blank, 4, keep_chunks=1)
    g = torch.Generator().manual_seed(3)
    width = rec.model.joiner.linear.in_features
    old = search.step(torch.randn(1, 4, width, generator=g), [None])
    beams = old
    for _ in range(4):
        beams = search.step(3 * torch.randn(1, 4, width, generator=g), beams)
    with pytest.raises(ValueError, match="stale beam"):
        search.step(torch.randn(1, 4, width, generator=g), old)
