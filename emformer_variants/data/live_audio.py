"""Audio that arrives over time, as 16 kHz mono blocks: raw PCM from a pipe (read block by
block, resampled and downmixed on the fly) or a file paced at real speed.

    arecord -f S16_LE -r 16000 | python -m emformer_variants.transcribe -

Shapes: S samples, C channels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np
import torch
import torchaudio.functional as AF

from emformer_variants.data.audio import SAMPLE_RATE
from emformer_variants.errors import UserError


class StreamingResampler:
    """``rate`` -> 16 kHz over a stream of blocks, matching one resample of the whole.

    torchaudio's resampler is a short FIR filter (a few input samples either side), so each
    block is resampled with ``margin`` input samples of context on both sides and only its
    middle is kept. Blocks start on multiples of ``rate / gcd`` input samples, where the
    output grid lines up with the input grid.
    """

    def __init__(self, rate: int, margin_s: float = 0.01):
        g = math.gcd(rate, SAMPLE_RATE)
        self.rate, self.a, self.b = rate, rate // g, SAMPLE_RATE // g
        self.margin = self.a * math.ceil(margin_s * rate / self.a)
        self.buf = torch.zeros(self.margin)  # left context of the next block (zeros at the start)
        self.consumed = 0  # input samples resampled so far
        self.emitted = 0

    def _run(self, block_in: int) -> torch.Tensor:
        """Resample the next ``block_in`` (a multiple of ``a``) input samples of ``buf``."""
        m = self.margin
        out = AF.resample(self.buf[: m + block_in + m], self.rate, SAMPLE_RATE)
        lo = m // self.a * self.b
        out = out[lo: lo + block_in // self.a * self.b]
        self.buf = self.buf[block_in:]
        self.consumed += block_in
        self.emitted += out.numel()
        return out

    def feed(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == SAMPLE_RATE:
            return x
        self.buf = torch.cat([self.buf, x])
        ready = (self.buf.numel() - 2 * self.margin) // self.a * self.a
        return self._run(ready) if ready > 0 else torch.zeros(0)

    def flush(self) -> torch.Tensor:
        """The rest, as if the stream ended in zeros; ceil(S * 16000 / rate) samples in all."""
        if self.rate == SAMPLE_RATE:
            return torch.zeros(0)
        rest = self.buf.numel() - self.margin
        total_in = self.consumed + rest
        block = math.ceil(rest / self.a) * self.a
        self.buf = torch.cat([self.buf, torch.zeros(block - rest + self.margin)])
        out = self._run(block) if block else torch.zeros(0)
        want = math.ceil(total_in * SAMPLE_RATE / self.rate) - (self.emitted - out.numel())
        return out[:max(0, want)]


def pcm_blocks(source: BinaryIO, rate: int = SAMPLE_RATE, channels: int = 1,
               block_s: float = 0.16, name: str = "stdin") -> Iterator[torch.Tensor]:
    """Raw 16-bit little-endian interleaved PCM read ``block_s`` at a time -> float32 16 kHz
    mono blocks, each yielded as soon as it is read. Ctrl-C ends the stream like EOF."""
    if rate < 1000 or channels < 1:
        raise UserError(f"--rate {rate} --channels {channels}: need a sample rate >= 1000 Hz and "
                        "at least one channel")
    frame = 2 * channels
    want = max(1, int(rate * block_s)) * frame
    resampler = StreamingResampler(rate)
    carry = b""
    while True:
        try:
            data = source.read(want)
        except KeyboardInterrupt:
            data = b""
        if not data:
            break
        data = carry + data
        usable = len(data) // frame * frame
        data, carry = data[:usable], data[usable:]
        if not data:
            continue
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        wave = torch.from_numpy(samples.reshape(-1, channels).mean(axis=1))
        out = resampler.feed(wave)
        if out.numel():
            yield out
    if carry:
        raise UserError(f"{name}: the stream ended inside a sample frame ({len(carry)} stray bytes); "
                        f"send 16-bit little-endian PCM with --channels {channels}")
    out = resampler.flush()
    if out.numel():
        yield out


def wave_blocks(wave: torch.Tensor, block_s: float = 0.16) -> Iterator[torch.Tensor]:
    """A loaded 16 kHz wave in blocks of ``block_s``."""
    step = max(1, int(block_s * SAMPLE_RATE))
    for start in range(0, wave.numel(), step):
        yield wave[start:start + step]


def paced(blocks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Yield each 16 kHz block no earlier than its last sample would have been recorded."""
    t0, seen = time.monotonic(), 0
    for block in blocks:
        seen += block.numel()
        wait = t0 + seen / SAMPLE_RATE - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        yield block


class Counted:
    """Passes blocks through and counts their samples: the audio received so far."""

    def __init__(self, blocks: Iterable[torch.Tensor]):
        self.blocks, self.samples = blocks, 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        for block in self.blocks:
            self.samples += block.numel()
            yield block

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE
