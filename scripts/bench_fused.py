"""Time the engine's fused C++ paths against the Python loops they replace: the encoder's
layer stack, the predictor's token step, and exact mode's search.

    python scripts/bench_fused.py [--model emformer_base|tiny] [--precisions fp32 fp16 bf16 int8]
                                  [--chunks 40] [--rows 10] [--beam 10] [--threads 1]

Both encoders (``StreamingEncoder(model)`` and ``StreamingEncoder(model, fused=False)``) get
the same random feature chunks, alternately, chunk by chunk, each carrying its own state;
their outputs must be identical (it says so, or fails). Reported: median ms per chunk of
each, the ratio, and the time of the matmuls alone (every layer's packed linears called on
the same shapes, same order), so "other ms" is what remains around them: norms, attention,
activation, copies and, for the loop, the interpreter.

Predictor: ``PredictorStep(predictor)`` and ``PredictorStep(predictor, fused=False)`` step the
same ``--rows`` random tokens from the same random states (a beam's worth), alternately; the
median of ``--chunks`` x 10 calls each, and whether the results are identical.

Exact search: ``ExactBeamSearch(model, fused=True)`` (one C++ call per chunk) and
``fused=False`` (the Python loop) search the same encoder output (the fused encoder's, on
random features), alternately, chunk by chunk, each carrying its own beam; every chunk's beam
(tokens and scores) must be identical. Reported: median ms per chunk and joiner rows per chunk.

Instruction sets (``--isas avx2 avx512``, instead of the tables above): the fused encoder and
exact search run once per instruction set on the same chunks (alternating which goes first),
each carrying its own state; every chunk's encoder output and beam must be the same bits on
every path. Reported per path: ms per chunk for the encoder, its packed linears alone, the
search, and both; and the memory floor, one thread reading the encoder's weight bytes once.
``--clock cpu`` times the thread's CPU time instead of wall time (steadier on a busy machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emformer_variants.bench import build_model  # noqa: E402
from emformer_variants.engine.encoder import StreamingEncoder  # noqa: E402
from emformer_variants.engine.exact import ExactBeamSearch  # noqa: E402
from emformer_variants.engine.linear import kernel_impl  # noqa: E402
from emformer_variants.engine.names import KERNEL_PRECISIONS  # noqa: E402
from emformer_variants.engine.packed import available_isas, isa_report, kernel, use_isa  # noqa: E402
from emformer_variants.engine.precision import apply_precision_  # noqa: E402
from emformer_variants.engine.predictor import PredictorStep  # noqa: E402

now = time.perf_counter  # or time.thread_time (--clock cpu)


def matmuls_only(enc: StreamingEncoder, rows: int):
    """A callable running the packed linears of every layer once on ``rows`` rows."""
    calls = []
    for layer in enc.layers:
        _, lin1, _, lin2 = layer.ff_parts
        for lin in (*layer.attention.chains(), lin1, lin2):
            calls.append((lin, torch.randn(rows, lin.in_features)))

    def run():
        for lin, x in calls:
            lin(x)
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="emformer_base", choices=["emformer_base", "tiny"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16"],
                   choices=KERNEL_PRECISIONS)
    p.add_argument("--chunks", type=int, default=40)
    p.add_argument("--rows", type=int, default=10, help="predictor rows per call")
    p.add_argument("--beam", type=int, default=10, help="exact search beam")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--isas", nargs="+", default=None, choices=["avx2", "avx512"],
                   help="compare the fused paths across these instruction sets instead")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall time, or the thread's CPU time")
    args = p.parse_args()
    global now
    now = time.perf_counter if args.clock == "wall" else time.thread_time
    if kernel() is None:
        print("bench_fused: the packed kernel is unavailable here (see the warning above); "
              "nothing to compare", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    if args.isas:
        return bench_isas(args, torch.Generator().manual_seed(0))
    print(f"# {args.model}, threads {args.threads}, {args.chunks} chunks per encoder, alternating; "
          f"median {args.clock} ms per chunk; {isa_report()}")
    print("| precision | Python loop ms | fused stack ms | speedup | matmuls ms | other ms, loop | "
          "other ms, fused | outputs identical |")
    print("|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for precision in args.precisions:
        rec, _ = build_model(args.model)
        apply_precision_(rec, precision)
        encs = {"loop": StreamingEncoder(rec.model, fused=False), "fused": StreamingEncoder(rec.model)}
        if encs["fused"].stack is None:
            raise SystemExit(f"bench_fused: {args.model} at {precision} does not run fused")
        enc = encs["fused"]
        t_in = (enc.segment + enc.right) * enc.stride + (enc.stride - 1)
        states = {k: e.init(1) for k, e in encs.items()}
        times: dict[str, list[float]] = {k: [] for k in [*encs, "matmuls"]}
        mm = matmuls_only(enc, enc.segment + enc.right)
        same = True
        with torch.inference_mode():
            for c in range(args.chunks + 5):  # 5 warm-up chunks
                feats = torch.randn(1, t_in, rec.features.cfg.n_mels, generator=gen)
                outs = {}
                for k in (list(encs) if c % 2 else list(encs)[::-1]):
                    t0 = now()
                    outs[k], states[k] = encs[k].step(feats, states[k])
                    if c >= 5:
                        times[k].append(1000 * (now() - t0))
                t0 = now()
                mm()
                if c >= 5:
                    times["matmuls"].append(1000 * (now() - t0))
                same &= torch.equal(outs["loop"], outs["fused"])
        loop, fused, mat = (statistics.median(times[k]) for k in ("loop", "fused", "matmuls"))
        print(f"| {precision} | {loop:.2f} | {fused:.2f} | {loop / fused:.2f}x | {mat:.2f} | "
              f"{loop - mat:.2f} | {fused - mat:.2f} | {'yes' if same else 'NO'} |")
        if not same:
            return 1
    return bench_predictor(args, gen)


def bench_predictor(args, gen: torch.Generator) -> int:
    print(f"\n# predictor step, {args.rows} rows per call, {args.chunks * 10} calls each, alternating; "
          "median us per call")
    print("| precision | Python loop us | fused step us | speedup | outputs identical |")
    print("|---|---|---|---|---|")
    for precision in args.precisions:
        rec, _ = build_model(args.model)
        apply_precision_(rec, precision)
        steps = {"loop": PredictorStep(rec.model.predictor, fused=False),
                 "fused": PredictorStep(rec.model.predictor)}
        if steps["fused"].fused is None:
            raise SystemExit(f"bench_fused: the predictor of {args.model} at {precision} does not run fused")
        one = steps["fused"]
        times: dict[str, list[float]] = {k: [] for k in steps}
        same = True
        with torch.inference_mode():
            for c in range(args.chunks * 10 + 20):  # 20 warm-up calls
                tokens = torch.randint(0, one.table0.shape[0], (args.rows,), generator=gen)
                shape = (one.num_layers, args.rows, one.hidden)
                h, cell = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
                pgates = one.recurrent_gates(h)
                outs = {}
                for k in (list(steps) if c % 2 else list(steps)[::-1]):
                    t0 = now()
                    outs[k] = steps[k](tokens, pgates, cell)
                    if c >= 20:
                        times[k].append(1e6 * (now() - t0))
                same &= all(torch.equal(a, b) for a, b in zip(outs["loop"], outs["fused"], strict=True))
        loop, fused = (statistics.median(times[k]) for k in ("loop", "fused"))
        print(f"| {precision} | {loop:.0f} | {fused:.0f} | {loop / fused:.2f}x | {'yes' if same else 'NO'} |")
        if not same:
            return 1
    return bench_search(args, gen)


def bench_search(args, gen: torch.Generator) -> int:
    print(f"\n# exact search, beam {args.beam}, {args.chunks} chunks each, alternating; median ms per chunk")
    print("| precision | Python loop ms | fused search ms | speedup | joiner rows per chunk | "
          "beams identical |")
    print("|---|---|---|---|---|---|")
    for precision in args.precisions:
        rec, _ = build_model(args.model)
        apply_precision_(rec, precision)
        searches = {"loop": ExactBeamSearch(rec.model, rec.blank, args.beam, fused=False),
                    "fused": ExactBeamSearch(rec.model, rec.blank, args.beam)}
        if searches["fused"].fused is None:
            raise SystemExit(f"bench_fused: exact search of {args.model} at {precision} does not run fused")
        enc = StreamingEncoder(rec.model)
        t_in = (enc.segment + enc.right) * enc.stride + (enc.stride - 1)
        state = enc.init(1)
        beams = {k: [None] for k in searches}
        times: dict[str, list[float]] = {k: [] for k in searches}
        same = True
        with torch.inference_mode():
            for c in range(args.chunks + 5):  # 5 warm-up chunks
                feats = torch.randn(1, t_in, rec.features.cfg.n_mels, generator=gen)
                out, state = enc.step(feats, state)
                for k in (list(searches) if c % 2 else list(searches)[::-1]):
                    t0 = now()
                    beams[k] = searches[k].step(out, beams[k])
                    if c >= 5:
                        times[k].append(1000 * (now() - t0))
                same &= searches["loop"].hypotheses(beams["loop"][0]) == \
                    searches["fused"].hypotheses(beams["fused"][0])
        loop, fused = (statistics.median(times[k]) for k in searches)
        rows = searches["loop"].joiner_rows / (args.chunks + 5)
        print(f"| {precision} | {loop:.2f} | {fused:.2f} | {loop / fused:.2f}x | {rows:.0f} | "
              f"{'yes' if same else 'NO'} |")
        if not same:
            return 1
    return 0


def bench_isas(args, gen: torch.Generator) -> int:
    missing = [i for i in args.isas if i not in available_isas()]
    if missing:
        raise SystemExit(f"bench_fused: --isas {' '.join(missing)}: not available here ({isa_report()})")
    isas, first = args.isas, args.isas[0]
    print(f"# {args.model}, threads {args.threads}, beam {args.beam}, {args.chunks} chunks, instruction "
          f"sets alternating chunk by chunk; median {args.clock} ms per chunk; {isa_report()}")
    print(f"| precision | path | encoder ms | encoder matmuls ms | exact search ms | encoder + search ms | "
          f"vs {first} | same bits as {first} |")
    print("|---|---|---|---|---|---|---|---|")
    for precision in args.precisions:
        rec, _ = build_model(args.model)
        apply_precision_(rec, precision)
        enc = StreamingEncoder(rec.model)
        searches = {i: ExactBeamSearch(rec.model, rec.blank, args.beam) for i in isas}
        if enc.stack is None or searches[first].fused is None:
            raise SystemExit(f"bench_fused: {args.model} at {precision} does not run fused")
        t_in = (enc.segment + enc.right) * enc.stride + (enc.stride - 1)
        mm = matmuls_only(enc, enc.segment + enc.right)
        nbytes = sum(kernel_impl(lin).packed.nbytes for layer in enc.layers
                     for lin in (*layer.attention.chains(), layer.ff_parts[1], layer.ff_parts[3]))
        weights = torch.ones(-(-nbytes // 128) * 128, dtype=torch.int8)
        states, beams = {i: enc.init(1) for i in isas}, {i: [None] for i in isas}
        parts = ("enc", "mm", "search")
        times: dict[tuple[str, str], list[float]] = {(i, p): [] for i in isas for p in parts}
        floor: list[float] = []
        same = dict.fromkeys(isas, True)
        with torch.inference_mode():
            for c in range(args.chunks + 5):  # 5 warm-up chunks
                feats = torch.randn(1, t_in, rec.features.cfg.n_mels, generator=gen)
                outs = {}
                for i in isas[c % len(isas):] + isas[:c % len(isas)]:
                    with use_isa(i):
                        t0 = now()
                        outs[i], states[i] = enc.step(feats, states[i])
                        t1 = now()
                        beams[i] = searches[i].step(outs[i], beams[i])
                        t2 = now()
                        mm()
                        t3 = now()
                    if c >= 5:
                        for part, ms in (("enc", t1 - t0), ("search", t2 - t1), ("mm", t3 - t2)):
                            times[(i, part)].append(1000 * ms)
                t0 = now()
                kernel().stream_read(weights)
                if c >= 5:
                    floor.append(1000 * (now() - t0))
                for i in isas:
                    same[i] &= torch.equal(outs[i].view(torch.int32), outs[first].view(torch.int32)) and \
                        searches[i].hypotheses(beams[i][0]) == searches[first].hypotheses(beams[first][0])
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med[(first, "enc")] + med[(first, "search")]
        for i in isas:
            total = med[(i, "enc")] + med[(i, "search")]
            enc_ms, mm_ms, search_ms = (med[(i, p)] for p in parts)
            print(f"| {precision} | {i} | {enc_ms:.2f} | {mm_ms:.2f} | {search_ms:.2f} "
                  f"| {total:.2f} | {base / total:.2f}x | {'yes' if same[i] else 'NO'} |")
        print(f"| {precision} | memory floor: read the encoder's {nbytes / 1e6:.1f} MB of weights once | | "
              f"{statistics.median(floor):.2f} | | | | |")
        if not all(same.values()):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
