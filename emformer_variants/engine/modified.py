"""Fast mode: "modified beam search" (k2-fsa/icefall), generalised to K symbols per frame.

Per round, one joiner call scores every (hypothesis, symbol) pair of every stream, and
each stream keeps its ``beam`` best pairs over blank and symbols together: blank ends the
hypothesis' frame (it joins the next frame's beam), a symbol extends it. Equal token
sequences merge by log-add-exp. With ``max_symbols=1`` (icefall's algorithm) a symbol
also moves to the next frame, so at most one symbol is emitted per frame. With K > 1 the
extended hypotheses are scored again on the same frame, up to K rounds; symbols picked in
the last round move on as in icefall. One predictor call (cache misses only) per round
serves all streams, so a frame costs at most K joiner and K predictor calls, where
torchaudio's search runs a data-dependent number of rounds over a growing candidate set.
Output ranking: torchaudio's score / (tokens + 1).

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


def _add(table: dict, hyp: Hyp) -> Hyp | None:
    """Insert or merge into ``table``; returns the hypothesis if it is new."""
    old = table.get(hyp.tokens)
    if old is not None:
        old.score = log_add(old.score, hyp.score)
        return None
    table[hyp.tokens] = hyp
    return hyp


class ModifiedBeamSearch(CachedSearch):
    name = "modified"

    def __init__(self, model: torch.nn.Module, blank: int, beam: int, max_symbols: int = 1, **kw):
        super().__init__(model, blank, beam, **kw)
        if max_symbols < 1:
            raise ValueError(f"max_symbols={max_symbols}: must be at least 1")
        self.max_symbols = max_symbols

    def _frame(self, enc_t: torch.Tensor, beams: list[list[Hyp]]) -> list[list[Hyp]]:
        n = len(beams)
        ended: list[dict] = [{} for _ in range(n)]  # next frame's candidates, by tokens
        current = beams
        for rnd in range(self.max_symbols):
            last = rnd == self.max_symbols - 1
            counts = [len(b) for b in current]
            flat = [h for b in current for h in b]
            if not flat:
                break
            keep = [s for s in range(n) if counts[s]]
            logp = self.join(enc_t if n == 1 else enc_t[keep], [counts[s] for s in keep],
                             [h.slot for h in flat])  # (R, V)
            cand = torch.tensor([h.score for h in flat]).unsqueeze(1) + logp  # (R, V)
            vocab = cand.shape[1]
            nxt: list[list[Hyp]] = [[] for _ in range(n)]
            parents, tokens, pending = [], [], []
            offset = 0
            for s in keep:
                block = cand[offset:offset + counts[s]].reshape(-1)
                top_scores, top_idx = block.topk(min(self.beam, block.numel()))
                extended: dict[tuple, Hyp] = {}
                floor = -math.inf
                if rnd and len(ended[s]) >= self.beam:
                    floor = sorted((h.score for h in ended[s].values()), reverse=True)[self.beam - 1]
                for score, idx in zip(top_scores.tolist(), top_idx.tolist(), strict=True):
                    if score <= floor:
                        break
                    parent = flat[offset + idx // vocab]
                    token = idx % vocab
                    if token == self.blank:
                        _add(ended[s], Hyp(parent.tokens, parent.slot, score))
                        continue
                    hyp = _add(ended[s] if last else extended, Hyp(parent.tokens + (token,), -1, score))
                    if hyp is not None:
                        parents.append(parent.slot)
                        tokens.append(token)
                        pending.append(hyp)
                nxt[s] = list(extended.values())
                offset += counts[s]
            if pending:
                slots = self.cache.extend(parents, tokens, [h.tokens for h in pending])
                for hyp, slot in zip(pending, slots, strict=True):
                    hyp.slot = slot
            current = nxt
        out = []
        for s in range(n):
            ranked = sorted(ended[s].values(), key=lambda h: h.score, reverse=True)[:self.beam]
            out.append(sorted(ranked, key=sort_key, reverse=True))
        return out
