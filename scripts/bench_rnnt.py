"""Time forward + backward of torchaudio's rnnt_loss against ours on one CPU thread.

Run: ``python scripts/bench_rnnt.py``. Prints the best of ``--repeats``
runs in ms per shape. Shapes: B batch, T frames, U target length, V vocab.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torchaudio.functional

from emformer_variants.training.rnnt_loss import rnnt_loss

SHAPES = ((16, 120, 80, 30), (8, 100, 30, 257))  # (B, T, U, V)


def make_inputs(batch: int, frames: int, labels: int, vocab: int, seed: int = 0):
    """Random logits (B, T, U+1, V) and int32 targets/lengths; blank is the last class."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, labels + 1, vocab, generator=gen)
    targets = torch.randint(0, vocab - 1, (batch, labels), dtype=torch.int32, generator=gen)
    # Realistic padding: lengths spread over the upper half, the longest fills the tensor.
    logit_lengths = torch.randint(
        frames // 2, frames + 1, (batch,), dtype=torch.int32, generator=gen
    )
    target_lengths = torch.randint(
        labels // 2, labels + 1, (batch,), dtype=torch.int32, generator=gen
    )
    logit_lengths[0], target_lengths[0] = frames, labels
    return logits.requires_grad_(), targets, logit_lengths, target_lengths


def time_ms(loss_fn: Callable, inputs: tuple, repeats: int) -> float:
    logits = inputs[0]
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up allocator and caches
        logits.grad = None
        start = time.perf_counter()
        loss_fn(*inputs, reduction="mean").backward()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = ("B", "T", "U", "V", "torchaudio ms", "ours ms", "speed-up")
    print("{:>3} {:>4} {:>3} {:>4}  {:>13}  {:>8}  {:>8}".format(*header))
    for shape in SHAPES:
        inputs = make_inputs(*shape)
        ref = time_ms(torchaudio.functional.rnnt_loss, inputs, args.repeats)
        ours = time_ms(rnnt_loss, inputs, args.repeats)
        b, t, u, v = shape
        print(f"{b:>3} {t:>4} {u:>3} {v:>4}  {ref:>13.1f}  {ours:>8.1f}  {ref / ours:>7.1f}x")


if __name__ == "__main__":
    main()
