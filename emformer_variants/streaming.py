"""Chunked streaming decoding with carried state, exactly as a live stream would run.

Every ``segment`` of samples, the window ``segment + right context`` goes through the
streaming feature extractor, the encoder (left-context cache and memory carried in its
state) and the search, seeded with the previous chunk's beam. Each stage is timed. The
default pipeline is torchaudio's stock one (``transcribe_streaming`` + ``RNNTBeamSearch``);
``engine.pipeline`` names the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from emformer_variants.engine.pipeline import Pipeline, build_pipeline


@dataclass
class StreamResult:
    text: str
    audio_s: float
    features_s: list[float] = field(default_factory=list)  # per chunk
    encoder_s: list[float] = field(default_factory=list)
    decoder_s: list[float] = field(default_factory=list)
    first_token_chunk: int | None = None
    state_bytes: int = 0  # encoder streaming state (left-context K/V cache, memory) per stream

    @property
    def chunk_s(self) -> list[float]:
        return [a + b + c for a, b, c in zip(self.features_s, self.encoder_s, self.decoder_s, strict=True)]


def chunk_windows(wave: torch.Tensor, segment: int, window: int):
    """Yield zero-padded (window,) sample windows every ``segment`` samples."""
    for start in range(0, max(1, wave.numel()), segment):
        chunk = wave[start:start + window]
        if chunk.numel() < window:
            chunk = torch.nn.functional.pad(chunk, (0, window - chunk.numel()))
        yield chunk


@torch.inference_mode()
def stream_decode(rec, wave: torch.Tensor, beam: int, pipeline: Pipeline | None = None
                  ) -> StreamResult:
    """Decode one utterance (S,) chunk by chunk; returns text, timings and state size."""
    pipe = pipeline or build_pipeline(rec, "stock", beam)
    cfg = rec.features.cfg
    result = StreamResult(text="", audio_s=wave.numel() / cfg.sample_rate)
    state, hyps = pipe.encoder.init(1), [pipe.search.init_state()]
    for k, window in enumerate(chunk_windows(wave, cfg.segment_samples, cfg.window_samples)):
        t0 = time.perf_counter()
        feats = rec.features.streaming(window).unsqueeze(0)  # (1, T, F)
        t1 = time.perf_counter()
        enc, state = pipe.encoder.step(feats, state)
        t2 = time.perf_counter()
        hyps = pipe.search.step(enc, hyps)
        t3 = time.perf_counter()
        result.features_s.append(t1 - t0)
        result.encoder_s.append(t2 - t1)
        result.decoder_s.append(t3 - t2)
        if result.first_token_chunk is None and pipe.search.best_tokens(hyps[0]):
            result.first_token_chunk = k
    result.text = rec.tokenizer.decode(pipe.search.best_tokens(hyps[0]))
    result.state_bytes = pipe.encoder.state_bytes(state)
    return result
