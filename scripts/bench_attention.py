"""Time the engine's one-pass attention (``kernels/attention.cpp``) against the reshaped
``bmm`` / softmax / ``bmm`` it replaces, on the attention shapes of a streaming chunk.

    python scripts/bench_attention.py [--streams 1 32] [--layers 20] [--width 512] [--heads 8]
                                      [--rows 5] [--keys 35] [--reps 20] [--rounds 7]

Defaults are ``emformer_base``'s (5 query rows: 1 right context + 4 utterance frames; 35
keys: those rows and 30 left-context frames). The query is a strided slice of a fused q/k/v
tensor, as the encoder passes it. Reported: the thread's CPU ms per step (``--layers`` calls),
median of ``--rounds`` rounds of ``--reps`` steps each, for both, and their ratio; 1 thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from emformer_variants.engine import packed


def reshaped_bmm(q, k, v, mask, heads: int, scaling: float) -> torch.Tensor:
    """The Python loop's attention without the kernel (``engine.encoder._Attention``)."""
    n, t, d = q.shape
    kt = k.shape[1]
    qh = q.view(n, t, heads, d // heads).transpose(1, 2).reshape(n * heads, t, d // heads)
    kh = k.view(n, kt, heads, d // heads).transpose(1, 2).reshape(n * heads, kt, d // heads)
    vh = v.view(n, kt, heads, d // heads).transpose(1, 2).reshape(n * heads, kt, d // heads)
    probs = torch.softmax(torch.bmm(qh * scaling, kh.transpose(1, 2)), dim=-1)
    return torch.bmm(probs, vh).view(n, heads, t, d // heads).transpose(1, 2).reshape(n, t, d)


def one_pass(q, k, v, mask, heads: int, scaling: float) -> torch.Tensor:
    return packed.run("stream_attention", q, k, v, mask, heads, scaling)


def cpu_ms_per_step(fn, args, layers: int, reps: int, rounds: int) -> float:
    for _ in range(reps):
        fn(*args)
    times = []
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(reps * layers):
            fn(*args)
        times.append(1000 * (time.thread_time() - start) / reps)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, nargs="+", default=[1, 32])
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--rows", type=int, default=5)
    p.add_argument("--keys", type=int, default=35)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    if packed.kernel() is None:
        raise SystemExit("bench_attention: the engine's kernels do not load here")
    print(f"# {packed.isa_report()}; CPU ms per step of {args.layers} layers, 1 thread")
    print("| streams | reshaped bmm | one pass | ratio | max abs diff |")
    print("|---|---|---|---|---|")
    d, scaling = args.width, (args.width // args.heads) ** -0.5
    for n in args.streams:
        g = torch.Generator().manual_seed(n)
        q = torch.randn(n, args.rows, 3 * d, generator=g)[:, :, :d]
        k, v = (torch.randn(n, args.keys, d, generator=g) for _ in range(2))
        call = (q, k, v, None, args.heads, scaling)
        old = cpu_ms_per_step(reshaped_bmm, call, args.layers, args.reps, args.rounds)
        new = cpu_ms_per_step(one_pass, call, args.layers, args.reps, args.rounds)
        diff = (reshaped_bmm(*call) - one_pass(*call)).abs().max().item()
        print(f"| {n} | {old:.2f} | {new:.2f} | {old / new:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
