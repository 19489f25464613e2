"""Metrics: WER/CER on hand-computed cases, live-stream latency, state bytes, and the
analytic FLOPs count against FlopCounterMode on torchaudio's Emformer RNN-T."""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio

from emformer_variants.metrics.flops import (
    analytic_emformer_rnnt_flops,
    emformer_base_arch,
    measured_flops,
)
from emformer_variants.metrics.latency import (
    chunk_ready_times,
    percentiles,
    rtf,
    simulate_live_stream,
    time_to_first_token,
)
from emformer_variants.metrics.memory import current_rss_mb, peak_rss_mb, tensor_bytes
from emformer_variants.metrics.wer import error_rates, error_rates_by

# ---------------------------------------------------------------- WER / CER


def test_error_rates_normalisation_and_cer():
    # Normalised refs: "hello world", "it's forty two degrees" (6 words, 11 + 22 chars).
    out = error_rates(["Hello, World!", "It's 42 degrees"], ["hello world", "its forty-two degree"])
    assert out["ref_words"] == 6
    assert (out["substitutions"], out["deletions"], out["insertions"]) == (2, 0, 0)
    assert out["wer"] == pytest.approx(2 / 6)
    assert out["ref_chars"] == 33
    assert out["cer"] == pytest.approx(2 / 33)  # the apostrophe and the final "s" deleted
    assert out["skipped_empty_refs"] == 0


def test_error_rates_is_corpus_level_not_mean():
    out = error_rates(["a", "b c d e"], ["x", "b c d e"])
    assert out["wer"] == pytest.approx(1 / 5)  # a per-utterance mean would give 0.5


def test_error_rates_empty_hypothesis_and_insertions():
    out = error_rates(["a b c"], [""])
    assert (out["wer"], out["cer"], out["deletions"]) == (1.0, 1.0, 3)
    out = error_rates(["a b"], ["a x b y"])
    assert (out["insertions"], out["wer"]) == (2, 1.0)


def test_error_rates_skips_empty_references():
    out = error_rates(["", "!!!", "Yes."], ["uh", "", "yes"])
    assert out["skipped_empty_refs"] == 2
    assert (out["num_utterances"], out["ref_words"], out["wer"]) == (1, 1, 0.0)
    out = error_rates([" ", "?"], ["a", "b"])
    assert out["skipped_empty_refs"] == 2 and math.isnan(out["wer"]) and math.isnan(out["cer"])
    with pytest.raises(ValueError):
        error_rates(["a"], [])


# ---------------------------------------------------------------- latency


def test_error_rates_by_group_scores_each_group_alone():
    refs = ["a b c d", "e f", "g h i j"]
    hyps = ["a b c d", "x f", "g h"]
    by = error_rates_by(refs, hyps, ["s2", "s1", "s2"])
    assert list(by) == ["s1", "s2"]
    assert by["s1"] == {"wer": 0.5, "cer": pytest.approx(1 / 3), "ref_words": 2, "num_utterances": 1}
    assert by["s2"]["wer"] == pytest.approx(2 / 8) and by["s2"]["num_utterances"] == 2
    with pytest.raises(ValueError, match="differ in length"):
        error_rates_by(refs, hyps, ["s1"])


def test_percentiles():
    out = percentiles(list(range(1, 101)))
    assert out == pytest.approx({"p50": 50.5, "p90": 90.1, "p99": 99.01})
    assert percentiles([3.0], qs=(95, 99.9)) == {"p95": 3.0, "p99.9": 3.0}
    assert all(math.isnan(v) for v in percentiles([]).values())


def test_simulate_live_stream_faster_than_real_time():
    ready = [0.2, 0.36, 0.52]
    assert simulate_live_stream(ready, [0.05, 0.05, 0.05]) == pytest.approx([0.25, 0.41, 0.57])


def test_simulate_live_stream_slower_than_real_time_queues():
    ready = [0.2, 0.36, 0.52]
    # 0.2 + 0.3; then waits for chunk 0: 0.5 + 0.3; then 0.8 + 0.3.
    assert simulate_live_stream(ready, [0.3, 0.3, 0.3]) == pytest.approx([0.5, 0.8, 1.1])
    # A slow first chunk delays the rest until the queue drains.
    assert simulate_live_stream(ready, [0.3, 0.01, 0.01]) == pytest.approx([0.5, 0.51, 0.53])
    with pytest.raises(ValueError):
        simulate_live_stream([0.1], [])


def test_chunk_ready_times_ttft_and_rtf():
    # 160 ms segments with 40 ms right context on 0.5 s of audio: tail chunks wait for the end.
    ready = chunk_ready_times(4, 0.16, 0.04, 0.5)
    assert ready == pytest.approx([0.2, 0.36, 0.5, 0.5])
    finish = simulate_live_stream(ready, [0.1] * 4)
    assert finish == pytest.approx([0.3, 0.46, 0.6, 0.7])
    assert time_to_first_token(finish, [False, True, True, False]) == pytest.approx(0.46)
    assert time_to_first_token(finish, [False] * 4) is None
    assert rtf(0.4, 0.5) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        rtf(1.0, 0.0)


# ---------------------------------------------------------------- memory


def test_tensor_bytes_nested():
    state = {
        "enc": [[torch.zeros(3, 1, 4), torch.zeros(2, 1, 4, dtype=torch.float16)]],
        "pred": (torch.zeros(5, dtype=torch.int64), None, 7),
    }
    assert tensor_bytes(state) == 3 * 4 * 4 + 2 * 4 * 2 + 5 * 8
    assert tensor_bytes([]) == 0


def test_rss_positive():
    assert current_rss_mb() > 0 and peak_rss_mb() > 0


# ---------------------------------------------------------------- FLOPs

_TINY = dict(
    input_dim=80,
    encoding_dim=48,
    num_symbols=37,
    segment_length=16,  # input frames: 4 Emformer frames after stride 4
    right_context_length=4,  # 1 Emformer frame
    time_reduction_input_dim=32,
    time_reduction_stride=4,
    transformer_num_heads=2,
    transformer_ffn_dim=64,
    transformer_num_layers=2,
    transformer_dropout=0.0,
    transformer_activation="gelu",
    transformer_left_context_length=8,
    transformer_max_memory_size=2,
    transformer_weight_init_scale_strategy="depthwise",
    transformer_tanh_on_mem=True,
    symbol_embedding_dim=24,
    num_lstm_layers=2,
    lstm_layer_norm=True,
    lstm_layer_norm_epsilon=1e-3,
    lstm_dropout=0.0,
)
_TINY_CASES = {
    "mem2": {},
    "mem0": {"transformer_max_memory_size": 0},
    # left context (5) not a multiple of the segment (3): the cache fills part-way.
    "stride2_lc5_mem3": {
        "time_reduction_stride": 2,
        "segment_length": 6,
        "right_context_length": 2,
        "transformer_left_context_length": 5,
        "transformer_max_memory_size": 3,
    },
    # segment_length 4 / rc 1 in input frames: 1 Emformer frame, no right context.
    "seg4_rc1_stride4": {"segment_length": 4, "right_context_length": 1},
}


def _close(measured: int, analytic: int, tol: float = 0.02) -> bool:
    return abs(measured - analytic) <= tol * measured


def _encoder_chunk_flops(model, arch, num_chunks, seed=0):
    gen = torch.Generator().manual_seed(seed)
    frames = arch["segment_length"] + arch["right_context_length"]
    state, flops = None, []
    with torch.no_grad():
        for _ in range(num_chunks):
            x = torch.randn(1, frames, arch["input_dim"], generator=gen)
            n, (_, _, state) = measured_flops(
                model.transcriber.infer, x, torch.tensor([frames]), state
            )
            flops.append(n)
    return flops


@pytest.mark.parametrize("case", list(_TINY_CASES))
def test_analytic_encoder_flops_tiny_over_chunks(case):
    torch.manual_seed(0)
    arch = {**_TINY, **_TINY_CASES[case]}
    model = torchaudio.models.emformer_rnnt_model(**arch).eval()
    # 10 chunks: every case's left-context cache and memory bank are full by chunk 8.
    measured = _encoder_chunk_flops(model, arch, num_chunks=10)
    analytic = [analytic_emformer_rnnt_flops(arch, chunk_index=k)["encoder"] for k in range(10)]
    # Exact, not just within 2%: at base scale the attention-score matmuls are ~1% of the
    # total, so a 2% band could not see a wrong left-context or memory fill.
    assert measured == analytic
    assert measured[-1] == analytic_emformer_rnnt_flops(arch)["encoder"]  # steady state
    if arch["transformer_left_context_length"] or arch["transformer_max_memory_size"]:
        assert measured[0] < measured[-1]  # the cache filling up is visible


def _predictor_joiner_check(model, arch, beam=3, frames=2):
    counts = analytic_emformer_rnnt_flops(arch)
    tokens = torch.randint(0, arch["num_symbols"], (beam, 1))
    with torch.no_grad():
        _, (_, _, state) = measured_flops(model.predict, tokens, torch.ones(beam), None)
        n_pred, _ = measured_flops(model.predict, tokens, torch.ones(beam), state)
        src = torch.randn(1, frames, arch["encoding_dim"])
        tgt = torch.randn(1, beam, arch["encoding_dim"])
        n_join, _ = measured_flops(
            model.join, src, torch.tensor([frames]), tgt, torch.tensor([beam])
        )
    assert _close(n_pred, beam * counts["predictor"]), (n_pred, beam * counts["predictor"])
    assert _close(n_join, frames * beam * counts["joiner"]), (n_join, counts["joiner"])


def test_analytic_predictor_joiner_flops_tiny():
    torch.manual_seed(0)
    _predictor_joiner_check(torchaudio.models.emformer_rnnt_model(**_TINY).eval(), _TINY)


def test_emformer_base_arch_matches_torchaudio(monkeypatch):
    captured = {}

    def fake_model(**kwargs):
        captured.update(kwargs)

    monkeypatch.setattr(torchaudio.models.rnnt, "emformer_rnnt_model", fake_model)
    torchaudio.models.rnnt.emformer_rnnt_base(4097)
    assert captured == emformer_base_arch(4097)


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return torchaudio.models.emformer_rnnt_base(4097).eval()


def test_analytic_encoder_flops_base_steady_state(base_model):
    arch = emformer_base_arch()
    seg = arch["segment_length"] // arch["time_reduction_stride"]
    # Chunks until the left-context cache is full (30 frames / 4 per chunk), then one more.
    warmup = math.ceil(arch["transformer_left_context_length"] / seg)
    measured = _encoder_chunk_flops(base_model, arch, num_chunks=warmup + 1)[-1]
    analytic = analytic_emformer_rnnt_flops(arch)["encoder"]
    assert _close(measured, analytic), (measured, analytic)


def test_analytic_predictor_joiner_flops_base(base_model):
    _predictor_joiner_check(base_model, emformer_base_arch(), beam=2, frames=1)
