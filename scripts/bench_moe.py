"""Time the engine encoder on a MoE model: the packed MoE FFN against dense and the module.

    python scripts/bench_moe.py [--model emformer_base|tiny] [--precision fp32 int8]
                                [--streams 1 32] [--chunks 20] [--threads 1] [--clock cpu|wall]

Three encoders get the same random feature chunks, in turn (the first rotating), chunk by
chunk, each carrying its own state:
- ``dense``: the model without surgery (``StreamingEncoder``: the fused C++ layer stack);
- ``packed MoE``: ``variant=moe`` (conf/variant/moe.yaml, calibrated on random features) in
  ``StreamingEncoder``, whose FFNs run as ``engine.moe.PackedMoE`` (each expert's linears in
  the packed kernel);
- ``module``: the same MoE model with every layer's FFN called as the PyTorch module (its
  experts converted to the precision too), the rest of the layer as in ``packed MoE``.
Reported per precision and stream count: median encoder ms per chunk (the thread's CPU time
by default, steadier on a busy machine), the ratios, and the largest difference between the
packed MoE's and the module's outputs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emformer_variants.arch_report import load_variant, random_calibration  # noqa: E402
from emformer_variants.bench import build_model  # noqa: E402
from emformer_variants.engine.encoder import StreamingEncoder  # noqa: E402
from emformer_variants.engine.names import KERNEL_PRECISIONS  # noqa: E402
from emformer_variants.engine.packed import isa_report  # noqa: E402
from emformer_variants.engine.precision import apply_precision_  # noqa: E402
from emformer_variants.surgery.registry import apply_variant_  # noqa: E402

KINDS = ("dense", "packed MoE", "module")


def encoders(model_name: str, precision: str) -> dict[str, StreamingEncoder]:
    dense, _ = build_model(model_name)
    moe = copy.deepcopy(dense)
    apply_variant_(moe, load_variant("moe"), init="convert", calibration=random_calibration())
    for rec in (dense, moe):
        apply_precision_(rec, precision)
    packed_moe = StreamingEncoder(moe.model)
    module = StreamingEncoder(moe.model)
    for layer, em in zip(module.layers, moe.model.transcriber.transformer.emformer_layers, strict=True):
        layer.ffn = em.pos_ff
    return dict(zip(KINDS, (StreamingEncoder(dense.model), packed_moe, module), strict=True))


def bench(encs: dict[str, StreamingEncoder], streams: int, chunks: int, now) -> tuple[dict, float]:
    """-> (median ms per chunk per encoder, largest |packed MoE - module| over all outputs)."""
    enc = encs["dense"]
    t_in = (enc.segment + enc.right) * enc.stride + (enc.stride - 1)
    gen = torch.Generator().manual_seed(0)
    states = {k: e.init(streams) for k, e in encs.items()}
    times: dict[str, list[float]] = {k: [] for k in encs}
    diff = 0.0
    warm = 3
    with torch.inference_mode():
        for c in range(chunks + warm):
            feats = torch.randn(streams, t_in, 80, generator=gen)
            order = list(KINDS[c % 3:] + KINDS[:c % 3])
            outs = {}
            for k in order:
                t0 = now()
                outs[k], states[k] = encs[k].step(feats, states[k])
                if c >= warm:
                    times[k].append(1000 * (now() - t0))
            diff = max(diff, float((outs["packed MoE"] - outs["module"]).abs().max()))
    return {k: statistics.median(v) for k, v in times.items()}, diff


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="emformer_base", choices=["emformer_base", "tiny"])
    p.add_argument("--precision", nargs="+", default=["fp32", "int8"],
                   choices=KERNEL_PRECISIONS)
    p.add_argument("--streams", nargs="+", type=int, default=[1, 32])
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    now = time.thread_time if args.clock == "cpu" else time.perf_counter
    print(f"# {args.model}, variant=moe (conf/variant/moe.yaml), threads {args.threads}, {args.chunks} "
          f"chunks, encoders in turn; median {args.clock} ms per chunk; {isa_report()}")
    print("| precision | streams | dense ms | packed MoE ms | module ms | packed MoE / dense "
          "| module / packed MoE | max abs diff packed vs module |")
    print("|---|---|---|---|---|---|---|---|")
    for precision in args.precision:
        encs = encoders(args.model, precision)
        for n in args.streams:
            ms, diff = bench(encs, n, args.chunks, now)
            d, m, mod = ms["dense"], ms["packed MoE"], ms["module"]
            print(f"| {precision} | {n} | {d:.1f} | {m:.1f} | {mod:.1f} | {m / d:.2f}x | {mod / m:.2f}x "
                  f"| {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
