"""Distillation from the frozen base (module.distill.weight): the loss is zero when the student
equals the teacher, gradients reach the student only, and through a real Lightning fit the
teacher stays frozen, in eval mode (also after validation) and out of every checkpoint."""

from __future__ import annotations

import copy
import functools
import warnings

import lightning as L
import pytest
import torch

from emformer_variants.data.datamodule import ASRDataModule
from emformer_variants.data.sources import ManifestSource
from emformer_variants.errors import UserError
from emformer_variants.surgery.registry import apply_surgery_
from emformer_variants.training.distill import replaced_modules
from emformer_variants.training.module import RNNTModule
from tests.conftest import TINY_ARCH, make_tiny_rec, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _module(mini_corpus, weight: float = 1.0, kind: str = "joiner"):
    rec = make_tiny_rec()
    teacher = copy.deepcopy(rec)
    dm = ASRDataModule(ManifestSource(str(mini_corpus)), batch_seconds=6, seed=0)
    dm.bind(rec.features, rec.tokenizer)
    module = RNNTModule(rec, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
                        distill={"weight": weight, "kind": kind}, teacher=teacher)
    return rec, teacher, dm, module


def _first_batch(dm):
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("kind", ["joiner", "encoder"])
def test_distill_loss_is_zero_for_the_teacher_itself_and_trains_the_student_only(mini_corpus, kind):
    rec, teacher, dm, module = _module(mini_corpus, weight=2.0, kind=kind)
    batch = _first_batch(dm)
    rec.eval()  # no dropout: the student computes exactly the teacher's outputs
    losses = module.compute_losses(batch, augment=True)
    assert losses["distill"].item() == 0.0
    assert torch.allclose(losses["loss"], losses["rnnt"])

    with torch.no_grad():  # move the student away from the teacher
        for p in rec.model.transcriber.parameters():
            p.add_(0.05 * torch.randn_like(p))
    losses = module.compute_losses(batch, augment=True)
    assert losses["distill"].item() > 0
    assert torch.allclose(losses["loss"], losses["rnnt"] + 2.0 * losses["distill"])
    losses["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in rec.model.transcriber.parameters())
    # Evaluation losses (augment=False) carry no distillation term.
    assert "distill" not in module.compute_losses(batch, augment=False)


def _lowrank(rec, **rank):
    spec = {"name": "lowrank", "targets": ["ffn", "attention"], "method": "svd", "skip_if_not_smaller": False,
            **rank}
    return apply_surgery_(rec, spec, init="convert")


def test_module_distillation_matches_each_replaced_module_to_the_original(mini_corpus):
    rec = make_tiny_rec()
    teacher = copy.deepcopy(rec)
    _lowrank(rec, ratio=1.0)  # full-rank SVD: each factor pair computes the original linear
    paths = replaced_modules(rec.model, teacher.model)
    assert paths and all(p.endswith("pos_ff") or ".attention." in p for p in paths)  # a swapped
    # member of a Sequential (the FFN) is matched as the whole chain
    assert not any(p.startswith(f"{q}.") for p in paths for q in paths)  # the outermost only
    dm = ASRDataModule(ManifestSource(str(mini_corpus)), batch_seconds=6, seed=0)
    dm.bind(rec.features, rec.tokenizer)
    module = RNNTModule(rec, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
                        distill={"weight": 3.0, "kind": "modules"}, teacher=teacher)
    batch = _first_batch(dm)
    rec.eval()
    assert module.compute_losses(batch, augment=True)["distill"].item() < 1e-9

    low = make_tiny_rec()
    teacher = copy.deepcopy(low)
    _lowrank(low, rank=4)  # a real cut: every factorised linear's output moves
    module = RNNTModule(low, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
                        distill={"weight": 3.0, "kind": "modules"}, teacher=teacher)
    losses = module.compute_losses(batch, augment=True)
    assert 0 < losses["distill"].item() < 1
    assert torch.allclose(losses["loss"], losses["rnnt"] + 3.0 * losses["distill"])
    assert "distill" not in module.compute_losses(batch, augment=False)
    low.model.zero_grad()
    (3.0 * module.compute_losses(batch, augment=True)["distill"]).backward()
    grads = {n for n, p in low.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(any(n.startswith(f"{q}.") for q in module._capture.paths) for n in grads)
    assert all(p.grad is None for p in teacher.parameters())

    moe = make_tiny_rec()
    teacher = copy.deepcopy(moe)
    apply_surgery_(moe, {"name": "moe", "num_experts": 4, "top_k": 2, "init": "upcycle"}, init="convert")
    assert [p.rsplit(".", 2)[-1] for p in replaced_modules(moe.model, teacher.model)] == ["pos_ff"] * 2
    module = RNNTModule(moe, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
                        distill={"weight": 1.0, "kind": "modules"}, teacher=teacher)
    assert module.compute_losses(batch, augment=True)["distill"].item() > 0

    dense = make_tiny_rec()
    with pytest.raises(UserError, match="kind=modules: the variant replaced no module"):
        RNNTModule(dense, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
                   distill={"weight": 1.0, "kind": "modules"}, teacher=copy.deepcopy(dense))


class _TeacherModes(L.Callback):
    """Records whether any teacher module is in training mode at every training batch."""

    def __init__(self):
        self.any_training: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.any_training.append(any(m.training for m in pl_module.teacher.modules()))


def test_fit_keeps_the_teacher_frozen_in_eval_mode_and_out_of_checkpoints(mini_corpus, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the module's own filter (added next) still wins
        rec, teacher, dm, module = _module(mini_corpus)
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
        student_before = {k: v.clone() for k, v in rec.state_dict().items()}
        modes = _TeacherModes()
        trainer = L.Trainer(accelerator="cpu", max_steps=4, val_check_interval=2, limit_val_batches=1,
                            num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[modes])
        trainer.fit(module, datamodule=dm)
    assert not [w for w in caught if "eval mode" in str(w.message)]  # the teacher is on purpose
    assert len(modes.any_training) == 4 and not any(modes.any_training)  # also after validation
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in rec.state_dict().items())
    assert float(trainer.callback_metrics["train/distill"]) > 0
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert state and not any(k.startswith("teacher.") for k in state)


def test_cli_rejects_distillation_without_a_base(mini_corpus, tmp_path):
    proc = run_cli("train.py", "data=manifest", f"data.root={mini_corpus}", "init=scratch", *TINY_ARCH,
                   "module.distill.weight=1", f"paths.output_dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: module.distill.weight=1 needs init=base (the teacher is the base checkpoint)")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()
