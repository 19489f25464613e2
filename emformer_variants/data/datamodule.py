"""The DataModule: owns corpus splits, validation of entries, datasets and loaders."""

from __future__ import annotations

import copy
import logging

import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from emformer_variants.data.audio import audio_duration
from emformer_variants.data.dataset import DurationBatchSampler, UtteranceDataset, collate
from emformer_variants.data.manifest import Utterance
from emformer_variants.data.resumable import ResumableDataLoader
from emformer_variants.errors import UserError

log = logging.getLogger(__name__)


def validate_utterances(utts: list[Utterance], split: str, skip_bad: bool
                        ) -> tuple[list[Utterance], list[str]]:
    """Cheap checks before any work: non-empty transcript, readable audio header.

    Returns (good utterances, one reason per skipped one). Without ``skip_bad`` the first
    bad entry raises a UserError naming the file and the fix.
    """
    good, skipped = [], []
    for u in utts:
        problem = None
        if not u.text.strip():
            problem = (f"{u.audio}: empty transcript in split '{split}'; "
                       "fix the text or set data.skip_bad=true")
        else:
            try:
                dur = audio_duration(u.audio)  # header only: catches missing/corrupt files early
                u = Utterance(u.audio, u.text, dur, u.speaker)
            except UserError as e:
                problem = f"{e} (or set data.skip_bad=true)"
        if problem is None:
            good.append(u)
        elif skip_bad:
            skipped.append(problem)
        else:
            raise UserError(problem)
    return good, skipped


def _repeat_counts(extra_repeat, n_sources: int) -> list[int]:
    """``data.extra_repeat`` as one count per extra source: an integer for all of them, or a
    list with one integer per ``data.extra_train`` entry."""
    if isinstance(extra_repeat, ListConfig):
        extra_repeat = list(extra_repeat)
    is_list = isinstance(extra_repeat, (list, tuple))
    counts = list(extra_repeat) if is_list else [extra_repeat]
    if (any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts)
            or (is_list and len(counts) != n_sources)):
        raise UserError(f"data.extra_repeat={extra_repeat!r}: use an integer >= 1, or a list of "
                        f"them with one per data.extra_train entry ({n_sources})")
    return counts if is_list else counts * n_sources


