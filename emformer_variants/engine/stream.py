"""The streaming loop: features -> encoder step -> search step, one chunk at a time.

Every ``segment`` of samples, the window ``segment + right context`` goes through the
streaming feature extractor, the encoder (left-context cache and memory carried in its
state) and the search, seeded with the previous chunk's beam, exactly as a live stream
would run. ``Stream`` is that loop's one step; evaluation, profiling, the benchmark and the
long-stream check all drive it, and watch it through hooks:

- a hook's ``stage(name)`` is a context manager around each stage (``features``,
  ``encoder``, ``search``): timing, profiler ranges, FLOP counting;
- its ``chunk_done(stream)`` runs after each chunk (state bytes, memory).

``decode_chunks`` is the loop itself, a generator of one ``ChunkUpdate`` per chunk (the
partial hypothesis, and whether an endpoint made it final); ``stream_decode`` (a whole
utterance) and the transcribe CLI (a live source) consume it. ``stream_windows`` cuts any
sequence of sample blocks (a file, or PCM arriving from a pipe) into the chunk windows.

Shapes: N streams, S samples per window, T feature frames per chunk, F mel bins.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field

import torch

from emformer_variants.engine.endpoint import EndpointConfig, EndpointTracker
from emformer_variants.engine.pipeline import Pipeline, build_pipeline

STAGES = ("features", "encoder", "search")
_NO_HOOKS = nullcontext()  # reusable: a stream without hooks times nothing


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


class _LastStream(StreamHook):
    """The stream being decoded, to read its state size once the loop is done."""

    stream = None

    def chunk_done(self, stream: Stream) -> None:
        self.stream = stream


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

    def _stage(self, name: str) -> AbstractContextManager:
        if not self.hooks:
            return _NO_HOOKS
        stack = ExitStack()
        for hook in self.hooks:
            stack.enter_context(hook.stage(name))
        return stack

    @torch.inference_mode()
    def step(self, windows: torch.Tensor) -> None:
        """One chunk: ``windows`` (S,) for a single stream, or (N, S)."""
        with self._stage("features"):
            if self.pipe.features is not None:
                feats = self.pipe.features(windows)  # (N, T, F)
            elif windows.dim() == 1:
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

    def restart_search(self, i: int = 0) -> None:
        """Stream ``i`` starts a new segment: a fresh hypothesis (zero predictor state); the
        encoder keeps its streaming state (an endpoint inside one live stream)."""
        self.beams[i] = self.pipe.search.init_state()

    def best_tokens(self, i: int = 0) -> list[int]:
        return self.pipe.search.best_tokens(self.beams[i])

    def hypotheses(self, i: int = 0) -> list[tuple[list[int], float]]:
        """Stream ``i``'s beam, best first: (tokens with the priming blank first, score)."""
        return self.pipe.search.hypotheses(self.beams[i])

    def state_bytes(self) -> int:
        return self.pipe.encoder.state_bytes(self.state)


def chunk_windows(wave: torch.Tensor, segment: int, window: int):
    """Yield zero-padded (window,) sample windows every ``segment`` samples."""
    return stream_windows([wave], segment, window)


def stream_windows(blocks: Iterable[torch.Tensor], segment: int, window: int,
                   tail: int = 0) -> Iterator[torch.Tensor]:
    """(window,) sample windows every ``segment`` samples of the concatenated ``blocks``,
    each yielded as soon as its samples have arrived; ``tail`` zero samples are appended at
    the end (to flush a stream), and the last window is zero-padded. A stream of S samples
    gives ceil(S / segment) windows (at least one), as ``chunk_windows`` of the whole."""
    buf, total, sent = torch.zeros(0), 0, 0
    for block in blocks:
        block = block.reshape(-1).float()
        buf = torch.cat([buf, block]) if buf.numel() else block
        total += block.numel()
        while buf.numel() >= window:
            yield buf[:window]
            buf, sent = buf[segment:], sent + segment
    if tail:
        buf = torch.cat([buf, torch.zeros(tail)])
        total += tail
    while sent < total or sent == 0:
        chunk = buf[:window]
        if chunk.numel() < window:
            chunk = torch.nn.functional.pad(chunk, (0, window - chunk.numel()))
        yield chunk
        buf, sent = buf[segment:], sent + segment


