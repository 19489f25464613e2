"""Streaming evaluation: python evaluate.py ckpt=PATH|base [data=...] [split=test]."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

from emformer_variants.cli import metrics_table, one_line_errors, set_threads, write_json_atomic, write_jsonl
from emformer_variants.engine.pipeline import check_decoder
from emformer_variants.engine.precision import apply_precision_, check_precision
from emformer_variants.evaluation import evaluate_recognizer
from emformer_variants.models.build import resolve_checkpoint

log = logging.getLogger("evaluate")


@one_line_errors
def run(cfg: DictConfig) -> dict:
    set_threads(cfg.threads)
    check_decoder(cfg.decoder, cfg.beam, cfg.max_symbols)  # bad settings fail before any work
    check_precision(cfg.precision)
    L.seed_everything(cfg.seed, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    rec = resolve_checkpoint(str(cfg.ckpt), cfg.model)
    apply_precision_(rec, cfg.precision)
    dm = hydra.utils.instantiate(cfg.data)
    utts = dm.utterances(cfg.split)
    if cfg.max_utterances:
        utts = utts[: cfg.max_utterances]
    options = {"max_symbols": cfg.max_symbols} if cfg.max_symbols else {}
    metrics, rows = evaluate_recognizer(rec, utts, beam=cfg.beam, flops=cfg.flops, skip_bad=dm.skip_bad,
                                        decoder=cfg.decoder, decoder_options=options)
    metrics["num_skipped"] += sum(len(v) for v in dm.skipped.values())
    metrics.update({"ckpt": str(cfg.ckpt), "split": cfg.split, "variants": rec.variants,
                    "precision": cfg.precision, **options})
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_jsonl(out_dir / "hyps.jsonl", rows)
    if cfg.plots:
        from emformer_variants.metrics.plots import write_latency_plots

        write_latency_plots(rows, out_dir, segment_ms=1000 * rec.features.cfg.chunk_seconds,
                            algorithmic_s=metrics["algorithmic_latency_s"])
    if cfg.profile:
        from emformer_variants.profiling import write_profile

        write_profile(rec, utts, out_dir / "profile.txt", beam=cfg.beam, decoder=cfg.decoder)
    print(metrics_table({str(cfg.ckpt): metrics}))
    print(f"metrics: {out_dir / 'metrics.json'}")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
