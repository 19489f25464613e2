"""lm: the n-gram model's Witten-Bell estimates by hand, its storage, and shallow fusion in the
modified beam search (no LM changes nothing; an LM moves the search towards its text)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from emformer_variants.engine.modified import ModifiedBeamSearch
from emformer_variants.engine.pipeline import build_pipeline
from emformer_variants.errors import UserError
from emformer_variants.lm.build import load_lm, training_texts
from emformer_variants.lm.ngram import NgramLM
from tests.conftest import make_tiny_rec, require_kernel, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_witten_bell_by_hand():
    # 3 symbols {0, 1, 2}; sentence start is 3. Sentences "0 1", "0 1", "0 2".
    lm = NgramLM.build([[0, 1], [0, 1], [0, 2]], vocab=3, order=2)
    # unigram: counts 0:3, 1:2, 2:1; T=6, N1=3; P0 = 1/3 each
    p1 = {c: (n + 3 * (1 / 3)) / (6 + 3) for c, n in {0: 3, 1: 2, 2: 1}.items()}
    # after "0": counts 1:2, 2:1; T=3, N1=2
    after0 = {c: (n + 2 * p1[c]) / (3 + 2) for c, n in {0: 0, 1: 2, 2: 1}.items()}
    # after the start: counts 0:3; T=3, N1=1
    after_start = {c: (n + 1 * p1[c]) / (3 + 1) for c, n in {0: 3, 1: 0, 2: 0}.items()}
    got = lm.probs([(3, 0), (3,), (3, 0, 1)])
    np.testing.assert_allclose(got[0], [after0[c] for c in range(3)], rtol=1e-12)
    np.testing.assert_allclose(got[1], [after_start[c] for c in range(3)], rtol=1e-12)
    # after "1": never a context, so the unigram passes through
    np.testing.assert_allclose(got[2], [p1[c] for c in range(3)], rtol=1e-12)
    assert lm.sentence_logprob([0, 1]) == pytest.approx(math.log(after_start[0]) + math.log(after0[1]))


def test_probabilities_sum_to_one_and_blank_column_is_zero():
    rng = np.random.default_rng(0)
    sents = [list(rng.integers(0, 6, size=rng.integers(1, 20))) for _ in range(200)]
    lm = NgramLM.build(sents, vocab=6, order=4, min_count=2)
    hist = [(6,), (6, 1, 2, 3), (6, 5, 5, 5, 5, 5, 5), (6, 0)]
    np.testing.assert_allclose(lm.probs(hist).sum(axis=1), 1.0, rtol=1e-12)
    lp = lm.log_probs(hist, blank=6)
    assert lp.shape == (4, 7) and torch.all(lp[:, 6] == 0) and torch.all(lp[:, :6] < 0)


def test_save_load_round_trip_and_bad_files(tmp_path):
    lm = NgramLM.build([[0, 1, 2], [2, 1]], vocab=3, order=3, meta={"x": 1})
    lm.save(tmp_path / "lm.npz")
    back = NgramLM.load(tmp_path / "lm.npz")
    assert back.order == 3 and back.meta == {"x": 1}
    np.testing.assert_array_equal(back.probs([(3, 2)]), lm.probs([(3, 2)]))
    assert not (tmp_path / "lm.npz.tmp").exists()
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"lm=.*bad.npz: not a language model of this package"):
        NgramLM.load(tmp_path / "bad.npz")
    with pytest.raises(UserError, match=r"no such file"):
        NgramLM.load(tmp_path / "none.npz")
    with pytest.raises(UserError, match=r"outside 0..2"):
        NgramLM.build([[0, 3]], vocab=3, order=2)


def _encodings(rec, chunks=6, streams=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    width = rec.model.joiner.linear.in_features
    return [torch.randn(streams, 4, width, generator=g) for _ in range(chunks)]


def _decode(search, encs):
    beams = [None] * encs[0].shape[0]
    for enc in encs:
        beams = search.step(enc, beams)
    return [search.best_tokens(b) for b in beams]


def test_fusion_without_weight_is_the_plain_search_and_an_lm_pulls_towards_its_text():
    rec = make_tiny_rec(5)
    encs = _encodings(rec)
    vocab = rec.tokenizer.vocab_size
    plain = ModifiedBeamSearch(rec.model, rec.blank, 4, max_symbols=2, fused=False)
    # An LM that has only seen one symbol repeated: fused strongly, the search emits mostly it.
    favourite = 5
    lm = NgramLM.build([[favourite] * 30] * 5, vocab=vocab, order=3)
    zero = ModifiedBeamSearch(rec.model, rec.blank, 4, max_symbols=2, lm=lm, lm_weight=0.0)
    assert zero.lm is None  # weight 0: the search does not even look at the LM
    assert _decode(zero, encs) == _decode(plain, encs)
    fused = ModifiedBeamSearch(rec.model, rec.blank, 4, max_symbols=2, lm=lm, lm_weight=3.0, lm_bonus=5.0,
                               fused=False)
    base_out, lm_out = _decode(plain, encs), _decode(fused, encs)
    share = [sum(t == favourite for t in toks) / max(len(toks), 1) for toks in lm_out]
    base_share = [sum(t == favourite for t in toks) / max(len(toks), 1) for toks in base_out]
    assert min(share) > 0.8 and max(base_share) < 0.5


def test_cpp_lm_gives_the_python_probabilities_and_fusion_rows():
    kernel = require_kernel()
    rng = np.random.default_rng(1)
    sents = [list(rng.integers(0, 6, size=rng.integers(1, 25))) for _ in range(300)]
    lm = NgramLM.build(sents, vocab=6, order=4, min_count=2)
    hist = [(6,), (6, 1, 2, 3), (6, 5, 5, 5, 5, 5, 5), (6, 0), (6, 0, 6, 1, 6), (6, 4, 4, 3, 2, 1, 0, 5)]
    probs, rows = kernel.ngram_fusion(lm.flat_tables(), 6, 4, 0.3, 0.7, [list(h) for h in hist])
    np.testing.assert_array_equal(probs.numpy(), lm.probs(hist))  # the same doubles
    want = 0.3 * lm.log_probs(hist, blank=6)
    want[:, :6] += 0.7
    torch.testing.assert_close(rows, want, rtol=0, atol=1e-6)  # a log's last bit may differ


@pytest.mark.parametrize("max_symbols", [1, 3])
def test_fused_search_with_an_lm_is_the_python_loop(max_symbols):
    """The C++ modified search with shallow fusion: the Python loop's beams (tokens and
    scores), with an LM strong enough to change the transcripts."""
    require_kernel()
    rec = make_tiny_rec(5)
    encs = _encodings(rec, chunks=8, streams=3, seed=4)
    vocab = rec.tokenizer.vocab_size
    rng = np.random.default_rng(2)
    lm = NgramLM.build([list(rng.integers(0, 4, size=12)) for _ in range(50)], vocab=vocab, order=3)
    kw = dict(max_symbols=max_symbols, lm=lm, lm_weight=0.8, lm_bonus=0.5)
    fused = ModifiedBeamSearch(rec.model, rec.blank, 4, **kw)
    loop = ModifiedBeamSearch(rec.model, rec.blank, 4, fused=False, **kw)
    assert fused.fused is not None and loop.fused is None
    a, b = [None] * 3, [None] * 3
    for enc in encs:
        a, b = fused.step(enc, a), loop.step(enc, b)
        for x, y in zip(a, b, strict=True):
            assert [h.tokens for h in x] == [h.tokens for h in y]
            assert [h.score for h in x] == pytest.approx([h.score for h in y], rel=1e-6, abs=1e-5)
    plain = ModifiedBeamSearch(rec.model, rec.blank, 4, max_symbols=max_symbols)
    assert _decode(fused, encs) != _decode(plain, encs)


def test_lm_needs_the_modified_search_and_the_model_vocabulary():
    rec = make_tiny_rec(5)
    lm = NgramLM.build([[0, 1]], vocab=rec.tokenizer.vocab_size, order=2)
    with pytest.raises(UserError, match=r"lm= with decoder=exact: .* pass decoder=modified"):
        build_pipeline(rec, "exact", 4, lm=lm)
    other = NgramLM.build([[0, 1]], vocab=rec.tokenizer.vocab_size + 2, order=2)
    with pytest.raises(UserError, match=r"lm: built for .* symbols, this model has"):
        build_pipeline(rec, "modified", 4, lm=other)


def test_training_texts_are_the_train_pools_only(monkeypatch):
    from emformer_variants.data import synthetic

    texts = [f"Sentence number {i} of the book." for i in range(400)]
    sources = {name: texts[i::6] for i, name in enumerate(synthetic.TEXT_SOURCES)}
    sources["harvard"] = ["The birch canoe slid on the smooth planks."]
    monkeypatch.setattr(synthetic, "load_text_sources", lambda cache_dir: sources)
    got = training_texts("unused")
    pools = [synthetic.sentence_pool(t) for t in texts]
    assert {"dev", "test"} <= set(pools)  # the fixture has held-out texts to leave out
    want = {f"sentence number {synthetic_words(i)} of the book" for i, p in enumerate(pools) if p == "train"}
    assert set(got) == want and len(got) == len(want)
    assert not any("birch" in t for t in got)


def synthetic_words(i: int) -> str:
    from emformer_variants.text_norm import normalize_text

    return normalize_text(str(i))


def test_evaluate_with_an_lm_file_records_it(tmp_path, mini_corpus):
    from emformer_variants.models.recognizer import save_recognizer

    rec = make_tiny_rec(2)
    ckpt = tmp_path / "rec.pt"
    save_recognizer(rec, ckpt)
    lm_path = tmp_path / "lm.npz"
    NgramLM.build([rec.tokenizer.encode("it is a truth")], rec.tokenizer.vocab_size, 3).save(lm_path)
    out = tmp_path / "eval"
    proc = run_cli("evaluate.py", f"ckpt={ckpt}", "data=manifest", f"data.root={mini_corpus}", "beam=2",
                   "decoder=modified", f"lm={lm_path}", "lm_weight=0.5", "flops=false",
                   f"paths.output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lm"]["path"] == str(lm_path) and metrics["lm"]["lm_weight"] == 0.5
    assert metrics["lm"]["order"] == 3
    bad = run_cli("evaluate.py", f"ckpt={ckpt}", "decoder=exact", f"lm={lm_path}",
                  f"paths.output_dir={tmp_path / 'bad'}")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "pass decoder=modified" in bad.stderr


def test_load_lm_by_path(tmp_path):
    rec = make_tiny_rec(1)
    path = tmp_path / "lm.npz"
    NgramLM.build([[0, 1, 2]], rec.tokenizer.vocab_size, 2).save(path)
    lm, info = load_lm(str(path), rec.tokenizer, tmp_path)
    assert info["order"] == 2 and info["path"] == str(path) and lm.vocab == rec.tokenizer.vocab_size


def test_one_lm_weight_for_evaluate_transcribe_and_the_benchmark():
    from emformer_variants.lm import LM_WEIGHT
    from emformer_variants.transcribe import parse_args
    from tests.conftest import compose_config

    assert compose_config("evaluate", []).lm_weight == LM_WEIGHT
    assert parse_args(["x.wav"]).lm_weight == LM_WEIGHT
