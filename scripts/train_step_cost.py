"""What one fine-tuning step of emformer_base costs, measured: FLOPs of the forward and the
backward pass (FlopCounterMode), time per step and peak memory, for a batch of B utterances of
S seconds with U = S x R tokens each (the shapes a LibriSpeech batch has).

    python scripts/train_step_cost.py [--utterances B] [--seconds S] [--tokens-per-second R]
        [--steps N] [--no-flops] [--precision 32|bf16] [--device cpu|cuda] [OVERRIDES...]

OVERRIDES are train.py's Hydra overrides and select the variant and recipe the same way
(``variant=moe``, ``experiment=finetune/moe``: its distillation teacher is built and run too);
``model=emformer_base`` is implied. The weights are random, so no bundle file is needed:
FLOPs and memory depend on shapes only (lowrank's ranks come from the singular values of
these random weights). Features and targets are random too. A step is what Lightning runs:
autocast forward (``--precision bf16`` = bf16-mixed), backward, gradient clipping, AdamW.
One configuration per process, so the peak memory printed is this configuration's.
``--device cuda`` reports torch.cuda.max_memory_allocated (never run here: no GPU).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def synthetic_batch(b: int, seconds: float, tokens: int, rc: int, device, gen) -> dict:
    frames = int(seconds * 100) + 1  # 10 ms hop, centred STFT
    return {
        "features": torch.randn(b, frames + rc, 80, generator=gen).to(device),
        "feature_lengths": torch.full((b,), frames, dtype=torch.int32, device=device),
        # ids 4..4095: the SentencePiece model's ordinary pieces (0-3 are special)
        "targets": torch.randint(4, 4096, (b, tokens), generator=gen, dtype=torch.int32).to(device),
        "target_lengths": torch.full((b,), tokens, dtype=torch.int32, device=device),
    }


def main(argv: list[str] | None = None) -> int:
    import hydra
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from torch.utils.flop_counter import FlopCounterMode

    from emformer_variants.metrics.params import count_params
    from emformer_variants.models.build import build_random
    from emformer_variants.surgery.registry import apply_variant_, calibration_batches
    from emformer_variants.utils.paths import PROJECT_ROOT

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--utterances", type=int, default=1)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--tokens-per-second", type=float, default=3.3)
    p.add_argument("--steps", type=int, default=2, help="timed steps (the first allocates AdamW's state)")
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--precision", choices=["32", "bf16"], default="32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    args, overrides = p.parse_known_args(argv)
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=emformer_base", *overrides])
    torch.set_num_threads(args.threads or int(cfg.threads))
    device = torch.device(args.device)

    rec = build_random("emformer_base").train()
    variant = OmegaConf.to_container(cfg.variant, resolve=True)
    teacher = copy.deepcopy(rec).eval() if cfg.module.distill.weight > 0 else None
    gen = torch.Generator().manual_seed(0)
    calibration = None
    if calibration_batches(variant, 1) is not None:  # random features: only the cost matters here
        calibration = [(torch.randn(4, 1504, 80, generator=gen), torch.full((4,), 1500))]
    apply_variant_(rec, variant, init="convert", calibration=calibration)
    module = hydra.utils.instantiate(cfg.module)(recognizer=rec, teacher=teacher).to(device).train()
    params = [q for q in module.parameters() if q.requires_grad]
    rss_model = _peak_rss_mb()  # weights (and teacher) built, nothing run yet
    optimizer = module.optimizer_factory(params)
    tokens = max(1, round(args.seconds * args.tokens_per_second))
    batch = synthetic_batch(args.utterances, args.seconds, tokens, rec.arch["right_context_length"],
                            device, gen)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    audio_s = args.utterances * args.seconds
    stride = rec.arch["time_reduction_stride"]
    total, active = count_params(rec.model)
    out = {
        "command": " ".join(["python", "scripts/train_step_cost.py", *(argv or sys.argv[1:])]),
        "variant": variant["name"], "utterances": args.utterances, "seconds": args.seconds,
        "tokens": tokens, "audio_s": audio_s, "precision": args.precision, "device": str(device),
        "threads": torch.get_num_threads(), "params_total": total, "params_active": active,
        "params_trainable": sum(q.numel() for q in params),
        "distill_teacher": teacher is not None,
        # joiner lattice points: encoder frames x (tokens + 1), summed over the batch
        "lattice_points": args.utterances * ((int(args.seconds * 100) + 1) // stride) * (tokens + 1),
    }
    if not args.no_flops:
        with FlopCounterMode(display=False) as fwd, autocast:
            losses = module.compute_losses(batch, augment=True)
        with FlopCounterMode(display=False) as bwd:
            losses["loss"].backward()
        del losses
        optimizer.zero_grad(set_to_none=True)
        out["gflop_forward"] = fwd.get_total_flops() / 1e9
        out["gflop_backward"] = bwd.get_total_flops() / 1e9
        out["gflop_forward_per_audio_s"] = out["gflop_forward"] / audio_s
        out["gflop_step_per_audio_s"] = (out["gflop_forward"] + out["gflop_backward"]) / audio_s
        out["gflop_forward_by_module"] = {k: v / 1e9 for k, v in _by_top_module(fwd).items()}
        if teacher is not None:
            with FlopCounterMode(display=False) as tf, autocast, torch.no_grad():
                teacher.model.transcribe(batch["features"], batch["feature_lengths"])
            out["gflop_teacher_forward"] = tf.get_total_flops() / 1e9
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            losses = module.compute_losses(batch, augment=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, float(cfg.trainer.gradient_clip_val or 1e9))
        optimizer.step()
        del losses
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    out["step_s"] = [round(x, 2) for x in times]
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    out["peak_rss_mb_model"] = round(rss_model, 1)
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    print(json.dumps(out))
    return 0


def _by_top_module(counter) -> dict[str, float]:
    """FLOPs per part of the RNN-T, by class: _EmformerEncoder (with the time reduction and
    linears around it), _Predictor, _Joiner. A distillation teacher's encoder counts under
    _EmformerEncoder too (``gflop_teacher_forward`` gives it alone)."""
    return {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()
            if name != "Global" and "." not in name}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
