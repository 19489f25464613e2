"""Fast mode: "modified beam search" (k2-fsa/icefall), at most one symbol per frame.

Per frame, one joiner call scores every (hypothesis, symbol) pair of every stream; each
stream keeps its ``beam`` best pairs: blank keeps the hypothesis, a symbol extends it.
Extensions that reach the same token sequence merge by log-add-exp, and one predictor
call (cache misses only) serves all streams. So the work per frame is fixed: one joiner
call of N x beam rows and at most one predictor call, where torchaudio's search runs a
data-dependent number of rounds. Ranking for the output is torchaudio's score / (tokens + 1).

Shapes: N streams, D joiner width, V symbols, R rows (hypotheses of all streams).
"""

from __future__ import annotations

import math

import torch

from emformer_variants.engine.base import CachedSearch
from emformer_variants.engine.hyp import Hyp, sort_key


def log_add(a: float, b: float) -> float:
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


class ModifiedBeamSearch(CachedSearch):
    name = "modified"

    def _frame(self, enc_t: torch.Tensor, beams: list[list[Hyp]]) -> list[list[Hyp]]:
        flat = [h for b in beams for h in b]
        counts = [len(b) for b in beams]
        logp = self.join(enc_t, counts, [h.slot for h in flat])  # (R, V)
        cand = torch.tensor([h.score for h in flat]).unsqueeze(1) + logp  # (R, V)
        vocab = cand.shape[1]
        out: list[list[Hyp]] = []
        parents, tokens, prefixes, owners = [], [], [], []
        offset = 0
        for count in counts:
            block = cand[offset:offset + count].reshape(-1)
            top_scores, top_idx = block.topk(min(self.beam, block.numel()))
            kept: dict[tuple, Hyp] = {}
            for score, idx in zip(top_scores.tolist(), top_idx.tolist(), strict=True):
                parent = flat[offset + idx // vocab]
                token = idx % vocab
                if token == self.blank:
                    key, slot = parent.tokens, parent.slot
                else:
                    key, slot = parent.tokens + (token,), -1
                old = kept.get(key)
                if old is not None:
                    old.score = log_add(old.score, score)
                    continue
                hyp = Hyp(key, slot, score)
                kept[key] = hyp
                if slot < 0:
                    parents.append(parent.slot)
                    tokens.append(token)
                    prefixes.append(key)
                    owners.append(hyp)
            out.append(list(kept.values()))
            offset += count
        if prefixes:
            for hyp, slot in zip(owners, self.cache.extend(parents, tokens, prefixes), strict=True):
                hyp.slot = slot
        return [sorted(b, key=sort_key, reverse=True) for b in out]
