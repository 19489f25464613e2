"""What the engine's searches share: predictor + joiner steps, the prefix cache, and the
chunk loop that carries each stream's beam from one chunk to the next.

Shapes: N streams, T frames per chunk, D joiner width.
"""

from __future__ import annotations

import torch

from emformer_variants.engine.hyp import Hyp
from emformer_variants.engine.joiner import JoinerStep
from emformer_variants.engine.predictor import PredictorStep, PrefixCache

STALE = ("stale beam: pass each stream's beam from the previous step (a paused stream too: pass "
         "its beam and keep the old one), or None to start")


class CachedSearch:
    """``step(enc (N, T, D), beams) -> beams``: a stream's beam is a list of ``Hyp``, best
    first, or None before its first chunk. Beams reference the prefix cache, which frees
    prefixes not seen for ``keep_chunks`` steps: pass every beam you keep to each step.
    Subclasses implement ``_frame``."""

    name = "base"

    def __init__(self, model: torch.nn.Module, blank: int, beam: int, temperature: float = 1.0,
                 keep_chunks: int = 2):
        self.blank, self.beam = blank, beam
        self.predictor = PredictorStep(model.predictor)
        self.joiner = JoinerStep(model.joiner, temperature)
        self.cache = PrefixCache(self.predictor)
        self.keep_chunks = keep_chunks
        self.joiner_rows = 0  # statistics
        self.fused = None  # engine.fused.FusedSearch: each chunk in one C++ call

    def _fuse(self, kind: str, limit: int, fused: bool) -> None:
        """Run each chunk in C++ (``engine.fused``, ``kind`` with ``limit`` symbols per frame)
        when ``fused`` and the kernels allow; the prefix cache is then the C++ one."""
        from emformer_variants.engine.fused import FusedSearch

        self.fused = FusedSearch.build(self, kind, limit) if fused else None
        if self.fused is not None:
            self.cache = self.fused  # what tests and statistics read: slot_of, free, computed

    def init_state(self):
        return None

    def best_tokens(self, beam: list[Hyp] | None) -> list[int]:
        """Token ids of the best hypothesis, without the priming blank."""
        return [] if not beam else list(beam[0].tokens[1:])

    def hypotheses(self, beam: list[Hyp] | None) -> list[tuple[list[int], float]]:
        return [(list(h.tokens), h.score) for h in beam or []]

    def join(self, enc_t: torch.Tensor, rows_per_stream: list[int], slots: list[int]) -> torch.Tensor:
        """Log-probs (R, V) of hypotheses in ``slots`` against their stream's frame ``enc_t``."""
        pred = self.cache.out.index_select(0, torch.tensor(slots))
        if enc_t.shape[0] > 1:
            counts = torch.tensor(rows_per_stream)
            enc_t = enc_t.repeat_interleave(counts, dim=0)
        self.joiner_rows += len(slots)
        return self.joiner(enc_t, pred)

    @torch.inference_mode()
    def step(self, enc: torch.Tensor, beams: list) -> list[list[Hyp]]:
        if len(beams) != enc.shape[0]:
            raise ValueError(f"{len(beams)} beams for {enc.shape[0]} streams")
        if self.fused is not None:
            return self.fused.step(enc, beams, self.keep_chunks)
        beams = [[Hyp((self.blank,), self.cache.root(self.blank), 0.0)] if b is None else b
                 for b in beams]
        slot_of = self.cache.slot_of
        if any(slot_of.get(h.tokens) != h.slot for b in beams for h in b):
            raise ValueError(STALE)
        self.cache.touch(h.tokens for b in beams for h in b)
        enc = enc.float()
        for t in range(enc.shape[1]):
            beams = self._frame(enc[:, t], beams)
        self.cache.touch(h.tokens for b in beams for h in b)
        self.cache.release_stale(self.keep_chunks)
        return beams

    def _frame(self, enc_t: torch.Tensor, beams: list[list[Hyp]]) -> list[list[Hyp]]:
        raise NotImplementedError
