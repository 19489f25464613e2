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

With ``max_symbols=1`` the selection is batched over streams (``_frame_one``): each row's
``beam`` best symbols, then each stream's ``beam`` best of its rows' candidates, two top-k
calls per frame for all streams instead of one top-k over ``beam x V`` values per stream
(a stream's best ``beam`` pairs are among its rows' best ``beam``, so the pick is the same).

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

    def __init__(self, model: torch.nn.Module, blank: int, beam: int, max_symbols: int = 1,
                 batched: bool = True, **kw):
        super().__init__(model, blank, beam, **kw)
        self.batched = batched  # False: the per-stream selection loop (as for K > 1)
        if max_symbols < 1:
            raise ValueError(f"max_symbols={max_symbols}: must be at least 1")
        self.max_symbols = max_symbols

    def _frame_one(self, enc_t: torch.Tensor, beams: list[list[Hyp]]) -> list[list[Hyp]]:
        """icefall's one-symbol frame for all streams: one joiner call, two top-k calls."""
        n, k = len(beams), self.beam
        counts = [len(b) for b in beams]
        flat = [h for b in beams for h in b]
        logp = self.join(enc_t, counts, [h.slot for h in flat])  # (R, V)
        cand = torch.tensor([h.score for h in flat]).unsqueeze(1) + logp  # (R, V)
        kr = min(k, cand.shape[1])
        row_best, row_tok = cand.topk(kr, dim=1)  # (R, kr), best first
        width = max(counts)
        if width == 1 and n == len(flat):
            block = row_best  # (N, kr): one row per stream
        else:
            stream_of = torch.repeat_interleave(torch.arange(n), torch.tensor(counts))
            offsets = [0]
            for c in counts[:-1]:
                offsets.append(offsets[-1] + c)
            pos = torch.arange(len(flat)) - torch.tensor(offsets).repeat_interleave(torch.tensor(counts))
            block = torch.full((n, width, kr), -math.inf)
            block[stream_of, pos] = row_best
            block = block.view(n, width * kr)
        top, idx = block.topk(min(k, block.shape[1]), dim=1)  # (N, k), best first
        if width == 1 and n == len(flat):
            rows = torch.arange(n).unsqueeze(1).expand_as(idx)
        else:
            rows = torch.tensor(offsets).unsqueeze(1) + idx // kr
        tokens = row_tok[rows, idx % kr]
        parents, new_tokens, pending, out = [], [], [], []
        for scores, rs, ts in zip(top.tolist(), rows.tolist(), tokens.tolist(), strict=True):
            ended: dict[tuple, Hyp] = {}
            for score, r, token in zip(scores, rs, ts, strict=True):
                if score == -math.inf:
                    break
                parent = flat[r]
                if token == self.blank:
                    _add(ended, Hyp(parent.tokens, parent.slot, score))
                    continue
                hyp = _add(ended, Hyp(parent.tokens + (token,), -1, score))
                if hyp is not None:
                    parents.append(parent.slot)
                    new_tokens.append(token)
                    pending.append(hyp)
            out.append(ended)
        if pending:
            slots = self.cache.extend(parents, new_tokens, [h.tokens for h in pending])
            for hyp, slot in zip(pending, slots, strict=True):
                hyp.slot = slot
        ranked = (sorted(e.values(), key=lambda h: h.score, reverse=True)[:k] for e in out)
        return [sorted(r, key=sort_key, reverse=True) for r in ranked]

    def _frame(self, enc_t: torch.Tensor, beams: list[list[Hyp]]) -> list[list[Hyp]]:
        if self.max_symbols == 1 and self.batched and all(beams):
            return self._frame_one(enc_t, beams)
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
