"""Where a many-stream step spends its time: CPU ms per stage (features, encoder, search) of
one batched step of N streams, by the thread's CPU time (steady on a shared machine, where
wall time is not), and optionally the top functions by CPU time.

    python scripts/profile_streams.py [--model emformer_base] [--mode modified@int8] [--beam 4]
        [--streams 32] [--steps 4] [--restart-every 40] [--functions 12] [--selection-ab]

``--selection-ab`` (modified modes): the batched selection and one top-k per stream
(``batched=False``) on the same encoder outputs, alternating step by step, CPU ms of each.

Random audio: the speed of the encoder does not depend on it; the search's does (symbols per
frame), and on a random-weight model it is not a trained model's.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import time
from contextlib import contextmanager

import torch

from emformer_variants.bench import Mode, build_model
from emformer_variants.engine.precision import apply_precision_
from emformer_variants.engine.stream import STAGES, Stream, StreamHook


class CpuStages(StreamHook):
    def __init__(self):
        self.ms = {name: 0.0 for name in STAGES}

    @contextmanager
    def stage(self, name: str):
        t0 = time.thread_time()
        yield
        self.ms[name] += 1000 * (time.thread_time() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="emformer_base", choices=["tiny", "emformer_base"])
    p.add_argument("--mode", default="modified@int8")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--restart-every", type=int, default=0,
                   help="start new utterances every N steps (0: never; hypotheses grow with the steps)")
    p.add_argument("--functions", type=int, default=0, help="also print the top N functions by CPU time")
    p.add_argument("--selection-ab", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mode = Mode.parse(args.mode)
    rec, _ = build_model(args.model)
    rec = copy.deepcopy(rec) if mode.precision != "fp32" else rec
    apply_precision_(rec, mode.precision)
    pipe = mode.build(rec, args.beam)
    cfg = rec.features.cfg
    hook = CpuStages()
    stream = Stream(rec, pipe, args.streams, hooks=(hook,))
    windows = 0.1 * torch.randn(args.steps + 1, args.streams, cfg.window_samples)
    stream.step(windows[0])  # warm-up
    hook.ms = dict.fromkeys(STAGES, 0.0)
    prof = cProfile.Profile(time.thread_time) if args.functions else None
    if prof:
        prof.enable()
    for k in range(1, args.steps + 1):
        if args.restart_every and k % args.restart_every == 0:
            for i in range(args.streams):
                stream.restart(i)
        stream.step(windows[k])
    if prof:
        prof.disable()
    per_step = {name: ms / args.steps for name, ms in hook.ms.items()}
    print(f"{args.model} {mode.label} beam {args.beam}, {args.streams} streams: CPU ms per step "
          + ", ".join(f"{k} {v:.1f}" for k, v in per_step.items())
          + f"; total {sum(per_step.values()):.1f} ({sum(per_step.values()) / args.streams:.2f} per stream)")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.functions)
    if args.selection_ab:
        selection_ab(rec, mode, args, windows)


@torch.inference_mode()
def selection_ab(rec, mode: Mode, args, windows: torch.Tensor) -> None:
    from emformer_variants.engine.pipeline import build_pipeline

    opts = {"max_symbols": mode.symbols or 1}
    pipes = {b: build_pipeline(rec, "modified", args.beam, batched=b, **opts) for b in (True, False)}
    state = pipes[True].encoder.init(args.streams)
    beams = {b: [None] * args.streams for b in pipes}
    ms = {b: [] for b in pipes}
    for k in range(len(windows)):
        enc, state = pipes[True].encoder.step(rec.features.streaming(windows[k]), state)
        for b in ((True, False) if k % 2 else (False, True)):
            t0 = time.thread_time()
            beams[b] = pipes[b].search.step(enc, beams[b])
            ms[b].append(1000 * (time.thread_time() - t0))
        assert [[h.tokens for h in x] for x in beams[True]] == [[h.tokens for h in x] for x in beams[False]]
    fast, slow = (sum(ms[b][1:]) / (len(ms[b]) - 1) for b in (True, False))
    print(f"search CPU ms per step, alternating, same beams: batched selection {fast:.1f}, "
          f"one top-k per stream {slow:.1f} ({slow / fast:.2f}x)")


if __name__ == "__main__":
    main()
