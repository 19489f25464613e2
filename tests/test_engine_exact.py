"""Exact mode and the engine encoder against torchaudio's stock streaming pipeline.

Same transcripts and the same beams (every hypothesis' tokens, in order) chunk by chunk
with state carried, on the shipped tiny base with real TTS speech and on random models.
"""

from __future__ import annotations

import pytest
import torch

from emformer_variants.data.audio import load_audio
from emformer_variants.data.manifest import read_manifest
from emformer_variants.engine import packed
from emformer_variants.engine.encoder import StreamingEncoder
from emformer_variants.engine.pipeline import build_pipeline
from emformer_variants.engine.stream import chunk_windows, stream_decode
from emformer_variants.models.recognizer import load_recognizer
from tests.conftest import (
    ROOT,
    apply_shipped_variant_,
    every_linear_at_,
    make_tiny_rec,
    require_kernel,
    tiny_arch,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base_rec():
    return load_recognizer(ROOT / "checkpoints" / "tiny_base.pt").eval()


def chunk_features(rec, wave: torch.Tensor) -> list[torch.Tensor]:
    cfg = rec.features.cfg
    with torch.inference_mode():
        return [rec.features.streaming(w).unsqueeze(0)
                for w in chunk_windows(wave, cfg.segment_samples, cfg.window_samples)]


def assert_same_beams(rec, chunks: list[torch.Tensor], beam: int, **search_kw) -> list[int]:
    """Run stock and exact side by side over ``chunks``; every chunk's beam must agree."""
    stock = build_pipeline(rec, "stock", beam)
    if search_kw:
        stock.search.search.step_max_tokens = search_kw["step_max_tokens"]
    exact = build_pipeline(rec, "exact", beam, **search_kw)
    s_enc, e_enc = stock.encoder.init(1), exact.encoder.init(1)
    s_hyp, e_hyp = [None], [None]
    for feats in chunks:
        enc_s, s_enc = stock.encoder.step(feats, s_enc)
        enc_e, e_enc = exact.encoder.step(feats, e_enc)
        torch.testing.assert_close(enc_e, enc_s, atol=1e-5, rtol=1e-5)
        s_hyp, e_hyp = stock.search.step(enc_s, s_hyp), exact.search.step(enc_e, e_hyp)
        want, got = stock.search.hypotheses(s_hyp[0]), exact.search.hypotheses(e_hyp[0])
        assert [t for t, _ in got] == [t for t, _ in want]
        torch.testing.assert_close(torch.tensor([s for _, s in got]), torch.tensor([s for _, s in want]),
                                   atol=1e-3, rtol=1e-5)
    return stock.search.best_tokens(s_hyp[0])


@pytest.mark.parametrize("beam,count", [(10, 2), (3, 1)])
def test_exact_equals_stock_on_tiny_base_with_speech(base_rec, mini_corpus, beam, count):
    utts = read_manifest(mini_corpus / "train.jsonl")[:count]
    emitted = 0
    for utt in utts:
        emitted += len(assert_same_beams(base_rec, chunk_features(base_rec, load_audio(utt.audio)), beam))
    assert emitted > 10 * count  # the base really decodes this speech


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_equals_stock_on_random_models(seed):
    rec = make_tiny_rec(seed)
    gen = torch.Generator().manual_seed(seed)
    chunks = [torch.randn(1, 21, 80, generator=gen) for _ in range(8)]
    assert_same_beams(rec, chunks, beam=4 + seed)


def test_exact_respects_step_max_tokens(base_rec, mini_corpus):
    utt = read_manifest(mini_corpus / "dev.jsonl")[0]
    assert_same_beams(base_rec, chunk_features(base_rec, load_audio(utt.audio))[:12], 5, step_max_tokens=1)


def test_exact_text_equals_stock_text_through_stream_decode(base_rec, mini_corpus):
    for utt in read_manifest(mini_corpus / "test.jsonl"):
        wave = load_audio(utt.audio)
        stock = stream_decode(base_rec, wave, 10)
        exact = stream_decode(base_rec, wave, 10, build_pipeline(base_rec, "exact", 10))
        assert exact.text == stock.text
        assert exact.first_token_chunk == stock.first_token_chunk
        assert exact.state_bytes == stock.state_bytes


def test_streams_in_lockstep_equal_each_stream_alone(base_rec, mini_corpus):
    """Three streams, the later ones starting 2 and 5 chunks late, batched in one engine."""
    utts = read_manifest(mini_corpus / "train.jsonl")[3:6]
    feats = [chunk_features(base_rec, load_audio(u.audio))[:10] for u in utts]
    starts = [0, 2, 5]
    alone = []
    for f in feats:
        pipe = build_pipeline(base_rec, "stock", 6)
        st, hy = None, [None]
        for x in f:
            enc, st = pipe.encoder.step(x, st)
            hy = pipe.search.step(enc, hy)
        alone.append(pipe.search.hypotheses(hy[0]))
    pipe = build_pipeline(base_rec, "exact", 6)
    state = pipe.encoder.init(3)
    hyps = [None, None, None]
    steps = max(s + len(f) for s, f in zip(starts, feats, strict=True))
    silence = torch.zeros_like(feats[0][0])
    for k in range(steps):
        for i, s in enumerate(starts):
            if k == s:
                pipe.encoder.reset(state, i)
                hyps[i] = None
        x = torch.cat([f[k - s] if 0 <= k - s < len(f) else silence
                       for s, f in zip(starts, feats, strict=True)])
        enc, state = pipe.encoder.step(x, state)
        new = pipe.search.step(enc, hyps)
        # a stream outside its utterance keeps its beam (its frames are padding)
        hyps = [new[i] if 0 <= k - s < len(feats[i]) else hyps[i] for i, s in enumerate(starts)]
    for i in range(3):
        got = pipe.search.hypotheses(hyps[i])
        assert [t for t, _ in got] == [t for t, _ in alone[i]]


@pytest.mark.parametrize("packed", [True, False])
def test_engine_encoder_is_torchaudio_transcriber(base_rec, packed, monkeypatch):
    """Bit for bit with F.linear; to fp32 rounding with the packed kernel (another sum order)."""
    if not packed:
        monkeypatch.setattr("emformer_variants.engine.linear.kernel", lambda: None)
    tol = 1e-5 if packed else 1e-6
    model = base_rec.model
    enc = StreamingEncoder(model)
    x = torch.randn(1, 16 * 12 + 5, 80, generator=torch.Generator().manual_seed(3))
    st, es = None, enc.init(1)
    with torch.inference_mode():
        for k in range(12):
            f = x[:, 16 * k:16 * k + 21]
            a, _, st = model.transcribe_streaming(f, torch.tensor([21]), st)
            b, es = enc.step(f, es)
            torch.testing.assert_close(b, a, atol=tol, rtol=tol)
        # the engine's cache holds torchaudio's valid left context
        for layer, state in enumerate(st):
            keys, values = es.left_context(layer)
            torch.testing.assert_close(keys[0], state[1][:, 0], atol=tol, rtol=tol)
            torch.testing.assert_close(values[0], state[2][:, 0], atol=tol, rtol=tol)


@pytest.mark.parametrize("variant,precision,left", [
    *[("dense", p, 8) for p in ("fp32", "fp16", "bf16", "int8")],
    *[(v, p, 8) for v in ("lowrank", "mla", "mla_lowrank", "moe", "mla_moe") for p in ("fp32", "int8")],
    ("dense", "int8", 7), ("mla", "fp32", 7), ("dense", "fp32", 3)])
def test_fused_layer_stack_is_bit_for_bit_the_python_loop(variant, precision, left):
    """The C++ stack runs the same ATen ops as ``_Layer``: identical outputs and caches, over
    the first chunks (history shorter than the left context), and for two streams with
    different histories (the masked path); also with low-rank chains of linears, MLA's
    latent attention and MoE FFNs in the layers. The stack keeps each cache as a ring written
    in place: a left context that is no multiple of the chunk's 4 frames (7) wraps the ring at
    every offset, and one shorter than the chunk (3) keeps only the chunk's last rows."""
    from emformer_variants.engine.precision import apply_precision_

    require_kernel()
    rec = make_tiny_rec(2, transformer_left_context_length=left)
    if variant != "dense":
        apply_shipped_variant_(rec, variant)
    apply_precision_(rec, precision)
    fused, loop = StreamingEncoder(rec.model), StreamingEncoder(rec.model, fused=False)
    assert fused.stack is not None and loop.stack is None
    gen = torch.Generator().manual_seed(4)
    a, b = fused.init(2), loop.init(2)
    with torch.inference_mode():
        for k in range(9):
            if k == 3:  # stream 1 starts a new utterance: its old history is masked
                fused.reset(a, 1)
                loop.reset(b, 1)
            x = torch.randn(2, 21, 80, generator=gen)
            ya, a = fused.step(x, a)
            yb, b = loop.step(x, b)
            assert torch.equal(ya, yb)
            for layer in range(len(a.keys)):  # the fused stack's rings hold the loop's caches
                assert all(map(torch.equal, a.left_context(layer), b.left_context(layer)))


def test_fused_stack_only_for_packed_layers(monkeypatch):
    """A module the stack does not know (a low-rank FFN kept as a module), a watched MoE
    (router telemetry) or no kernel: the encoder runs the Python loop."""
    from emformer_variants.surgery.moe import RouterTelemetry

    rec = make_tiny_rec(4)
    rec.model.transcriber.transformer.emformer_layers[0].pos_ff[2] = torch.nn.Tanh()
    assert StreamingEncoder(rec.model).stack is None  # an activation the kernels do not have
    rec = make_tiny_rec(4)
    apply_shipped_variant_(rec, "moe")
    enc = StreamingEncoder(rec.model)
    assert enc.stack is not None and not enc.stack.watched()
    telemetry = RouterTelemetry(rec.model)
    assert enc.stack.watched()
    telemetry.close()
    assert not enc.stack.watched()
    monkeypatch.setattr("emformer_variants.engine.linear.kernel", lambda: None)
    monkeypatch.setattr("emformer_variants.engine.packed.kernel", lambda: None)
    assert StreamingEncoder(make_tiny_rec(4).model).stack is None


@pytest.mark.parametrize("variant", ["lowrank", "moe", "mla"])
def test_exact_equals_stock_on_surgery_variants(variant):
    """Surgery swaps linears for other modules (low-rank pairs, MoE FFNs, MLA attention): the
    engine must run them as they are (no fusing of modules it does not know) and still give
    stock's beams."""
    rec = make_tiny_rec(4)
    apply_shipped_variant_(rec, variant)
    wave = torch.randn(16000, generator=torch.Generator().manual_seed(5)) * 0.1
    assert_same_beams(rec, chunk_features(rec, wave), 4)
    for decoder in ("modified", "greedy"):
        assert isinstance(stream_decode(rec, wave, 4, build_pipeline(rec, decoder, 4)).text, str)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4"])
def test_fused_predictor_step_is_bit_for_bit_the_python_loop(precision):
    from emformer_variants.engine.predictor import PredictorStep

    require_kernel()
    rec = make_tiny_rec(3)
    every_linear_at_(rec, precision)
    fused, loop = PredictorStep(rec.model.predictor), PredictorStep(rec.model.predictor, fused=False)
    assert fused.fused is not None and loop.fused is None
    g = torch.Generator().manual_seed(6)
    for m in (1, 7):
        tokens = torch.randint(0, fused.table0.shape[0], (m,), generator=g)
        h, c = (torch.randn(fused.num_layers, m, fused.hidden, generator=g) for _ in range(2))
        with torch.inference_mode():
            got = fused(tokens, fused.recurrent_gates(h), c)
            want = loop(tokens, loop.recurrent_gates(h), c)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_predictor_falls_back_without_the_kernel(monkeypatch):
    from emformer_variants.engine.predictor import PredictorStep

    monkeypatch.setattr("emformer_variants.engine.linear.kernel", lambda: None)
    assert PredictorStep(make_tiny_rec(3).model.predictor).fused is None


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4"])
def test_fused_exact_search_is_bit_for_bit_the_python_loop(precision):
    """The C++ search (kernels/exact_search.cpp) against ``_frame`` in Python: two streams
    in lockstep, beams carried, one stream restarted, the cache freeing and growing."""
    from emformer_variants.engine.exact import ExactBeamSearch

    require_kernel()
    rec = make_tiny_rec(11)
    every_linear_at_(rec, precision)
    fused = ExactBeamSearch(rec.model, rec.blank, 6, keep_chunks=3)
    loop = ExactBeamSearch(rec.model, rec.blank, 6, keep_chunks=3, fused=False)
    assert fused.fused is not None and loop.fused is None
    g = torch.Generator().manual_seed(12)
    width = rec.model.joiner.linear.in_features
    a, b = [None, None], [None, None]
    for chunk in range(10):
        if chunk == 6:
            a[1] = b[1] = None
        enc = torch.randn(2, 4, width, generator=g)
        a, b = fused.step(enc, a), loop.step(enc, b)
        for x, y in zip(a, b, strict=True):
            assert fused.hypotheses(x) == loop.hypotheses(y)  # same tokens, same fp32 scores
    assert len(a[0][0].tokens) > 10
    assert (fused.cache.computed, fused.cache.hits) == (loop.cache.computed, loop.cache.hits)
    assert fused.cache.capacity == loop.cache.capacity > 256  # both grew, both freed
    assert len(fused.cache.slot_of) == len(loop.cache.slot_of) < loop.cache.computed
    assert set(fused.cache.slot_of) == set(loop.cache.slot_of)


def test_fused_exact_search_counts_the_same_flops_as_the_loop():
    from emformer_variants.engine.exact import ExactBeamSearch

    require_kernel()
    rec = make_tiny_rec(13)
    enc = torch.randn(1, 4, rec.model.joiner.linear.in_features, generator=torch.Generator().manual_seed(1))
    counted = []
    for fused in (True, False):
        search = ExactBeamSearch(rec.model, rec.blank, 4, fused=fused)
        with packed.counting_flops() as flops:
            search.step(enc, [None])
        counted.append(flops[0])
    assert counted[0] == counted[1] > 0


def test_exact_search_runs_in_python_without_the_kernel_or_with_another_joiner(monkeypatch):
    from emformer_variants.engine.exact import ExactBeamSearch

    rec = make_tiny_rec(3)
    rec.model.joiner.activation = torch.nn.GELU()
    assert ExactBeamSearch(rec.model, rec.blank, 3).fused is None
    monkeypatch.setattr("emformer_variants.engine.linear.kernel", lambda: None)
    assert ExactBeamSearch(make_tiny_rec(3).model, 0, 3).fused is None


def _same_beams(fused, loop, width: int, chunks: int = 6) -> list:
    """Both searches over the same random encoder chunks; every chunk's beams must be equal.
    Returns the fused search's last beams."""
    g = torch.Generator().manual_seed(0)
    a, b = [None], [None]
    for _ in range(chunks):
        enc = torch.randn(1, 4, width, generator=g)
        a, b = fused.step(enc, a), loop.step(enc, b)
        assert fused.hypotheses(a[0]) == loop.hypotheses(b[0])
    return a


def test_fused_exact_search_breaks_ties_as_torch_topk():
    """Pairs of symbols with equal logits: the one-pass top-k hands every tied selection
    to at::topk, and the beams still equal the Python loop's."""
    from emformer_variants.engine.exact import ExactBeamSearch

    require_kernel()
    rec = make_tiny_rec(3)
    joiner = rec.model.joiner.linear
    with torch.no_grad():
        half = joiner.weight[1::2].shape[0]
        joiner.weight[1::2] = joiner.weight[0::2][:half]
        joiner.bias[1::2] = joiner.bias[0::2][:half]
    fused = ExactBeamSearch(rec.model, rec.blank, 4)
    loop = ExactBeamSearch(rec.model, rec.blank, 4, fused=False)
    a = _same_beams(fused, loop, joiner.in_features)
    assert fused.fused.impl.fallback_topk > 0 and len(a[0][0].tokens) > 10


def test_top_k_heap_orders_ties_as_torch_topk():
    """Scores from a few levels, so most top-k sets tie: the heap selection returns at::topk's
    values and indices, in its order, wherever at::topk takes its partial sort, and declines
    (None) where it does not or on a NaN."""
    kernel = require_kernel()
    g = torch.Generator().manual_seed(0)

    def draw(lo, hi):
        return int(torch.randint(lo, hi, (1,), generator=g))

    unstable = 0
    for _ in range(200):
        rows, width, levels = draw(1, 12), draw(700, 3000), draw(2, 40)
        logp = torch.randint(0, levels, (rows, width), generator=g).float() * 0.25 - 10
        scores = torch.randint(0, 3, (rows,), generator=g).float() * 0.5
        k = draw(1, 12)
        got = kernel.top_k_heap(logp, scores, k)
        if k * 64 > rows * width:
            assert got is None
            continue
        flat = (scores.unsqueeze(1) + logp).reshape(-1)
        values, index = flat.topk(k)
        assert torch.equal(got[0], values) and torch.equal(got[1], index)
        unstable += not torch.equal(index, flat.sort(descending=True, stable=True)[1][:k])
    assert unstable > 20  # ties whose order is at::topk's own, not a stable sort's
    nan = torch.zeros(2, 800)
    nan[1, 5] = float("nan")
    assert kernel.top_k_heap(nan, torch.zeros(2), 4) is None


def test_fused_exact_search_breaks_ties_through_the_heap_with_a_large_vocabulary():
    """700 symbols in tied pairs: every tied selection goes through ``top_k_heap`` (none to
    at::topk), and the beams equal the Python loop's, which calls at::topk."""
    from torchaudio.models import emformer_rnnt_model

    from emformer_variants.engine.exact import ExactBeamSearch

    require_kernel()
    torch.manual_seed(3)
    model = emformer_rnnt_model(**tiny_arch(num_symbols=700)).eval()
    joiner = model.joiner.linear
    with torch.no_grad():
        for w in (joiner.weight, joiner.bias):
            w[1::2] = w[0::2]
    fused = ExactBeamSearch(model, 699, 4)
    loop = ExactBeamSearch(model, 699, 4, fused=False)
    _same_beams(fused, loop, joiner.in_features)
    assert fused.fused.impl.heap_topk > 0 and fused.fused.impl.fallback_topk == 0


def test_fused_exact_search_sorts_tied_scores_as_torch():
    """Pairs of symbols with equal logits and equal embeddings: hypotheses that differ only by
    such a symbol get equal scores in the blank-ended set, whose sort then goes to at::sort
    (``fallback_sort``); the beams still equal the Python loop's."""
    from emformer_variants.engine.exact import ExactBeamSearch

    if packed.kernel() is None:
        pytest.skip("packed kernel unavailable here")
    rec = make_tiny_rec(3)
    joiner, embedding = rec.model.joiner.linear, rec.model.predictor.embedding
    with torch.no_grad():
        for w in (joiner.weight, joiner.bias, embedding.weight):
            half = w[1::2].shape[0]
            w[1::2] = w[0::2][:half]
    fused = ExactBeamSearch(rec.model, rec.blank, 4)
    loop = ExactBeamSearch(rec.model, rec.blank, 4, fused=False)
    _same_beams(fused, loop, joiner.in_features)
    assert fused.fused.impl.fallback_sort > 0


def test_measured_flops_of_an_engine_decode_include_its_kernels(two_sentences):
    """FlopCounterMode does not see the engine's C++ kernels; measure_flops adds their own count,
    so the exact decoder's total is about the stock decoder's (same beams, fewer repeats)."""
    from emformer_variants.evaluation.flops import measure_flops

    require_kernel()
    rec = make_tiny_rec(5)
    wave = two_sentences[: rec.features.cfg.sample_rate * 2]
    stock = measure_flops(rec, wave, beam=4, decoder="stock")["gflops_per_audio_s"]
    exact = measure_flops(rec, wave, beam=4, decoder="exact")["gflops_per_audio_s"]
    assert 0.5 * stock < exact < 1.5 * stock


@pytest.mark.parametrize("masked", [False, True])
def test_one_pass_attention_equals_torchaudios_bmm_softmax(masked):
    """kernels/attention.cpp against the reshaped bmm / softmax / bmm it replaces, with a query
    that is a strided slice of the fused q/k/v output, as the encoder passes it."""
    from emformer_variants.engine import packed

    require_kernel()
    g = torch.Generator().manual_seed(8)
    n, t, kt, d, heads = 3, 5, 17, 64, 4
    qkv = torch.randn(n, t, 3 * d, generator=g)
    q = qkv[:, :, :d]
    k, v = torch.randn(n, kt, d, generator=g), torch.randn(n, kt, d, generator=g)
    mask = torch.zeros(n, kt, dtype=torch.bool)
    if masked:
        mask[1, 2:6] = True
        mask[2, 2:9] = True
    scaling = (d // heads) ** -0.5
    got = packed.run("stream_attention", q, k, v, mask if masked else None, heads, scaling)
    qh, kh, vh = (x.reshape(n, -1, heads, d // heads).transpose(1, 2) for x in (q, k, v))
    w = (qh * scaling) @ kh.transpose(-1, -2)
    w = w.masked_fill(mask[:, None, None, :], -1e8)
    want = (w.softmax(-1) @ vh).transpose(1, 2).reshape(n, t, d)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
