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
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.evaluation.evaluate import evaluate_recognizer
from emformer_variants.evaluation.flops import analytic_encoder_gflops_per_audio_s
from emformer_variants.metrics.params import count_params
from emformer_variants.models.build import build_scratch, load_base
from emformer_variants.models.recognizer import Recognizer, save_recognizer
from emformer_variants.reporting.tables import metrics_table
from emformer_variants.surgery.registry import (
    SurgeryReport,
    convert_variant_,
    surgery_parameters,
)
from emformer_variants.training.resume import AtomicCheckpointIO, resolve_resume
from emformer_variants.utils.config_checks import check_train_config
from emformer_variants.utils.files import write_json_atomic
from emformer_variants.utils.hydra_run import check_overrides, metric_value, pin_output_dir, report_hint
from emformer_variants.utils.instantiators import instantiate_callbacks
from emformer_variants.utils.run_dir import claim_output_dir

log = logging.getLogger("train")


def build_base(cfg: DictConfig, dm) -> Recognizer:
    """``init=base``: the configured base weights; ``init=scratch``: a new tokenizer and feature
    statistics from the training data, random weights."""
    if cfg.init == "base":
        return load_base(cfg.model)
    if cfg.init == "scratch":
        return build_scratch(cfg.model, dm.utterances(dm.train_split), cfg.stats_utterances, cfg.seed,
                             skip_bad=dm.skip_bad)
    raise UserError(f"init={cfg.init}: choose base or scratch")


def apply_variant(cfg: DictConfig, base: Recognizer, dm,
                  out_dir: Path) -> tuple[Recognizer, list[SurgeryReport]]:
    """The variant: surgery on a copy of the base, so every bad setting fails before any
    evaluation or training, and the untouched base stays for the "before" row and
    distillation. Calibration audio is read only when a surgery asks for it. The variant
    before fine-tuning is saved as ``surgery.pt`` for evaluate.py."""
    variant = OmegaConf.to_container(cfg.variant, resolve=True)
    rec = copy.deepcopy(base)
    reports = convert_variant_(rec, variant, dm, cfg.calibration_batches)
    for report in reports:
        log.info(report.summary())
    if len(rec.variants) > len(base.variants):
        save_recognizer(rec, out_dir / "surgery.pt", meta={"variant": variant, "steps": 0})
    return rec, reports


def evaluate(rec: Recognizer, utts, cfg: DictConfig) -> dict:
    """The streaming evaluation of one model (``eval.*``), on ``eval.threads`` threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.eval.threads)
    try:
        metrics, _ = evaluate_recognizer(rec, utts, beam=cfg.eval.beam, flops=cfg.eval.flops,
                                         progress=False)
    finally:
        torch.set_num_threads(threads)
    rec.train()
    return metrics


def fit(cfg: DictConfig, rec: Recognizer, base: Recognizer, dm, resume: str | None, out_dir: Path,
        reports: list[SurgeryReport]) -> tuple[L.Trainer, dict]:
    """LightningModule, callbacks, logger and Trainer from config; fit; then the weights chosen
    by ``export`` go back into ``rec``. Returns the trainer and what was exported."""
    teacher = base if cfg.module.distill.weight > 0 else None
    module = hydra.utils.instantiate(cfg.module)(recognizer=rec, teacher=teacher,
                                                 surgery_parameters=surgery_parameters(reports, rec.model))
    callbacks = instantiate_callbacks(cfg.callbacks)
    logger = hydra.utils.instantiate(cfg.logger)
    if hasattr(logger, "log_hyperparams"):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=logger,
                                      default_root_dir=str(out_dir), plugins=[AtomicCheckpointIO()])
    start = None
    if cfg.validate_start and resume is None:  # the variant before any step: a candidate for export
        trainer.validate(module, datamodule=dm, verbose=False)
        wer = trainer.callback_metrics.get("val/wer")
        if wer is not None:
            start = {"wer": float(wer), "state": copy.deepcopy(rec.state_dict())}
            log.info("validation before training: val/wer %.4f", start["wer"])
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    return trainer, export_weights_(cfg.export, trainer, rec, start)


def export_weights_(export: str, trainer: L.Trainer, rec: Recognizer, start: dict | None) -> dict:
    """Load the weights ``final.pt`` gets into ``rec``. ``last``: as trained. ``best``: the
    lowest val/wer among the best checkpoint and the validation before training (``start``,
    kept on a tie: training must earn its place); the last weights when neither exists."""
    if export not in ("best", "last"):
        raise UserError(f"export={export!r}: choose best or last")
    if export == "last":
        return {"export": "last", "step": trainer.global_step}
    cb = next((c for c in trainer.callbacks
               if isinstance(c, ModelCheckpoint) and c.monitor == "val/wer"), None)
    score = float(cb.best_model_score) if cb is not None and cb.best_model_score is not None else None
    if start is not None and (score is None or start["wer"] <= score):
        rec.load_state_dict(start["state"], strict=True)
        return {"export": "start", "step": 0, "val/wer": start["wer"]}
    if score is None or not cb.best_model_path:
        log.warning("export=best: no validation result, so final.pt holds the last weights")
        return {"export": "last", "step": trainer.global_step}
    state = torch.load(cb.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
    rec.load_state_dict({k[len("recognizer."):]: v for k, v in state.items() if k.startswith("recognizer.")},
                        strict=True)
    step = int(Path(cb.best_model_path).stem.rpartition("=")[2]) if "=" in cb.best_model_path else None
    return {"export": "best", "step": step, "val/wer": score, "path": cb.best_model_path}


def validation_metrics(trainer: L.Trainer) -> dict:
    """The last validation's ``val/*`` and, from the best-checkpoint callback, ``val/wer_best``."""
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    best = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    if best is not None and best.best_model_score is not None:
        val["val/wer_best"] = float(best.best_model_score)
    return val


