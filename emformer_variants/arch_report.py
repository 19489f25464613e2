"""Size, compute and cache of each variant on an architecture, side by side.

python -m emformer_variants.arch_report [--model emformer_base|tiny] [--variants dense moe mla ...]

Builds the model with random weights (no checkpoint needed), applies each variant's
config from conf/variant/ (all of them by default), and measures on one steady-state streaming chunk (after 8
chunks with carried state): encoder FLOPs (FlopCounterMode, and the analytic count),
parameters (total and active) and the encoder's streaming state bytes per stream.
Only structural figures are meaningful here: with random weights (and random calibration
features for activation-aware methods), approximation errors say nothing about a trained model.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from omegaconf import OmegaConf

from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.metrics.flops import measured_flops
from emformer_variants.metrics.memory import tensor_bytes
from emformer_variants.metrics.params import count_params
from emformer_variants.models.build import build_random
from emformer_variants.models.recognizer import Recognizer
from emformer_variants.surgery.registry import analytic_encoder_flops, apply_variant_
from emformer_variants.utils.paths import PROJECT_ROOT

VARIANT_DIR = PROJECT_ROOT / "conf" / "variant"


def shipped_variants() -> list[str]:
    """Every variant config in conf/variant/, dense (the reference) first."""
    names = sorted(p.stem for p in VARIANT_DIR.glob("*.yaml"))
    return sorted(names, key=lambda n: n != "dense")


def load_variant(name: str) -> dict:
    path = VARIANT_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"--variants {name}: no {path.relative_to(PROJECT_ROOT)}; "
                        f"choose from {shipped_variants()}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def random_calibration(frames: int = 200, batches: int = 2,
                       generator: torch.Generator | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Calibration batches of random features, (features (2, frames, 80), lengths), for the
    surgeries that fit on audio (ASVD, whitening, MoE partition / shared) where only the
    structure matters (speed, sizes, tests)."""
    return [(torch.randn(2, frames, 80, generator=generator),
             torch.tensor([frames, frames - frames // 5], dtype=torch.int32)) for _ in range(batches)]


def measure(rec: Recognizer, chunks: int = 9) -> dict:
    """Params, encoder FLOPs (measured and analytic) and state bytes of one steady-state chunk."""
    seg, rc = rec.arch["segment_length"], rec.arch["right_context_length"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, seg * chunks + rc, 80, generator=gen)
    state = None
    with torch.inference_mode():
        for k in range(chunks - 1):
            _, _, state = rec.model.transcribe_streaming(x[:, k * seg:k * seg + seg + rc],
                                                         torch.tensor([seg + rc]), state)
        last = x[:, (chunks - 1) * seg:(chunks - 1) * seg + seg + rc]
        flops, (_, _, state) = measured_flops(rec.model.transcribe_streaming, last,
                                              torch.tensor([seg + rc]), state)
    total, active = count_params(rec.model)
    analytic = analytic_encoder_flops(rec.arch, rec.variants, chunk_index=chunks - 1)
    return {"params_total": total, "params_active": active, "encoder_flops_chunk": flops,
            "encoder_flops_chunk_analytic": analytic, "state_bytes": tensor_bytes(state)}


def measure_variants(base: Recognizer, variants: dict[str, dict]) -> dict[str, dict]:
    """``{name: variant config}`` -> ``{name: measure(...)}``, each variant applied to a copy
    of ``base`` (activation-aware surgeries calibrate on random features)."""
    calibration = random_calibration()
    rows = {}
    for name, variant in variants.items():
        rec = copy.deepcopy(base)
        apply_variant_(rec, variant, init="convert", calibration=calibration)
        rows[name] = measure(rec.eval())
        print(f"measured {name}", file=sys.stderr, flush=True)
    return rows


def format_table(rows: dict[str, dict]) -> str:
    ref = rows.get("dense") or next(iter(rows.values()))
    lines = ["| variant | params total | params active | encoder GFLOP/chunk (measured / analytic) "
             "| vs dense | state bytes/stream | vs dense |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        a = r["encoder_flops_chunk_analytic"]
        analytic = "-" if a is None else f"{a / 1e9:.4f}"
        lines.append(f"| {name} | {r['params_total']:,} | {r['params_active']:,} | "
                     f"{r['encoder_flops_chunk'] / 1e9:.4f} / {analytic} | "
                     f"{r['encoder_flops_chunk'] / ref['encoder_flops_chunk']:.2f}x | {r['state_bytes']:,} | "
                     f"{ref['state_bytes'] / r['state_bytes']:.1f}x smaller |")
    return "\n".join(lines)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="emformer_base", choices=["emformer_base", "tiny"])
    p.add_argument("--variants", nargs="+", default=None,
                   help="names in conf/variant/ (default: all of them)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    variants = {name: load_variant(name) for name in args.variants or shipped_variants()}
    rows = measure_variants(build_random(args.model), variants)
    print(f"model={args.model} (random weights), one steady-state streaming chunk, batch 1")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
