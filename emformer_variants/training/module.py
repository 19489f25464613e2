"""LightningModule: RNN-T (+ optional auxiliary CTC, distillation and each variant's own)
losses, steps, logging, optimizer wiring.

Shapes: B batch, T feature frames, T' encoder frames, U target tokens, V symbols,
N sampled lattice cells.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import lightning as L
import torch

from emformer_variants.errors import UserError
from emformer_variants.metrics.wer import error_rates
from emformer_variants.models.checkpoints import state_digest
from emformer_variants.models.recognizer import Recognizer, recognizer_payload
from emformer_variants.surgery.registry import auxiliary_losses, training_stats
from emformer_variants.training.distill import (
    ModuleCapture,
    check_distill,
    encoder_mse,
    joiner_kl,
    joint_at,
    sample_cells,
    teacher_joint_at,
)
from emformer_variants.training.spec_augment import SpecAugment
from emformer_variants.training.validation import decode_full, make_beam_search


def set_dropout_(model: torch.nn.Module, p: float) -> int:
    """Every dropout in ``model`` to probability ``p``, in place: ``nn.Dropout`` modules and the
    float ``dropout`` of attention modules (torchaudio's Emformer attention, MLA). Returns how
    many were set. A training-time setting: the stored architecture keeps its own values."""
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = p
            count += 1
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = p
            count += 1
    return count


TRAIN_ONLY = ("all", "surgery", "auto")


def freeze_outside_surgery_(model: torch.nn.Module, train_only: str,
                            surgery_parameters: list[str] | None) -> int:
    """``train_only=surgery``: only the parameters the surgery created (named relative to
    ``model``; ``SurgeryReport.new_parameters``) keep ``requires_grad``; ``all``: nothing changes;
    ``auto``: ``surgery`` when the variant replaced a module, else ``all`` (the default recipe,
    so ``variant=dense`` stays the full fine-tune control). Returns how many parameters train.
    ``surgery`` with no surgery (``variant=dense``) would train nothing: an error."""
    if train_only not in TRAIN_ONLY:
        raise UserError(f"module.train_only={train_only!r}: choose one of {', '.join(TRAIN_ONLY)}")
    params = dict(model.named_parameters())
    if train_only == "auto":
        train_only = "surgery" if surgery_parameters else "all"
    if train_only == "all":
        return sum(p.numel() for p in params.values() if p.requires_grad)
    names = list(surgery_parameters or [])
    if not names:
        raise UserError("module.train_only=surgery: the variant replaced no module (variant=dense has no "
                        "surgery), so nothing would train; use module.train_only=all")
    missing = sorted(set(names) - set(params))
    if missing:
        raise UserError(f"module.train_only=surgery: {missing[:3]} are not parameters of the model")
    model.requires_grad_(False)
    for name in names:
        params[name].requires_grad_(True)
    return sum(params[n].numel() for n in names)


class RNNTModule(L.LightningModule):
    def __init__(self, recognizer: Recognizer, optimizer: Callable, scheduler: Callable | None = None,
                 spec_augment: dict | None = None, ctc_weight: float = 0.0, val_beam: int = 4,
                 loss_impl: str = "fast", max_bad_batches: int = 20, distill: dict | None = None,
                 teacher: Recognizer | None = None, dropout: float | None = None,
                 train_only: str = "all", surgery_parameters: list[str] | None = None):
        super().__init__()
        self.recognizer = recognizer
        if dropout is not None:  # else the dropout the architecture was built with
            set_dropout_(recognizer.model, float(dropout))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.spec_augment = SpecAugment(**spec_augment) if spec_augment else None
        self.ctc_weight = ctc_weight
        # Auxiliary CTC head on encoder outputs: helps the RNN-T start emitting early
        # (calibration runs on this CPU); not part of the recognizer, dropped after training.
        self.ctc_head = (torch.nn.Linear(recognizer.arch["encoding_dim"], recognizer.tokenizer.num_symbols)
                         if ctc_weight > 0 else None)
        self.val_beam = val_beam
        if loss_impl not in ("fast", "torchaudio"):
            raise UserError(f"module.loss_impl={loss_impl!r}: choose 'fast' or 'torchaudio'")
        self.loss_impl = loss_impl
        self.max_bad_batches = max_bad_batches
        self.bad_batches_in_a_row = 0
        self.bad_batches_total = 0
        self.distill = check_distill(distill)
        self.teacher = teacher
        freeze_outside_surgery_(recognizer.model, train_only, surgery_parameters)
        self._capture = None  # distill kind=modules: hooks on the replaced modules
        if self.teacher is not None:
            self.teacher.requires_grad_(False).eval()
            if self.distill["kind"] == "modules" and self.distill["weight"] > 0:
                self._capture = ModuleCapture(recognizer.model, self.teacher.model)
            # Lightning warns about modules left in eval mode at fit start; this one is on
            # purpose (a frozen teacher runs without dropout), so that warning is noise.
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        self._val_refs: list[str] = []
        self._val_hyps: list[str] = []
        self._search = None

    # ---- loss
    def _rnnt_loss(self, logits, targets, logit_lengths, target_lengths):
        if self.loss_impl == "fast":
            from emformer_variants.training.rnnt_loss import rnnt_loss
        else:
            from torchaudio.functional import rnnt_loss
        return rnnt_loss(logits.float(), targets, logit_lengths, target_lengths,
                         blank=self.recognizer.blank, reduction="mean")

    def compute_losses(self, batch: dict, augment: bool) -> dict[str, torch.Tensor]:
        model = self.recognizer.model
        feats, lengths = batch["features"], batch["feature_lengths"]
        targets, target_lengths = batch["targets"], batch["target_lengths"]
        if augment and self.spec_augment is not None:
            feats = self.spec_augment(feats)
        capture = self._capture is not None and augment
        if capture:
            self._capture.active = True
        try:
            enc, enc_lengths = model.transcribe(feats, lengths)  # (B, T', D_enc)
            blank = torch.full((targets.shape[0], 1), self.recognizer.blank, dtype=targets.dtype,
                               device=targets.device)
            pred_in = torch.cat([blank, targets], dim=1)  # (B, U+1): the predictor reads blank first
            pred, pred_lengths, _ = model.predict(pred_in, target_lengths + 1, None)
        finally:
            if capture:
                self._capture.active = False
        logits, _, _ = model.join(enc, enc_lengths, pred, pred_lengths)  # (B, T', U+1, V)
        losses = {"rnnt": self._rnnt_loss(logits, targets, enc_lengths.int(), target_lengths)}
        total = losses["rnnt"]
        if augment:  # training: the variants' auxiliary losses (already weighted), e.g. MoE balancing
            for name, value in auxiliary_losses(model).items():
                losses[name] = value
                total = total + value
        if self.ctc_head is not None and augment:
            log_probs = self.ctc_head(enc).float().log_softmax(-1).transpose(0, 1)  # (T', B, V)
            losses["ctc"] = torch.nn.functional.ctc_loss(
                log_probs, targets, enc_lengths, target_lengths, blank=self.recognizer.blank,
                reduction="mean", zero_infinity=True)
            total = (1 - self.ctc_weight) * total + self.ctc_weight * losses["ctc"]
        if self.teacher is not None and self.distill["weight"] > 0 and augment:
            losses["distill"] = self._distill_loss(feats, lengths, enc, pred, pred_in, target_lengths)
            total = total + self.distill["weight"] * losses["distill"]
        losses["loss"] = total
        return losses

    def _distill_loss(self, feats, lengths, enc, pred, pred_in, target_lengths) -> torch.Tensor:
        """The frozen teacher on the same (augmented) batch: KL on sampled joiner cells
        (``kind: joiner``), MSE on encoder outputs (``kind: encoder``) or each replaced module
        against the original on the same inputs (``kind: modules``); training.distill."""
        teacher = self.teacher.model
        if self.distill["kind"] == "modules":
            return self._capture.loss(teacher)
        with torch.no_grad():
            t_enc, t_len = teacher.transcribe(feats, lengths)
        if self.distill["kind"] == "encoder":
            return encoder_mse(enc, t_enc, t_len)
        with torch.no_grad():
            t_pred, _, _ = teacher.predict(pred_in, target_lengths + 1, None)
        cells = sample_cells(t_len, target_lengths, self.distill["positions"], frames=t_enc.shape[1])
        student = joint_at(self.recognizer.model, enc, pred, cells)
        return joiner_kl(student, teacher_joint_at(teacher, t_enc, t_pred, cells, self.distill["chunk"]),
                         self.distill["temperature"])

    # ---- steps
    def training_step(self, batch: dict, batch_idx: int):
        if batch["features"].shape[0] == 0:
            return None
        losses = self.compute_losses(batch, augment=True)
        if not torch.isfinite(losses["loss"]):
            # Skip the batch (no backward, no step) and count; stop after too many in a row.
            self.bad_batches_in_a_row += 1
            self.bad_batches_total += 1
            self.log("train/bad_batches", float(self.bad_batches_total), batch_size=1)
            if self.bad_batches_in_a_row >= self.max_bad_batches:
                raise UserError(
                    f"training stopped: {self.bad_batches_in_a_row} consecutive batches had a "
                    "non-finite loss; lower module.optimizer.lr or check the data (module.max_bad_batches)")
            return None
        self.bad_batches_in_a_row = 0
        bs = batch["features"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=bs)
        if batch_idx % max(1, self.trainer.log_every_n_steps) == 0:
            for name, value in training_stats(self.recognizer.model).items():
                self.log(f"train/{name}", value, batch_size=bs)
        return losses["loss"]

    def on_validation_epoch_start(self) -> None:
        self._val_refs, self._val_hyps = [], []
        self._search = make_beam_search(self.recognizer)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if batch["features"].shape[0] == 0:
            return
        bs = batch["features"].shape[0]
        losses = self.compute_losses(batch, augment=False)
        self.log("val/loss", losses["rnnt"], batch_size=bs, sync_dist=True)
        hyps = decode_full(self.recognizer, batch["features"], batch["feature_lengths"],
                           self.val_beam, self._search)
        self._val_refs.extend(batch["texts"])
        self._val_hyps.extend(hyps)

    def on_validation_epoch_end(self) -> None:
        # Corpus-level WER: every rank contributes its edit and reference counts (summed
        # across DDP ranks, each utterance scored once), never a mean of per-rank rates.
        # Every rank joins the all-reduce, also one that had no validation batch.
        rates = error_rates(self._val_refs, self._val_hyps) if self._val_refs else {}
        words, chars = rates.get("ref_words", 0), rates.get("ref_chars", 0)
        counts = torch.tensor([
            sum(rates.get(k, 0) for k in ("substitutions", "deletions", "insertions")), words,
            round(rates["cer"] * chars) if chars else 0, chars, rates.get("num_utterances", 0)],
            dtype=torch.float64, device=self.device)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")  # DDP: all-reduce; else as is
        self._search = None
        if counts[1] <= 0:
            return
        # Already identical on every rank: sync_dist's mean changes nothing (and it tells
        # Lightning the epoch-level value is consistent across ranks).
        self.log("val/wer", float(counts[0] / counts[1]), prog_bar=True, sync_dist=True)
        self.log("val/cer", float(counts[2] / counts[3]), sync_dist=True)
        self.log("val/num_utterances", float(counts[4]), sync_dist=True)

    # ---- optimizer
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        if getattr(self.scheduler_factory, "keywords", {}).get("total_steps", 0) is None:
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints carry everything needed to rebuild the recognizer
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["emformer_variants"] = recognizer_payload(self.recognizer)
        checkpoint["bad_batches"] = {"in_a_row": self.bad_batches_in_a_row, "total": self.bad_batches_total}
        # The frozen teacher is rebuilt from its own source; never stored.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith("teacher.")}
        checkpoint["emformer_variants"]["state_digest"] = state_digest(checkpoint["state_dict"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        bad = checkpoint.get("bad_batches", {})
        self.bad_batches_in_a_row, self.bad_batches_total = bad.get("in_a_row", 0), bad.get("total", 0)
        if self.teacher is not None:
            for k, v in self.teacher.state_dict().items():
                checkpoint["state_dict"].setdefault(f"teacher.{k}", v)
