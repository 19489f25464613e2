"""Time the emformer_base linears at the engine's batch sizes, one backend against another.

    python scripts/bench_linears.py [--threads 1] [--reps 9] [--streams 1]

Every linear of the random-weight ``emformer_base`` (torchaudio's architecture) is grouped as
the engine calls it: the 20 encoder layers' linears (query/key/value fused, attention output,
both FFN halves) on one chunk (5 rows: 4 frames + 1 right-context frame), and the joiner and
the predictor's linears on a beam of 10 rows; ``--streams N`` multiplies both by N (N streams
stepped together, as ``bench --streams`` batches them). Each pass calls every linear of a group once,
so the weights stream from memory as in decoding (they do not fit in cache). Backends run in
rotating order, pass by pass; the median pass (wall time, or with ``--clock cpu`` the thread's
CPU time) is reported, with the weight bytes and
floating-point operations per pass turned into GB/s and GFLOP/s.

The packed kernels run once per instruction set this CPU has (``[amx]``, ``[avx512]``, ``[avx2]``;
``engine.packed.use_isa``), in the same rotation. The "memory floor" rows time one thread
reading the group's int8 (or int4, with its group scales) weight bytes once, one buffer per
linear (``stream_read``, in the same rotation): no kernel that streams those bytes from memory
can be faster. The header gives that read rate on
a buffer of all of emformer_base's int8 weights.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emformer_variants.arch_report import build_random  # noqa: E402
from emformer_variants.engine.linear import (  # noqa: E402
    OneDNNLinear,
    PlainLinear,
    concat_linears,
    onednn_available,
)
from emformer_variants.engine.packed import (  # noqa: E402
    INT4_GROUP,
    Int4Linear,
    Int8Linear,
    PackedLinear,
    available_isas,
    isa_report,
    kernel,
    use_isa,
)


def groups(model, streams: int = 1) -> dict[str, tuple[int, list[torch.nn.Linear]]]:
    """name -> (rows per call, linears), for ``streams`` streams stepped together."""
    encoder, search = [], []
    for layer in model.transcriber.transformer.emformer_layers:
        att = layer.attention
        qkv = concat_linears([att.emb_to_query, att.emb_to_key_value])  # as the engine fuses them
        encoder += [qkv, att.out_proj, layer.pos_ff[1], layer.pos_ff[4]]
    for lstm in model.predictor.lstm_layers:
        search += [lstm.x2g, lstm.p2g]
    search += [model.predictor.linear, model.joiner.linear]
    enc_rows, search_rows = 5 * streams, 10 * streams
    return {f"encoder (20 layers, {enc_rows} rows)": (enc_rows, encoder),
            f"joiner + predictor ({search_rows} rows)": (search_rows, search)}


def reader(nbytes: int):
    """A callable that ignores its input and reads a buffer of ``nbytes`` once (``stream_read``)."""
    buffer = torch.ones(-(-nbytes // 128) * 128, dtype=torch.int8)
    return lambda x: kernel().stream_read(buffer)


def int4_bytes(m: torch.nn.Linear) -> int:
    """Bytes of ``m``'s int4 weight with its fp32 group scales, as ``Int4Linear`` streams them."""
    return m.weight.numel() // 2 + 4 * m.out_features * -(-m.in_features // INT4_GROUP)


