"""Size, compute and cache of each variant on an architecture, side by side.

python -m emformer_variants.arch_report [--model emformer_base] [--variants dense moe mla ...]

Builds the model with random weights (no checkpoint needed), applies each variant's
config from conf/variant/, and measures on one steady-state streaming chunk (after 8
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
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from emformer_variants.cli import PROJECT_ROOT, one_line_errors
from emformer_variants.metrics.flops import measured_flops
from emformer_variants.metrics.memory import tensor_bytes
from emformer_variants.metrics.params import count_params
from emformer_variants.models.features import FeatureConfig
from emformer_variants.models.recognizer import Recognizer
from emformer_variants.models.tokenizer import train_tokenizer
from emformer_variants.surgery import apply_variant_spec_
from emformer_variants.surgery.analytic import analytic_encoder_flops


class _VocabOnly:
    """Stands in for a tokenizer of ``vocab_size`` pieces: only the joiner's size uses it."""

    def __init__(self, vocab_size: int):
        self.vocab_size, self.blank, self.num_symbols = vocab_size, vocab_size, vocab_size + 1


def build_random(model: str, seed: int = 0) -> Recognizer:
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
    torch.manual_seed(seed)
    if model == "emformer_base":
        from emformer_variants.models.emformer_base import EMFORMER_BASE_ARCH

        return Recognizer(EMFORMER_BASE_ARCH, FeatureConfig(), _VocabOnly(4096)).eval()
    arch = OmegaConf.to_container(cfg.model.arch, resolve=True)
    tok = train_tokenizer(["abc"], model_type="char")
    return Recognizer(arch, FeatureConfig(**cfg.model.features), tok).eval()


def variant_specs(name: str) -> list[dict]:
    path = PROJECT_ROOT / "conf" / "variant" / f"{name}.yaml"
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return spec["stack"] if "stack" in spec else [spec]


def measure(rec: Recognizer, chunks: int = 9) -> dict:
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
    return {"params_total": total, "params_active": active, "encoder_gflop_chunk": flops / 1e9,
            "encoder_gflop_chunk_analytic": None if analytic is None else analytic / 1e9,
            "state_bytes": tensor_bytes(state)}


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="emformer_base", choices=["emformer_base", "tiny"])
    p.add_argument("--variants", nargs="+",
                   default=["dense", "moe", "moe_neutral", "mla", "lowrank", "mla_moe"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    base = build_random(args.model)
    calibration = [(torch.randn(2, 200, 80), torch.tensor([200, 160], dtype=torch.int32))
                   for _ in range(2)]
    rows = {}
    for name in args.variants:
        rec = copy.deepcopy(base)
        for spec in variant_specs(name):
            apply_variant_spec_(rec, spec, init="convert", calibration=calibration)
        rows[name] = measure(rec.eval())
        print(f"measured {name}", file=sys.stderr, flush=True)
    ref = rows.get("dense") or next(iter(rows.values()))
    print(f"model={args.model} (random weights), one steady-state streaming chunk, batch 1")
    print("| variant | params total | params active | encoder GFLOP/chunk (measured / analytic) "
          "| vs dense | state bytes/stream | vs dense |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        a = r["encoder_gflop_chunk_analytic"]
        analytic = "-" if a is None else f"{a:.4f}"
        print(f"| {name} | {r['params_total']:,} | {r['params_active']:,} | "
              f"{r['encoder_gflop_chunk']:.4f} / {analytic} | "
              f"{r['encoder_gflop_chunk'] / ref['encoder_gflop_chunk']:.2f}x | {r['state_bytes']:,} | "
              f"{ref['state_bytes'] / r['state_bytes']:.1f}x smaller |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
