"""Latency and real-time factor: pure functions over measured per-chunk compute times.

Live-stream convention: audio arrives in real time from t=0; a chunk can start only
once its last needed sample (right context included) has arrived and the previous
chunk has finished. So when compute is slower than real time, queueing delay
accumulates and shows up in time-to-first-token and per-chunk finish times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict:
    """``{"p50": .., "p90": .., "p99": ..}`` with linear interpolation (numpy default).

    Empty ``values`` give NaN for every key (e.g. no utterance emitted a token).
    """
    keys = [f"p{q:g}" for q in qs]
    if len(values) == 0:
        return {k: float("nan") for k in keys}
    out = np.percentile(np.asarray(values, dtype=np.float64), list(qs))
    return {k: float(v) for k, v in zip(keys, out, strict=True)}


def chunk_ready_times(
    num_chunks: int, segment_s: float, right_context_s: float, audio_s: float
) -> list[float]:
    """Arrival time of the last sample chunk ``k`` needs: ``(k+1)*segment_s + right_context_s``.

    Capped at ``audio_s``: the tail chunks are padded, and their padding is "available"
    as soon as the stream ends.
    """
    if num_chunks < 0 or segment_s <= 0 or right_context_s < 0 or audio_s < 0:
        raise ValueError("need num_chunks >= 0, segment_s > 0, right_context_s >= 0, audio_s >= 0")
    return [min((k + 1) * segment_s + right_context_s, audio_s) for k in range(num_chunks)]


def simulate_live_stream(ready_s: Sequence[float], compute_s: Sequence[float]) -> list[float]:
    """Finish time of each chunk on one worker fed by a real-time stream.

    Chunk ``k`` starts at ``max(ready_s[k], finish[k-1])`` and runs ``compute_s[k]``.
    """
    if len(ready_s) != len(compute_s):
        raise ValueError(
            f"ready_s and compute_s differ in length: {len(ready_s)} vs {len(compute_s)}"
        )
    finish: list[float] = []
    previous = -math.inf
    for ready, compute in zip(ready_s, compute_s, strict=True):
        if compute < 0:
            raise ValueError(f"negative compute time {compute}")
        previous = max(ready, previous) + compute
        finish.append(previous)
    return finish


def time_to_first_token(finish_s: Sequence[float], emitted: Sequence[bool]) -> float | None:
    """Finish time of the first chunk that emitted a non-blank token; None if none did."""
    if len(finish_s) != len(emitted):
        raise ValueError(
            f"finish_s and emitted differ in length: {len(finish_s)} vs {len(emitted)}"
        )
    for finish, emit in zip(finish_s, emitted, strict=True):
        if emit:
            return finish
    return None


def rtf(total_compute_s: float, audio_s: float) -> float:
    """Real-time factor: compute seconds per second of audio (< 1 is faster than real time)."""
    if audio_s <= 0:
        raise ValueError(f"audio_s must be positive, got {audio_s}")
    return total_compute_s / audio_s
