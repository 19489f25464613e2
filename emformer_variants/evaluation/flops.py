"""FLOPs per audio second of a streaming decode: measured by FlopCounterMode, with the
analytic encoder count (the architecture's plus each variant's registered delta) beside it."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from emformer_variants.engine.packed import counting_flops
from emformer_variants.engine.pipeline import Pipeline, StockEncoder, build_pipeline
from emformer_variants.engine.stream import Stream, StreamHook, chunk_windows, stream_decode
from emformer_variants.metrics.flops import measured_flops
from emformer_variants.surgery.registry import analytic_encoder_flops


class _CountStage(StreamHook):
    """FLOPs (FlopCounterMode) of one stage of every chunk."""

    def __init__(self, name: str):
        self.name, self.flops = name, 0

    @contextmanager
    def _count(self):
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            yield
        self.flops += int(counter.get_total_flops())

    def stage(self, name: str):
        return self._count() if name == self.name else super().stage(name)


class _NoSearch:
    """A search that does nothing: the encoder alone."""

    def init_state(self):
        return None

    def step(self, enc, states):
        return states

    def best_tokens(self, state) -> list[int]:
        return []


def measure_flops(rec, wave: torch.Tensor, beam: int, decoder: str = "stock", **options) -> dict:
    """FLOPs per audio second of the whole streaming decode with ``decoder`` (FlopCounterMode's
    count of ATen ops plus the engine's own count of its C++ kernels, which FlopCounterMode
    does not see), and of the encoder alone (torchaudio's transcriber, whatever the decoder),
    with the analytic encoder count as a cross-check."""
    pipe = build_pipeline(rec, decoder, beam, **options)
    audio_s = wave.numel() / rec.features.cfg.sample_rate
    with counting_flops() as kernel_flops:
        total, result = measured_flops(stream_decode, rec, wave, beam, pipe)
    total += kernel_flops[0]
    num_chunks = len(result.encoder_s)
    encoder = _CountStage("encoder")
    stream = Stream(rec, Pipeline("encoder", StockEncoder(rec.model), _NoSearch()), hooks=(encoder,))
    cfg = rec.features.cfg
    for window in chunk_windows(wave, cfg.segment_samples, cfg.window_samples):
        stream.step(window)
    out = {
        "gflops_per_audio_s": total / audio_s / 1e9,
        "gflops_per_audio_s_encoder": encoder.flops / audio_s / 1e9,
    }
    counts = [analytic_encoder_flops(rec.arch, rec.variants, chunk_index=k) for k in range(num_chunks)]
    if all(c is not None for c in counts):  # None: overlapping surgeries, no analytic count
        out["gflops_per_audio_s_encoder_analytic"] = sum(counts) / audio_s / 1e9
    return out


def analytic_encoder_gflops_per_audio_s(rec) -> float | None:
    """Steady-state analytic encoder GFLOPs per audio second of ``rec`` (its architecture plus
    each variant's delta), without decoding anything; None for overlapping surgeries."""
    per_chunk = analytic_encoder_flops(rec.arch, rec.variants, chunk_index=None)
    return None if per_chunk is None else per_chunk / rec.features.cfg.chunk_seconds / 1e9