def backends(linears: list[torch.nn.Linear]) -> tuple[dict[str, list], dict[str, str]]:
    """(name -> callables, name -> instruction set for the packed ones)."""
    out = {"F.linear (MKL)": [PlainLinear(m) for m in linears]}
    isas: dict[str, str] = {}
    if onednn_available():
        out["oneDNN"] = [OneDNNLinear(m) for m in linears]
    if kernel() is not None:
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
            fns = [PackedLinear(m.weight, m.bias, dtype) for m in linears]
            for isa in available_isas()[:-1]:
                out[f"packed {name} [{isa}]"], isas[f"packed {name} [{isa}]"] = fns, isa
        fns = [Int8Linear(m.weight, m.bias) for m in linears]
        for isa in available_isas()[:-1]:
            out[f"packed dynamic int8 [{isa}]"], isas[f"packed dynamic int8 [{isa}]"] = fns, isa
        fns = [Int4Linear(m.weight, m.bias) for m in linears]
        for isa in available_isas()[:-1]:
            if isa != "amx":  # int4 has no tile path: amx runs its avx512 code
                out[f"packed dynamic int4 [{isa}]"], isas[f"packed dynamic int4 [{isa}]"] = fns, isa
        # one buffer per linear, of its int8 weight's size: read as the int8 kernel reads it
        out["memory floor (read the int8 bytes)"] = [reader(m.weight.numel()) for m in linears]
        out["memory floor (read the int4 bytes)"] = [reader(int4_bytes(m)) for m in linears]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao import quantization as tq

        for name, qconfig in (("fbgemm fp16", tq.float16_dynamic_qconfig),
                              ("fbgemm dynamic int8", tq.per_channel_dynamic_qconfig)):
            out[name] = [tq.quantize_dynamic(torch.nn.Sequential(m), {torch.nn.Linear: qconfig})[0]
                         for m in linears]
    return out, isas


def read_rate_gbs(nbytes: int, reps: int = 5, now=time.perf_counter) -> float:
    """One thread reading a buffer of ``nbytes`` once: the best of ``reps`` passes, GB/s."""
    buffer = torch.ones(-(-nbytes // 128) * 128, dtype=torch.int8)
    best = float("inf")
    for _ in range(reps + 1):
        t0 = now()
        kernel().stream_read(buffer)
        best = min(best, now() - t0)
    return buffer.numel() / best / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--streams", type=int, default=1,
                   help="rows per call x N: N streams stepped together (AMX runs from 16 rows)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall time, or the thread's CPU time (steadier on a busy machine)")
    args = p.parse_args()
    now = time.perf_counter if args.clock == "wall" else time.thread_time
    torch.set_num_threads(args.threads)
    model = build_random("emformer_base").model
    params_all = sum(p.numel() for p in model.parameters())
    print(f"# threads {args.threads}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"median {args.clock} time of {args.reps} passes; weight GB/s counts fp32 bytes for "
          f"F.linear/oneDNN/packed fp32, 2 bytes for fp16/bf16, 1 for int8 and its memory floor, "
          f"{0.5 + 4 / INT4_GROUP:.4g} for int4 (scales included) and its floor")
    print(f"# {isa_report()}")
    if kernel() is not None:
        print(f"# one-thread streaming read of {params_all / 1e6:.1f} MB (emformer_base's weights at one "
              f"byte each): {read_rate_gbs(params_all, now=now):.1f} GB/s (best of 5)")
    print("| group | backend | ms per pass | vs F.linear | weight GB/s | GFLOP/s |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for name, (rows, linears) in groups(model, args.streams).items():
            fns, isas = backends(linears)
            xs = {m.in_features: torch.randn(rows, m.in_features) for m in linears}
            times: dict[str, list[float]] = {b: [] for b in fns}
            labels = list(fns)
            for rep in range(args.reps + 1):
                for b in labels[rep % len(labels):] + labels[:rep % len(labels)]:
                    with use_isa(isas[b]) if b in isas else contextlib.nullcontext():
                        t0 = now()
                        for m, f in zip(linears, fns[b], strict=True):
                            f(xs[m.in_features])
                        if rep:  # the first pass warms up
                            times[b].append(1000 * (now() - t0))
            params = sum(m.weight.numel() for m in linears)
            flops = 2 * rows * params
            base = statistics.median(times["F.linear (MKL)"])
            for b in labels:
                ms = statistics.median(times[b])
                width = (0.5 + 4 / INT4_GROUP if "int4" in b else 1 if ("int8" in b or "floor" in b)
                         else 2 if ("fp16" in b or "bf16" in b) else 4)
                gflops = "" if "floor" in b else f"{flops / ms / 1e6:.1f}"
                print(f"| {name} | {b} | {ms:.1f} | {base / ms:.2f}x | {params * width / ms / 1e6:.1f} "
                      f"| {gflops} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
