"""A training DataLoader that resumes mid-epoch at the exact batch where a run stopped.

Lightning saves ``state_dict()`` of a stateful train loader in every checkpoint and calls
``load_state_dict()`` on resume, before iterating. The state is (epoch, batches handed
to the training loop in that epoch). Batches are counted where they leave the loader, not in
the sampler, because worker processes read the sampler ahead. The batch order of an epoch is
a pure function of (seed, epoch) (``DurationBatchSampler``), so skipping the first
``batches`` batch index lists, without loading their audio, reproduces the remaining order
exactly.
"""

from __future__ import annotations

import itertools
import logging

from torch.utils.data import DataLoader, Sampler

log = logging.getLogger(__name__)


class SkippingBatchSampler(Sampler[list[int]]):
    """Wraps a batch sampler; ``__iter__`` starts ``skip`` batches in (the loader sets it and
    clears it again once its iterator exists: worker iterators iterate the sampler twice)."""

    def __init__(self, inner):
        self.inner = inner
        self.skip = 0

    @property
    def epoch(self) -> int:
        return getattr(self.inner, "epoch", 0)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        return itertools.islice(iter(self.inner), self.skip, None)


class ResumableDataLoader(DataLoader):
    """DataLoader(batch_sampler=...) whose position in the epoch survives a checkpoint."""

    def __init__(self, dataset, batch_sampler, **kwargs):
        if not isinstance(batch_sampler, SkippingBatchSampler):
            batch_sampler = SkippingBatchSampler(batch_sampler)
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._epoch = batch_sampler.epoch
        self._done = 0  # batches of self._epoch handed out
        self._pending: dict | None = None

    def __iter__(self):
        sampler = self.batch_sampler
        self._epoch, self._done = sampler.epoch, 0
        pending, self._pending = self._pending, None
        if pending:
            if pending["epoch"] == sampler.epoch:
                self._done = sampler.skip = min(pending["batches"], len(sampler))
                log.info("resuming epoch %d at batch %d of %d", sampler.epoch, self._done, len(sampler))
            else:
                log.warning("train loader state is for epoch %d, not %d: starting the epoch from its "
                            "first batch", pending["epoch"], sampler.epoch)
        try:
            iterator = super().__iter__()
        finally:
            sampler.skip = 0
        for batch in iterator:
            self._done += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": int(self._epoch), "batches": int(self._done)}

    def load_state_dict(self, state: dict) -> None:
        self._pending = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