@dataclass
class ChunkUpdate:
    """The stream after chunk ``index`` (of ``chunk_s`` seconds of audio each).

    ``tokens`` / ``text``: the current segment's best hypothesis. ``first_chunk``: the chunk
    where the segment's text became non-empty; ``last_chunk``: where its hypothesis last
    changed (both None while it has no text). ``final``: the segment ends here (``rule``:
    the endpoint rule that fired, None at the end of the stream); the next update starts a
    new segment. ``compute_s``: wall time of this chunk (0 for the end-of-stream update,
    which has no chunk of its own: ``index`` is then the number of chunks).
    """

    index: int
    tokens: list[int]
    text: str
    first_chunk: int | None
    last_chunk: int | None
    final: bool = False
    rule: int | None = None
    compute_s: float = 0.0


@torch.inference_mode()
def decode_chunks(rec, windows: Iterable[torch.Tensor], pipeline: Pipeline,
                  hooks: tuple[StreamHook, ...] = (),
                  endpoint: EndpointConfig | None = None) -> Iterator[ChunkUpdate]:
    """The per-chunk streaming loop over one stream: one ``ChunkUpdate`` per window, then a
    final one for the end of the stream. With ``endpoint``, a segment ends when a rule of
    ``engine.endpoint`` fires: the search restarts from a fresh hypothesis while the encoder
    keeps its state. Without it, the whole stream is one segment."""
    stream = Stream(rec, pipeline, hooks=hooks)
    chunk_s = rec.features.cfg.chunk_seconds
    tracker = EndpointTracker(endpoint) if endpoint is not None else None
    prev, text = [], ""
    first = last = None
    k = -1
    for k, window in enumerate(windows):
        t0 = time.perf_counter()
        stream.step(window)
        tokens = stream.best_tokens()
        compute = time.perf_counter() - t0
        if tokens != prev:
            text = rec.tokenizer.decode(tokens)
            if text:
                first = k if first is None else first
                last = k
        prev = tokens
        rule = None
        if tracker is not None:
            # texts, not tokens: a word boundary emitted into a pause decodes to nothing new
            beam = [rec.tokenizer.decode(t[1:]) for t, _ in stream.hypotheses()]
            rule = tracker.update(text, chunk_s, bool(text), beam)
        yield ChunkUpdate(k, tokens, text, first, last, rule is not None, rule, compute)
        if rule is not None:
            stream.restart_search(0)
            tracker.reset()
            prev, text, first, last = [], "", None, None
    yield ChunkUpdate(k + 1, prev, text, first, last, True, None)


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
                  hooks: tuple[StreamHook, ...] = (),
                  endpoint: EndpointConfig | None = None) -> StreamResult:
    """Decode one utterance (S,) chunk by chunk with ``pipeline`` (default: stock, ``beam``);
    returns text, per-stage timings and state size. With ``endpoint``, the text is the
    segments' texts joined by spaces."""
    pipe = pipeline or build_pipeline(rec, "stock", beam)
    cfg = rec.features.cfg
    timer, last = StageTimer(), _LastStream()
    first, segments = None, []
    for update in decode_chunks(rec, chunk_windows(wave, cfg.segment_samples, cfg.window_samples),
                                pipe, hooks=(timer, last, *hooks), endpoint=endpoint):
        if first is None and update.first_chunk is not None:
            first = update.first_chunk
        if update.final and update.text:
            segments.append(update.text)
    state_bytes = last.stream.state_bytes() if last.stream is not None else 0
    return StreamResult(text=" ".join(segments),
                        audio_s=wave.numel() / cfg.sample_rate,
                        features_s=timer.seconds["features"], encoder_s=timer.seconds["encoder"],
                        decoder_s=timer.seconds["search"], first_token_chunk=first,
                        state_bytes=state_bytes)