def model_costs(rec: Recognizer) -> dict:
    """Costs of the exported model known without decoding (a run with eval.after=false still
    has them for the report): parameters and the analytic encoder GFLOPs per audio second."""
    total, active = count_params(rec.model)
    return {"params_total": total, "params_active": active,
            "gflops_per_audio_s_encoder_analytic": analytic_encoder_gflops_per_audio_s(rec)}


@one_line_errors
def run(cfg: DictConfig) -> dict:
    check_train_config(cfg)  # every setting, incl. the variant against the model, before any work
    torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    resume = resolve_resume(cfg.ckpt_path, cfg.paths.root_dir, cfg.task_name)
    claim_output_dir(out_dir)
    if resume:
        log.info("resuming from %s; this run writes its checkpoints to %s (the earlier run's stay "
                 "in its own folder)", resume, out_dir / "checkpoints")

    dm = hydra.utils.instantiate(cfg.data)
    base = build_base(cfg, dm)
    eval_utts = dm.utterances(cfg.eval.split)[: cfg.eval.max_utterances]
    rec, reports = apply_variant(cfg, base, dm, out_dir)

    results: dict[str, dict] = {}
    rank0 = L.pytorch.utilities.rank_zero_only.rank == 0  # DDP: only rank 0 evaluates
    if cfg.eval.before and cfg.init == "base" and rank0:
        results["base"] = evaluate(base, eval_utts, cfg)
    if len(rec.variants) > len(base.variants) and cfg.eval.before and rank0:
        results["after_surgery"] = evaluate(rec, eval_utts, cfg)

    trainer, exported = fit(cfg, rec, base, dm, resume, out_dir, reports)
    if trainer.global_rank != 0:
        return {}
    variant = OmegaConf.to_container(cfg.variant, resolve=True)
    final = out_dir / "final.pt"
    save_recognizer(rec, final, meta={"variant": variant, "steps": trainer.global_step,
                                      "exported": exported, "surgery": [r.summary() for r in reports]})
    log.info("saved %s (%s weights, step %s)", final, exported["export"], exported["step"])
    if cfg.eval.after:
        results["fine_tuned"] = evaluate(rec, eval_utts, cfg)
    summary = {"results": results, "variant_name": variant["name"], "split": cfg.eval.split,
               "final": str(final), "steps": trainer.global_step, "exported": exported,
               "val": validation_metrics(trainer), "model": model_costs(rec),
               "resumed_from": resume,
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
