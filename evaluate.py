"""Streaming evaluation: python evaluate.py ckpt=PATH|base [surgery=NAME] [data=...] [split=test].

``surgery=NAME`` applies conf/variant/NAME.yaml to the checkpoint first, as train.py does
(calibrated on ``calibration_batches`` batches of the data's training split when the variant
reads activations), saves that variant as ``surgery.pt`` in the run folder, and scores it:
the variant straight after surgery, without a training run."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from emformer_variants.engine.endpoint import EndpointConfig
from emformer_variants.engine.packed import isa, kernel
from emformer_variants.engine.precision import apply_precision_
from emformer_variants.errors import one_line_errors
from emformer_variants.evaluation.evaluate import evaluate_recognizer, pick_utterances
from emformer_variants.lm.build import load_lm
from emformer_variants.metrics.params import count_params
from emformer_variants.models.build import resolve_checkpoint
from emformer_variants.models.checkpoints import diff_variants, mismatch_error
from emformer_variants.models.recognizer import save_recognizer
from emformer_variants.reporting.tables import metrics_table
from emformer_variants.surgery.registry import (
    convert_variant_,
    get_surgery,
    requested_specs,
    variant_specs,
)
from emformer_variants.utils.config_checks import check_evaluate_config, surgery_args, variant_config
from emformer_variants.utils.files import write_json_atomic, write_jsonl
from emformer_variants.utils.hydra_run import check_overrides, pin_output_dir, report_hint
from emformer_variants.utils.run_dir import claim_output_dir

log = logging.getLogger("evaluate")


def apply_surgery(cfg: DictConfig, rec, dm, out_dir: Path) -> list[str]:
    """``surgery=NAME`` on ``rec`` in place (train.py's conversion and calibration); the result is
    written to ``surgery.pt`` so the other evaluation sets can score the very same weights."""
    variant = variant_config(str(cfg.surgery), "surgery", surgery_args(cfg))
    reports = convert_variant_(rec, variant, dm, cfg.calibration_batches)
    for report in reports:
        log.info(report.summary())
    if reports and not all(get_surgery(s["name"]).identity for s in variant_specs(variant)):
        save_recognizer(rec, out_dir / "surgery.pt", meta={"variant": variant, "steps": 0,
                                                           "ckpt": str(cfg.ckpt)})
    return [r.summary() for r in reports]


def load_checkpoint(cfg: DictConfig, dm=None, out_dir: Path | None = None):
    """The recognizer of ``ckpt=`` (after ``surgery=``, if given; with its report lines);
    with ``variant=NAME`` it must hold that variant."""
    rec = resolve_checkpoint(str(cfg.ckpt), cfg.model)
    surgery = apply_surgery(cfg, rec, dm, out_dir) if cfg.get("surgery") else None
    if cfg.get("variant") is not None:
        requested = requested_specs(OmegaConf.to_container(cfg.variant, resolve=True))
        diffs = diff_variants(rec.variants, requested)
        if diffs:
            raise mismatch_error("ckpt", cfg.ckpt, diffs, "pass the matching variant= or another checkpoint")
    return rec, surgery


@one_line_errors
def run(cfg: DictConfig) -> dict:
    check_evaluate_config(cfg)  # every setting, before loading the checkpoint or any data
    torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, verbose=False)
    out_dir = claim_output_dir(cfg.paths.output_dir)
    dm = hydra.utils.instantiate(cfg.data)
    rec, surgery = load_checkpoint(cfg, dm, out_dir)
    params = count_params(rec.model)  # the model's, before int8 swaps weights for packed buffers
    precision = apply_precision_(rec, cfg.precision)
    subset = cfg.get("subset", "first")
    utts = pick_utterances(dm.utterances(cfg.split), cfg.max_utterances, subset, cfg.seed)
    options = {"max_symbols": cfg.max_symbols} if cfg.max_symbols else {}
    lm_info = {}
    if cfg.get("lm") is not None:
        options["lm"], lm_info = load_lm(str(cfg.lm), rec.tokenizer, cfg.paths.cache_dir)
        options["lm_weight"], options["lm_bonus"] = float(cfg.lm_weight), float(cfg.get("lm_bonus", 0.0))
        lm_info.update(lm_weight=options["lm_weight"], lm_bonus=options["lm_bonus"])
    endpoint = EndpointConfig() if cfg.get("endpoint", False) else None
    metrics, rows = evaluate_recognizer(rec, utts, beam=cfg.beam, flops=cfg.flops, skip_bad=dm.skip_bad,
                                        decoder=cfg.decoder, decoder_options=options, endpoint=endpoint,
                                        params=params)
    metrics["num_skipped"] += sum(len(v) for v in dm.skipped.values())
    metrics.update({"ckpt": str(cfg.ckpt), "split": cfg.split, "variants": rec.variants,
                    "precision": cfg.precision,
                    **{k: v for k, v in options.items() if not k.startswith("lm")},
                    **({"lm": lm_info} if lm_info else {}),
                    # which code computed the linears: the engine's packed kernel or torch's fallback
                    "linear_kernel": f"packed-{isa()}" if kernel() is not None else "torch"})
    if cfg.get("surgery"):
        metrics["surgery"] = {"name": str(cfg.surgery), "reports": surgery}
    if "method" in precision:
        metrics["precision_method"] = precision["method"]
    if cfg.max_utterances and subset != "first":
        metrics["subset"] = f"{subset} (seed {cfg.seed})"
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_jsonl(out_dir / "hyps.jsonl", rows)
    if cfg.plots:
        from emformer_variants.reporting.latency_plots import write_latency_plots

        write_latency_plots(rows, out_dir, segment_ms=1000 * rec.features.cfg.chunk_seconds,
                            algorithmic_s=metrics["algorithmic_latency_s"])
    if cfg.profile:
        from emformer_variants.evaluation.profiling import write_profile

        write_profile(rec, utts, out_dir / "profile.txt", beam=cfg.beam, decoder=cfg.decoder)
    print(metrics_table({str(cfg.ckpt): metrics}))
    print(f"metrics: {out_dir / 'metrics.json'}\n{report_hint(out_dir)}")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    pin_output_dir(cfg)
    run(cfg)


if __name__ == "__main__":
    check_overrides("evaluate", sys.argv[1:])  # bad overrides: one line
    main()
