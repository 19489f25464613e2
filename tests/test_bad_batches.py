"""Non-finite loss: the batch is skipped (no optimizer step) and counted; training stops with a
one-line message after module.max_bad_batches consecutive bad batches."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from emformer_variants.data.datamodule import ASRDataModule
from emformer_variants.data.sources import ManifestSource
from emformer_variants.errors import UserError
from emformer_variants.training.module import RNNTModule
from tests.conftest import TINY_ARCH, make_tiny_rec, run_cli


class _Poisoned(torch.utils.data.Dataset):
    """The real training set, with NaN features for the utterances in ``bad``."""

    def __init__(self, inner, bad: set[int]):
        self.inner, self.bad, self.utts = inner, bad, inner.utts

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        item = self.inner[i]
        if i in self.bad:
            item = {**item, "features": torch.full_like(item["features"], float("nan"))}
        return item


class _PoisonedData(ASRDataModule):
    def __init__(self, root, bad):
        super().__init__(ManifestSource(str(root)), batch_seconds=3, seed=0)  # one utterance per batch
        self.bad = bad

    def setup(self, stage=None):
        super().setup(stage)
        self.train_set = _Poisoned(self.train_set, self.bad)


def _fit(mini_corpus, bad: set[int], max_bad: int = 20):
    rec = make_tiny_rec()
    dm = _PoisonedData(mini_corpus, bad)
    dm.bind(rec.features, rec.tokenizer)
    module = RNNTModule(rec, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), max_bad_batches=max_bad)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return rec, module, trainer, dm


def test_nan_batches_are_skipped_and_counted(mini_corpus):
    rec, module, trainer, dm = _fit(mini_corpus, bad={2, 5})
    trainer.fit(module, datamodule=dm)
    assert module.bad_batches_total == 2 and module.bad_batches_in_a_row == 0
    # Lightning still counts a step per batch, but the 2 bad ones update no weight (no gradient):
    # AdamW's own step count is 8 - 2.
    assert trainer.global_step == 8
    p = next(rec.model.parameters())
    assert int(trainer.optimizers[0].state[p]["step"]) == 8 - 2
    assert all(torch.isfinite(p).all() for p in rec.parameters())
    assert trainer.callback_metrics["train/bad_batches"] == 2


def test_consecutive_bad_batches_stop_training(mini_corpus):
    rec, module, trainer, dm = _fit(mini_corpus, bad=set(range(8)), max_bad=3)
    before = {k: v.clone() for k, v in rec.state_dict().items()}
    with pytest.raises(UserError, match="training stopped: 3 consecutive batches had a non-finite loss"):
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2  # the 3rd bad batch raises before its (empty) step
    assert all(torch.equal(before[k], v) for k, v in rec.state_dict().items())  # never stepped


def test_cli_stops_with_one_line(mini_corpus, tmp_path):
    """A learning rate of 1e30 blows the weights up after the first step: every later loss is
    non-finite, and the run stops after module.max_bad_batches of them, with one line, exit 2."""
    proc = run_cli("train.py", "data=manifest", f"data.root={mini_corpus}", "init=scratch", *TINY_ARCH,
                   "module.optimizer.lr=1e30", "module.max_bad_batches=3", "trainer.max_steps=30",
                   "data.batch_seconds=3", "eval.before=false", "threads=1", f"paths.output_dir={tmp_path}",
                   "trainer.enable_progress_bar=false")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: training stopped: 3 consecutive batches had a non-finite loss; lower module.optimizer.lr "
        "or check the data (module.max_bad_batches)")
    assert "Traceback" not in proc.stderr
