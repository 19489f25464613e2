"""The streaming loop: features -> encoder step -> search step, one chunk at a time.

Every ``segment`` of samples, the window ``segment + right context`` goes through the
streaming feature extractor, the encoder (left-context cache and memory carried in its
state) and the search, seeded with the previous chunk's beam, exactly as a live stream
would run. ``Stream`` is that loop's one step; evaluation, profiling, the benchmark and the
long-stream check all drive it, and watch it through hooks:

- a hook's ``stage(name)`` is a context manager around each stage (``features``,
  ``encoder``, ``search``): timing, profiler ranges, FLOP counting;
- its ``chunk_done(stream)`` runs after each chunk (state bytes, memory).

Shapes: N streams, S samples per window, T feature frames per chunk, F mel bins.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

import torch

from emformer_variants.engine.pipeline import Pipeline, build_pipeline

STAGES = ("features", "encoder", "search")


class StreamHook:
    """Does nothing; subclasses override what they watch."""

    def stage(self, name: str):
        return nullcontext()

    def chunk_done(self, stream: Stream) -> None:
        pass


class StageTimer(StreamHook):
    """Wall-clock seconds of every stage of every chunk: ``seconds[stage]`` lists."""

    def __init__(self):
        self.seconds: dict[str, list[float]] = {name: [] for name in STAGES}

    def stage(self, name: str):
        return _Timed(self.seconds[name])


class _Timed:
    def __init__(self, out: list[float]):
        self.out = out

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.out.append(time.perf_counter() - self.t0)


class Stream:
    """``n`` streams of one pipeline, advanced together one chunk at a time.

    ``state`` is the encoder's streaming state, ``beams[i]`` stream i's search state (its
    beam), both carried from chunk to chunk.
    """

    def __init__(self, rec, pipeline: Pipeline, n: int = 1, hooks: tuple[StreamHook, ...] = ()):
        self.rec, self.pipe, self.n, self.hooks = rec, pipeline, n, tuple(hooks)
        self.state = pipeline.encoder.init(n)
        self.beams = [pipeline.search.init_state() for _ in range(n)]

    def _stage(self, name: str) -> ExitStack:
        stack = ExitStack()
        for hook in self.hooks:
            stack.enter_context(hook.stage(name))
        return stack

    @torch.inference_mode()
    def step(self, windows: torch.Tensor) -> None:
        """One chunk: ``windows`` (S,) for a single stream, or (N, S)."""
        with self._stage("features"):
            if windows.dim() == 1:
                feats = self.rec.features.streaming(windows).unsqueeze(0)  # (1, T, F)
            else:
                feats = self.rec.features.streaming(windows)  # (N, T, F)
        with self._stage("encoder"):
            enc, self.state = self.pipe.encoder.step(feats, self.state)
        with self._stage("search"):
            self.beams = self.pipe.search.step(enc, self.beams)
        for hook in self.hooks:
            hook.chunk_done(self)

    def restart(self, i: int) -> None:
        """Stream ``i`` starts a new utterance (its history and beam are dropped)."""
        if self.n == 1:
            self.state = self.pipe.encoder.init(1)
        else:
            self.pipe.encoder.reset(self.state, i)
        self.beams[i] = self.pipe.search.init_state()

    def best_tokens(self, i: int = 0) -> list[int]:
        return self.pipe.search.best_tokens(self.beams[i])

    def state_bytes(self) -> int:
        return self.pipe.encoder.state_bytes(self.state)


def chunk_windows(wave: torch.Tensor, segment: int, window: int):
    """Yield zero-padded (window,) sample windows every ``segment`` samples."""
    for start in range(0, max(1, wave.numel()), segment):
        chunk = wave[start:start + window]
        if chunk.numel() < window:
            chunk = torch.nn.functional.pad(chunk, (0, window - chunk.numel()))
        yield chunk


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


@torch.inference_mode()
def stream_decode(rec, wave: torch.Tensor, beam: int = 10, pipeline: Pipeline | None = None,
                  hooks: tuple[StreamHook, ...] = ()) -> StreamResult:
    """Decode one utterance (S,) chunk by chunk with ``pipeline`` (default: stock, ``beam``);
    returns text, per-stage timings and state size."""
    pipe = pipeline or build_pipeline(rec, "stock", beam)
    cfg = rec.features.cfg
    timer = StageTimer()
    stream = Stream(rec, pipe, hooks=(timer, *hooks))
    first = None
    for k, window in enumerate(chunk_windows(wave, cfg.segment_samples, cfg.window_samples)):
        stream.step(window)
        if first is None and stream.best_tokens():
            first = k
    return StreamResult(text=rec.tokenizer.decode(stream.best_tokens()),
                        audio_s=wave.numel() / cfg.sample_rate,
                        features_s=timer.seconds["features"], encoder_s=timer.seconds["encoder"],
                        decoder_s=timer.seconds["search"], first_token_chunk=first,
                        state_bytes=stream.state_bytes())
