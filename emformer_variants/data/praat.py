"""Praat's "Change gender" behind a time limit.

Praat's PSOLA resynthesis can loop for ever on some inputs (seen here: a monotone flite voice
with a formant ratio of 0.95 and a pitch range factor of 1.32 ran for minutes; a range of 1.2
took milliseconds), and it raises "Sound not created" on others. A training run must never
hang on one clip, and a C loop cannot be interrupted from Python, so the call runs in a
helper process (``python -m emformer_variants.data.praat``, started on first use, one per
process that asks, including DataLoader workers): a call that takes longer than
``TIMEOUT_S`` kills the helper (the next call starts a fresh one) and, like a Praat error,
returns ``None``, so the caller keeps the clip unchanged. Results are Praat's own, bit for bit.
PSOLA draws random numbers (for unvoiced stretches); Praat seeds them from the clock, so
every call first seeds Praat's generator with the caller's ``seed``: same input and seed,
same output, in any process.

Protocol on the helper's stdin/stdout: a little-endian uint32 length, then that many bytes:
a JSON header line ``{"n": samples, "rate": Hz, "args": [...], "seed": int}`` followed by
float64 samples;
the reply is a uint32 length and float64 samples (length 0: Praat failed).
"""

from __future__ import annotations

import json
import logging
import os
import select
import struct
import subprocess
import sys

import numpy as np

TIMEOUT_S = 10.0  # a 20 s clip takes well under 1 s
log = logging.getLogger(__name__)


def change_gender_raw(x: np.ndarray, rate: int, args: list[float], seed: int) -> np.ndarray:
    """Praat's "Change gender" in this process: args = (min pitch, max pitch, formant ratio,
    new pitch median, pitch range factor, duration factor). Raises on Praat errors."""
    import parselmouth
    from parselmouth.praat import call, run

    run(f"random_initializeWithSeedUnsafelyButPredictably ({int(seed)})")
    sound = parselmouth.Sound(np.asarray(x, dtype=np.float64), sampling_frequency=rate)
    return call(sound, "Change gender", *args).values[0]


def pitch_median(x: np.ndarray, rate: int) -> float:
    """Median F0 (Hz) of the voiced frames (75-600 Hz), NaN when nothing is voiced."""
    import parselmouth
    from parselmouth.praat import call

    sound = parselmouth.Sound(np.asarray(x, dtype=np.float64), sampling_frequency=rate)
    pitch = sound.to_pitch(time_step=0.02, pitch_floor=75, pitch_ceiling=600)
    return call(pitch, "Get quantile", 0, 0, 0.5, "Hertz")


class _Helper:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.owner = -1  # the pid that started it: a forked child starts its own

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.owner != os.getpid() or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-m", "emformer_variants.data.praat"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.owner = os.getpid()
        return self.proc

    def _kill(self) -> None:
        if self.proc is not None and self.owner == os.getpid():
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _read(self, fd: int, n: int, deadline: float) -> bytes | None:
        import time

        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, n - got)
            if not chunk:
                return None  # the helper died
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def call(self, x: np.ndarray, rate: int, args: list[float], seed: int) -> np.ndarray | None:
        import time

        proc = self._start()
        x = np.ascontiguousarray(x, dtype=np.float64)
        header = json.dumps({"n": int(x.size), "rate": int(rate), "args": [float(a) for a in args],
                             "seed": int(seed)})
        body = header.encode() + b"\n" + x.tobytes()
        try:
            proc.stdin.write(struct.pack("<I", len(body)) + body)
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._kill()
            return None
        deadline = time.monotonic() + TIMEOUT_S
        fd = proc.stdout.fileno()
        head = self._read(fd, 4, deadline)
        if head is None:
            log.warning("Praat took over %.0f s on a %.1f s clip (args %s): clip left unchanged",
                        TIMEOUT_S, x.size / rate, args)
            self._kill()
            return None
        (n,) = struct.unpack("<I", head)
        data = self._read(fd, n, deadline) if n else b""
        if data is None:
            self._kill()
            return None
        return np.frombuffer(data, dtype=np.float64).copy() if n else None


_HELPER = _Helper()


def change_gender_guarded(x: np.ndarray, rate: int, args: list[float], seed: int) -> np.ndarray | None:
    """``change_gender_raw`` in the helper process; None on a Praat error or a timeout."""
    return _HELPER.call(x, rate, args, seed)


def _serve() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return
        (n,) = struct.unpack("<I", head)
        body = stdin.read(n)
        header, _, raw = body.partition(b"\n")
        meta = json.loads(header)
        try:
            out = change_gender_raw(np.frombuffer(raw, dtype=np.float64), meta["rate"], meta["args"],
                                    meta["seed"])
            data = np.ascontiguousarray(out, dtype=np.float64).tobytes()
        except Exception:  # noqa: BLE001 - Praat's errors ("Sound not created ..."): the caller keeps the clip
            data = b""
        stdout.write(struct.pack("<I", len(data)) + data)
        stdout.flush()


if __name__ == "__main__":
    _serve()
