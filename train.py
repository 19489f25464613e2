"""Fine-tune a variant from the base (or pretrain with init=scratch):
python train.py variant=dense|... [experiment=...]

Flow: base -> evaluate -> surgery -> evaluate -> fine-tune -> evaluate; prints all three.
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from emformer_variants.cli import metrics_table, one_line_errors, set_threads, write_json_atomic
from emformer_variants.config_checks import check_train_config
from emformer_variants.errors import UserError
from emformer_variants.evaluation import evaluate_recognizer
from emformer_variants.hydra_run import check_overrides, metric_value, pin_output_dir, report_hint
from emformer_variants.models.build import build_scratch, load_base
from emformer_variants.models.recognizer import save_recognizer
from emformer_variants.resume import (
    AtomicCheckpointIO,
    BatchOrderLog,
    LastCheckpoint,
    StepSeed,
    resolve_resume,
)
from emformer_variants.run_dir import claim_output_dir
from emformer_variants.surgery import apply_variant_spec_

log = logging.getLogger("train")


def _evaluate(rec, utts, cfg: DictConfig) -> dict:
    threads = torch.get_num_threads()
    set_threads(cfg.eval.threads)
    try:
        metrics, _ = evaluate_recognizer(rec, utts, beam=cfg.eval.beam, flops=cfg.eval.flops,
                                         progress=False)
    finally:
        set_threads(threads)
    rec.train()
    return metrics


@one_line_errors
def run(cfg: DictConfig) -> dict:
    check_train_config(cfg)  # every setting, incl. the variant against the model, before any work
    set_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    variant = OmegaConf.to_container(cfg.variant, resolve=True)
    # A composed variant lists its parts: {name: ..., stack: [spec, spec, ...]}.
    specs = variant["stack"] if "stack" in variant else [variant]
    resume = resolve_resume(cfg.ckpt_path, cfg.paths.root_dir, cfg.task_name)
    claim_output_dir(out_dir)
    if resume:
        log.info("resuming from %s; this run writes its checkpoints to %s (the earlier run's stay "
                 "in its own folder)", resume, out_dir / "checkpoints")

    dm = hydra.utils.instantiate(cfg.data)
    if cfg.init == "base":
        rec = load_base(cfg.model)
    elif cfg.init == "scratch":
        rec = build_scratch(cfg.model, dm.utterances(dm.train_split), cfg.stats_utterances, cfg.seed,
                            skip_bad=dm.skip_bad)
    else:
        raise UserError(f"init={cfg.init}: choose base or scratch")
    eval_utts = dm.utterances(cfg.eval.split)[: cfg.eval.max_utterances]

    # Surgery first, on a copy: every bad setting is rejected before any evaluation or
    # training starts; the untouched base is kept for the "before" row and distillation.
    base = rec
    rec = copy.deepcopy(base)
    dm.bind(rec.features, rec.tokenizer)
    calibration = None
    if any(s.get("calibration_batches") or s.get("method") in ("asvd", "whiten")
           or s.get("init") == "partition" for s in specs):
        num = max([s.get("calibration_batches") or 0 for s in specs] + [cfg.calibration_batches])
        calibration = dm.calibration_batches(num)
    reports = [apply_variant_spec_(rec, s, init="convert", calibration=calibration) for s in specs]
    for report in reports:
        log.info(report.summary())
    has_surgery = any(s["name"] != "dense" for s in specs)
    if has_surgery:  # the variant before fine-tuning, for evaluate.py
        save_recognizer(rec, out_dir / "surgery.pt", meta={"variant": variant, "steps": 0})

    results: dict[str, dict] = {}
    rank0 = L.pytorch.utilities.rank_zero_only.rank == 0  # DDP: only rank 0 evaluates
    if cfg.eval.before and cfg.init == "base" and rank0:
        results["base"] = _evaluate(base, eval_utts, cfg)
    if has_surgery and cfg.eval.before and rank0:
        results["after_surgery"] = _evaluate(rec, eval_utts, cfg)

    teacher = base if cfg.module.distill.weight > 0 else None
    module = hydra.utils.instantiate(cfg.module)(recognizer=rec, teacher=teacher)
    ckpt_dir = out_dir / "checkpoints"
    callbacks = [
        L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="best-{step}", monitor="val/wer",
                                            mode="min", save_last=False,
                                            save_top_k=cfg.get("checkpoint_keep_best") or 1),
        LastCheckpoint(ckpt_dir, cfg.checkpoint_every_n_steps),  # resume point, mid-epoch too
        StepSeed(cfg.seed),  # randomness from (seed, epoch, batch): resumed runs continue exactly
        L.pytorch.callbacks.LearningRateMonitor(logging_interval="step"),
    ]
    if cfg.log_batch_order:
        callbacks.append(BatchOrderLog(out_dir / "batch_order.jsonl"))
    logger = hydra.utils.instantiate(cfg.logger)
    if hasattr(logger, "log_hyperparams"):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=logger,
                                      default_root_dir=str(out_dir), plugins=[AtomicCheckpointIO()])
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    if trainer.global_rank != 0:
        return {}
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if callbacks[0].best_model_score is not None:
        val["val/wer_best"] = float(callbacks[0].best_model_score)

    final = out_dir / "final.pt"
    save_recognizer(rec, final, meta={"variant": variant, "steps": trainer.global_step,
                                      "surgery": [r.summary() for r in reports]})
    log.info("saved %s", final)
    if cfg.eval.after:
        results["fine_tuned"] = _evaluate(rec, eval_utts, cfg)
    summary = {"results": results, "variant_name": variant["name"], "split": cfg.eval.split,
               "final": str(final), "steps": trainer.global_step, "val": val, "resumed_from": resume,
               "surgery": [{"name": r.name, "replaced": len(r.replaced),
                            "params_before": r.params_before, "params_after": r.params_after,
                            **{k: v for k, v in r.extra.items() if isinstance(v, (int, float, str))}}
                           for r in reports]}
    write_json_atomic(out_dir / "metrics.json", summary)
    if results:
        print(metrics_table(results))
    print(f"final checkpoint: {final}\nmetrics: {out_dir / 'metrics.json'}\n{report_hint(out_dir)}")
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    pin_output_dir(cfg)
    summary = run(cfg)
    # The objective a sweeper (Optuna) minimises: optimized_metric, e.g. val/wer.
    return one_line_errors(metric_value)(summary, cfg.get("optimized_metric")) if summary else None


if __name__ == "__main__":
    check_overrides("train", sys.argv[1:])  # bad overrides: one line
    main()