class ASRDataModule(L.LightningDataModule):
    def __init__(self, source, batch_seconds: float = 60.0, eval_batch_seconds: float = 120.0,
                 num_workers: int = 0, augment: dict | None = None, skip_bad: bool = False,
                 max_train_seconds: float = 20.0, max_dev_utterances: int | None = None,
                 train_split: str = "train", val_split: str = "dev", seed: int = 0,
                 sort_first_epoch: bool = True, path: str | None = None, root: str | None = None,
                 min_train_seconds: float = 0.05, extra_train: list | None = None,
                 extra_repeat: int | list[int] = 1):
        # ``path``/``root`` are the user-facing shortcuts (data.path=DIR, data.root=DIR) that
        # the data configs interpolate into their source; the source itself reads them.
        super().__init__()
        self.source = source
        # More training audio from other sources (their ``train`` split, each utterance
        # ``extra_repeat`` times per epoch, or one count per source); dev and test come from
        # ``source`` alone. Hydra passes instantiated dataclass sources in a list back as
        # structured configs.
        self.extra_train = [OmegaConf.to_object(e) if isinstance(e, DictConfig) else e
                            for e in (extra_train or [])]
        self.extra_repeat = _repeat_counts(extra_repeat, len(self.extra_train))
        self.batch_seconds = batch_seconds
        self.eval_batch_seconds = eval_batch_seconds
        self.num_workers = num_workers
        self.augment_cfg = dict(augment or {})
        self.skip_bad = skip_bad
        self.max_train_seconds = max_train_seconds
        # Shorter clips give no encoder frame after time reduction (4 x 10 ms): nothing to train on.
        self.min_train_seconds = min_train_seconds
        self.max_dev_utterances = max_dev_utterances
        self.train_split, self.val_split = train_split, val_split
        self.seed = seed
        self.sort_first_epoch = sort_first_epoch
        self._splits: dict[str, list[Utterance]] | None = None
        self.skipped: dict[str, list[str]] = {}
        self.features = self.tokenizer = None

    # ---- corpus
    def splits(self) -> dict[str, list[Utterance]]:
        if self._splits is None:
            self._splits = self.source.splits()
        return self._splits

    def utterances(self, split: str) -> list[Utterance]:
        """Validated utterances of one split (bad ones raise, or are skipped and counted)."""
        splits = self.splits()
        if split not in splits:
            raise UserError(f"data split '{split}' not found; this corpus has {sorted(splits)}")
        return self._validated(splits[split], split, f"data split '{split}'")

    def _validated(self, utts: list[Utterance], split: str, where: str) -> list[Utterance]:
        good, skipped = validate_utterances(utts, split, self.skip_bad)
        if skipped:
            self.skipped[split] = skipped
            log.warning("split %s: skipped %d bad entries (data.skip_bad=true), first: %s",
                        split, len(skipped), skipped[0])
        if not good:
            raise UserError(f"{where} has no usable utterances")
        return good

    def _train_utterances(self) -> list[Utterance]:
        utts = self.utterances(self.train_split)
        for i, (extra, repeat) in enumerate(zip(self.extra_train, self.extra_repeat, strict=True)):
            utts = utts + repeat * self._validated(
                extra.splits().get("train", []), f"extra_train[{i}]", f"data.extra_train[{i}]'s train split")
        short = [u.audio for u in utts if u.duration < self.min_train_seconds]
        if short:
            log.warning("training: %d clips shorter than %.2f s left out (e.g. %s)", len(short),
                        self.min_train_seconds, ", ".join(short[:3]))
        return [u for u in utts if self.min_train_seconds <= u.duration <= self.max_train_seconds]

    def bind(self, features, tokenizer) -> None:
        """Attach a copy of the model's feature extractor (with global stats) and the tokenizer.
        A copy: the data is read and featurised on the CPU (in worker processes) while Lightning
        moves the model, and with it the model's extractor, to the GPU."""
        self.features, self.tokenizer = copy.deepcopy(features), tokenizer

    def _augment(self):
        if not self.augment_cfg.get("enabled", False):
            return None
        from emformer_variants.data.augment import AugmentConfig

        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in self.augment_cfg.items()
               if k != "enabled"}
        try:
            return AugmentConfig(**cfg)
        except TypeError as e:
            raise UserError(f"data.augment: {e}") from None

    # ---- Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if self.features is None:
            raise RuntimeError("ASRDataModule.bind(features, tokenizer) must be called before setup")
        if stage in (None, "fit"):
            train = self._train_utterances()
            self.train_set = UtteranceDataset(train, self.features, self.tokenizer, self._augment(),
                                              self.seed, self.skip_bad)
        if stage in (None, "fit", "validate"):
            dev = self.utterances(self.val_split)
            if self.max_dev_utterances:
                dev = dev[: self.max_dev_utterances]
            self.val_set = UtteranceDataset(dev, self.features, self.tokenizer, None, self.seed,
                                            self.skip_bad)

    def calibration_batches(self, num_batches: int = 8, batch_size: int = 8) -> list[tuple]:
        """(features (B, T, F), lengths (B,)) batches of un-augmented training audio, chosen
        deterministically; used by activation-aware surgery (ASVD, whitening, MoE partition)."""
        import random

        if self.features is None:
            raise RuntimeError("ASRDataModule.bind(features, tokenizer) must be called first")
        utts = self._train_utterances()
        chosen = random.Random(self.seed).sample(utts, min(len(utts), num_batches * batch_size))
        dataset = UtteranceDataset(chosen, self.features, self.tokenizer, None, self.seed, self.skip_bad)
        batches = []
        for start in range(0, len(chosen), batch_size):
            batch = collate([dataset[i] for i in range(start, min(len(chosen), start + batch_size))])
            if batch["features"].shape[0]:
                batches.append((batch["features"], batch["feature_lengths"]))
        return batches

    def _ddp(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        replicas, rank = self._ddp()
        epoch = self.trainer.current_epoch if getattr(self, "trainer", None) else 0
        sampler = DurationBatchSampler([u.duration for u in self.train_set.utts], self.batch_seconds,
                                       shuffle=True, seed=self.seed,
                                       sort_first_epoch=self.sort_first_epoch,
                                       num_replicas=replicas, rank=rank)
        sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        return self._loader(self.train_set, sampler, resumable=True)

    def val_dataloader(self) -> DataLoader:
        replicas, rank = self._ddp()
        if len(self.val_set.utts) < replicas:
            raise UserError(f"data split '{self.val_split}' has {len(self.val_set.utts)} utterance(s), "
                            f"fewer than the {replicas} DDP processes; use fewer trainer.devices")
        sampler = DurationBatchSampler([u.duration for u in self.val_set.utts],
                                       self.eval_batch_seconds, shuffle=False,
                                       num_replicas=replicas, rank=rank, pad=False)
        return self._loader(self.val_set, sampler)

    def _loader(self, dataset, sampler, resumable: bool = False) -> DataLoader:
        # The train loader resumes mid-epoch from a checkpoint (data/resumable.py).
        cls = ResumableDataLoader if resumable else DataLoader
        return cls(dataset, batch_sampler=sampler, collate_fn=collate,
                   num_workers=self.num_workers, persistent_workers=False,
                   worker_init_fn=_one_thread if self.num_workers else None)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)
