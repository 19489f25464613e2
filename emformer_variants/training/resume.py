"""Crash-safe training: atomic checkpoints, frequent ``last.ckpt``, and a random stream that
is a function of the position in training, so a resumed run continues exactly.

- ``AtomicCheckpointIO``: Lightning writes checkpoints through fsspec's transaction, which
  stages the file in the system temp dir and moves it into place; across file systems that
  move is a copy, and a kill mid-copy leaves a half file under the final name. Here the file
  is written next to its target, flushed to disk, then renamed (atomic on POSIX).
- ``LastCheckpoint``: ``last.ckpt`` every ``checkpoint_every_n_steps`` optimizer steps and
  after each validation, so a crash loses at most that many steps.
- ``StepSeed``: reseeds torch, numpy and ``random`` before every training batch from
  (seed, epoch, batch index, DDP rank). SpecAugment masks, dropout and MoE router noise then depend
  only on where the batch is in training, not on what ran before (validation, a restart),
  so an interrupted-and-resumed run draws the same randomness as an uninterrupted one.
- ``BatchOrderLog``: optional ``batch_order.jsonl`` (epoch, batch, step, utterance indices)
  to audit the data order (``log_batch_order=true``).
- ``resolve_resume``: ``ckpt_path=last`` -> the newest ``last.ckpt`` of this task.
- ``ResumableCSVLogger``: Lightning's CSV logger, except that a run resumed into its own folder
  (``python -m emformer_variants.results`` continues a row there) keeps the rows ``metrics.csv``
  already has and appends to them, where Lightning's deletes the file.

The DataLoader side (skipping the batches already trained on) is data/resumable.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from emformer_variants.errors import UserError


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to ``path.tmp-<pid>`` in the same folder, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO whose writes are atomic on the local file system."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        atomic_torch_save(checkpoint, path)


class LastCheckpoint(ModelCheckpoint):
    """Writes only ``last.ckpt``: every ``every_n_train_steps`` steps and after each validation."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None):
        super().__init__(dirpath=str(dirpath), save_last=True, save_top_k=0,
                         every_n_train_steps=every_n_train_steps or 0, enable_version_counter=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._should_skip_saving_checkpoint(trainer):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _seed_for(seed: int, epoch: int, batch_idx: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 100_003 + batch_idx + rank * 7_919) % (2**31 - 1)


class StepSeed(L.Callback):
    """Reseed every RNG before each training batch from (seed, epoch, batch index)."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        s = _seed_for(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank)
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s)


class BatchOrderLog(L.Callback):
    """Appends {epoch, batch, step, indices} per training batch to ``path`` (JSON lines); under
    DDP every rank appends its own rows, tagged with ``rank``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        row = {"epoch": trainer.current_epoch, "batch": batch_idx, "step": trainer.global_step,
               "indices": [int(i) for i in batch.get("indices", [])]}
        if trainer.world_size > 1:
            row["rank"] = trainer.global_rank
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def resolve_resume(ckpt_path: str | None, root_dir: str | Path, task_name: str) -> str | None:
    """``None`` / a path (must exist) / ``last``: the newest ``last.ckpt`` of ``task_name``."""
    if ckpt_path != "last":
        if ckpt_path and not Path(ckpt_path).is_file():
            raise UserError(f"ckpt_path={ckpt_path}: file not found")
        return ckpt_path
    runs = sorted(Path(root_dir, "outputs", task_name).glob("*/checkpoints/last.ckpt"),
                  key=lambda p: p.stat().st_mtime)
    if not runs:
        raise UserError(f"ckpt_path=last: no last.ckpt under {Path(root_dir, 'outputs', task_name)}"
                        "/*/checkpoints; pass ckpt_path=PATH")
    return str(runs[-1])


class ResumableCSVLogger(CSVLogger):
    """``metrics.csv`` keeps an earlier run's rows when a resumed run logs into the same folder:
    the file is read before Lightning's writer deletes it, put back, and the writer appends with
    the union of both runs' columns."""

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        kept = path.read_text() if path.is_file() else ""
        writer = super().experiment  # Lightning's writer removes an existing metrics.csv
        if kept.strip() and rank_zero_only.rank == 0:
            path.write_text(kept)
            writer.metrics_keys = list(csv.DictReader(io.StringIO(kept)).fieldnames or [])
        return writer
