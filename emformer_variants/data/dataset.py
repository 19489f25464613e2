"""Utterance dataset, length-grouped batch sampler and collate function.

Shapes: B batch, T feature frames, F mel bins, U target tokens.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from emformer_variants.data.audio import load_audio
from emformer_variants.data.manifest import Utterance
from emformer_variants.errors import UserError


class UtteranceDataset(Dataset):
    """Reads audio, optionally augments it, returns features and token ids.

    ``augment`` is an AugmentConfig or None; its randomness derives from
    (seed, epoch, index) so runs are reproducible whatever the number of workers.
    With ``skip_bad`` a file that fails to load yields None (dropped by the collate).
    """

    def __init__(self, utts: list[Utterance], features, tokenizer, augment=None, seed: int = 0,
                 skip_bad: bool = False):
        self.utts = utts
        self.features = features
        self.tokenizer = tokenizer
        self.augment = augment
        self.seed = seed
        self.skip_bad = skip_bad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, index: int) -> dict | None:
        utt = self.utts[index]
        try:
            wave = load_audio(utt.audio)
        except UserError:
            if self.skip_bad:
                return None
            raise
        if self.augment is not None:
            from emformer_variants.data.augment import augment

            gen = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + self.epoch * 7919 + index) % (2**63)
            )
            wave = augment(wave, 16000, self.augment, gen)
        with torch.no_grad():
            feats = self.features.full(wave)
        tokens = self.tokenizer.encode(utt.text)
        num_frames = feats.shape[0] - self.features.cfg.right_context_length
        return {"features": feats, "num_frames": num_frames,
                "tokens": torch.tensor(tokens, dtype=torch.int32), "text": utt.text,
                "audio_s": wave.numel() / 16000, "index": index}


def collate(items: list[dict | None]) -> dict:
    """Pad a list of dataset items into a batch; drops None (skipped bad files)."""
    items = [it for it in items if it is not None]
    if not items:
        return {"features": torch.zeros(0, 0, 0), "feature_lengths": torch.zeros(0, dtype=torch.int32),
                "targets": torch.zeros(0, 0, dtype=torch.int32),
                "target_lengths": torch.zeros(0, dtype=torch.int32), "texts": [], "audio_s": [],
                "indices": []}
    feats = torch.nn.utils.rnn.pad_sequence([it["features"] for it in items], batch_first=True)
    targets = torch.nn.utils.rnn.pad_sequence([it["tokens"] for it in items], batch_first=True)
    return {
        "features": feats,
        # Valid frames, excluding the right-context padding that ``FeatureExtractor.full``
        # appends (torchaudio's recipe: the training forward consumes it as right context).
        "feature_lengths": torch.tensor([it["num_frames"] for it in items], dtype=torch.int32),
        "targets": targets.to(torch.int32),
        "target_lengths": torch.tensor([it["tokens"].numel() for it in items], dtype=torch.int32),
        "texts": [it["text"] for it in items],
        "audio_s": [it["audio_s"] for it in items],
        "indices": [it["index"] for it in items],
    }


@dataclass
class DurationBatchSampler(Sampler[list[int]]):
    """Batches of similar-length utterances, at most ``max_batch_seconds`` of padded audio.

    Epoch 0 runs short-to-long when ``sort_first_epoch`` (SortaGrad, Amodei et al. 2016);
    later epochs shuffle the batch order with (seed, epoch). ``num_replicas``/``rank``
    give each DDP process its own share: with ``pad`` (training) a share of the batches,
    repeating some so every rank gets as many (DDP steps in lockstep); without (evaluation)
    a disjoint share of the utterances, so each one is scored exactly once.
    """

    durations: list[float]
    max_batch_seconds: float
    shuffle: bool = True
    seed: int = 0
    sort_first_epoch: bool = True
    num_replicas: int = 1
    rank: int = 0
    max_batch_size: int = 128
    epoch: int = 0
    pad: bool = True

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1000 + self.epoch)
        order = sorted(range(len(self.durations)), key=lambda i: (self.durations[i], i))
        if self.num_replicas > 1 and not self.pad:
            order = order[self.rank::self.num_replicas]
        batches, current, longest = [], [], 0.0
        for i in order:
            longest_if = max(longest, self.durations[i])
            if current and (longest_if * (len(current) + 1) > self.max_batch_seconds
                            or len(current) >= self.max_batch_size):
                batches.append(current)
                current, longest_if = [], self.durations[i]
            current.append(i)
            longest = longest_if
        if current:
            batches.append(current)
        if self.shuffle and not (self.sort_first_epoch and self.epoch == 0):
            rng.shuffle(batches)
        if self.num_replicas > 1 and self.pad:
            per = math.ceil(len(batches) / self.num_replicas)
            batches = (batches * 2)[: per * self.num_replicas]  # pad so every rank has `per`
            batches = batches[self.rank::self.num_replicas]
        return batches

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
