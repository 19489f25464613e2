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

When the joiner and predictor run in the packed kernels, each chunk runs in one C++ call
(``kernels/modified_search.cpp``, the same beams bit for bit except where the candidates
tie); ``fused=False`` keeps the Python loop below.

The selection is batched over streams (``_select``): each row's ``beam`` best symbols, then
each stream's ``beam`` best of its rows' candidates, two top-k calls per round for all
streams instead of one top-k over ``beam x V`` values per stream (a stream's best ``beam``
pairs are among its rows' best ``beam``, so the pick is the same; ``batched=False`` keeps
the per-stream calls).

Shallow fusion (``lm=``, an ``lm.ngram.NgramLM`` over the same symbols, and ``lm_weight``):
each symbol's candidate score adds ``lm_weight * log P_LM(symbol | hypothesis) + lm_bonus``;
blank adds nothing (the bonus per symbol offsets the LM's pull towards shorter transcripts).
The fusion terms join the joiner's log-probs before the candidates are formed, in the Python
loop as in the C++ search (``kernels/ngram_lm.cpp``: the same probabilities in double).

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
                 batched: bool = True, fused: bool = True, lm=None, lm_weight: float = 0.0,
                 lm_bonus: float = 0.0, **kw):
        super().__init__(model, blank, beam, **kw)
        self.batched = batched  # False: one top-k per stream
        if max_symbols < 1:
            raise ValueError(f"max_symbols={max_symbols}: must be at least 1")
        self.max_symbols = max_symbols
        self.lm = lm if lm is not None and lm_weight else None
        self.lm_weight = float(lm_weight)
        self.lm_bonus = float(lm_bonus)  # added per symbol with the LM: offsets its pull towards deletions
        self._fuse("ModifiedSearch", max_symbols, fused and batched)  # fused=False: the Python loop
        if self.fused is not None and self.lm is not None:
            self.fused.impl.set_lm(self.lm.flat_tables(), self.lm.vocab, self.lm.order, self.lm_weight,
                                   self.lm_bonus)

    def _select(self, cand: torch.Tensor, counts: list[int]) -> list[tuple[list, list, list]]:
        """Each stream's ``beam`` best (hypothesis, symbol) pairs, best first, from ``cand``
        (R, V), the rows of stream i being the next ``counts[i]``: per stream (scores, global
        rows, symbols). Batched: each row's ``beam`` best, then each stream's ``beam`` best of
        its rows' (two top-k calls for all streams)."""
        k = self.beam
        if not self.batched:
            out, offset, vocab = [], 0, cand.shape[1]
            for c in counts:
                scores, idx = cand[offset:offset + c].reshape(-1).topk(min(k, c * vocab))
                idx = idx.tolist()
                out.append((scores.tolist(), [offset + i // vocab for i in idx], [i % vocab for i in idx]))
                offset += c
            return out
        n, rows, kr = len(counts), cand.shape[0], min(k, cand.shape[1])
        row_best, row_tok = cand.topk(kr, dim=1)  # (R, kr), best first
        if rows == n:  # one row per stream
            top, idx = row_best, torch.arange(kr).expand(n, kr)
            row = torch.arange(n).unsqueeze(1).expand(n, kr)
        else:
            width = max(counts)
            sizes = torch.tensor(counts)
            starts = torch.cumsum(sizes, 0) - sizes
            block = torch.full((n, width, kr), -math.inf)
            block[torch.arange(n).repeat_interleave(sizes),
                  torch.arange(rows) - starts.repeat_interleave(sizes)] = row_best
            top, idx = block.view(n, width * kr).topk(min(k, width * kr), dim=1)  # (N, k)
            row = starts.unsqueeze(1) + idx // kr
        tokens = row_tok[row, idx % kr]
        return list(zip(top.tolist(), row.tolist(), tokens.tolist(), strict=True))

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
            if self.lm is not None:
                fusion = self.lm_weight * self.lm.log_probs([h.tokens for h in flat], self.blank)
                if self.lm_bonus:
                    fusion[:, [c for c in range(fusion.shape[1]) if c != self.blank]] += self.lm_bonus
                logp = logp + fusion
            cand = torch.tensor([h.score for h in flat]).unsqueeze(1) + logp  # (R, V)
            nxt: list[list[Hyp]] = [[] for _ in range(n)]
            parents, tokens, pending = [], [], []
            picks = self._select(cand, [counts[s] for s in keep])
            for s, (top_scores, top_rows, top_tokens) in zip(keep, picks, strict=True):
                extended: dict[tuple, Hyp] = {}
                floor = -math.inf  # also drops -inf candidates (and the batched path's padding)
                if rnd and len(ended[s]) >= self.beam:
                    floor = sorted((h.score for h in ended[s].values()), reverse=True)[self.beam - 1]
                for score, row, token in zip(top_scores, top_rows, top_tokens, strict=True):
                    if score <= floor:
                        break
                    parent = flat[row]
                    if token == self.blank:
                        _add(ended[s], Hyp(parent.tokens, parent.slot, score))
                        continue
                    hyp = _add(ended[s] if last else extended, Hyp(parent.tokens + (token,), -1, score))
                    if hyp is not None:
                        parents.append(parent.slot)
                        tokens.append(token)
                        pending.append(hyp)
                nxt[s] = list(extended.values())
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
