"""Exact mode: torchaudio's ``RNNTBeamSearch`` semantics, batched and cached.

Same algorithm as ``RNNTBeamSearch._search`` (torchaudio 2.11), step for step: per frame,
hypotheses are expanded until no new candidate beats the beam-th best blank-ended
hypothesis (at most ``step_max_tokens`` symbols per frame); blank-ended duplicates merge
by log-add-exp; the frame ends with the top ``beam`` by score / (tokens + 1). The blank
log-prob is the last column, as in torchaudio. Scores are fp32 and every comparison,
sort and top-k runs on the same values in the same order as torchaudio's, so ties break
the same way.

What is faster: one joiner call and one predictor call per expansion round for all
hypotheses of all streams (N streams step in lockstep); predictor outputs cached per
token prefix and shared across hypotheses, frames and streams; MKL-packed weights;
scores kept as Python floats instead of one small tensor op per hypothesis. When the
joiner, the predictor and its recurrent gates all run in the packed kernels, the whole
chunk runs in one C++ call (``kernels/exact_search.cpp``): the same ops on the same rows in
the same order as ``_frame`` below, so the same beams bit for bit, without the
interpreter's cost per hypothesis and per small op. ``fused=False`` keeps the Python loop.

Shapes: N streams, D joiner width, V symbols, R rows in a round.
"""

from __future__ import annotations

import torch

from emformer_variants.engine.base import CachedSearch
from emformer_variants.engine.hyp import Hyp, sort_key


class ExactBeamSearch(CachedSearch):
    name = "exact"

    def __init__(self, model: torch.nn.Module, blank: int, beam: int, step_max_tokens: int = 100,
                 fused: bool = True, **kw):
        super().__init__(model, blank, beam, **kw)
        self.step_max_tokens = step_max_tokens
        self._fuse("ExactSearch", step_max_tokens, fused)  # fused=False: the Python loop

    def _frame(self, enc_t: torch.Tensor, beams: list[list[Hyp]]) -> list[list[Hyp]]:
        n, beam = len(beams), self.beam
        a = list(beams)
        b: list[list[Hyp]] = [[] for _ in range(n)]
        key_to_b: list[dict] = [{} for _ in range(n)]
        symbols = [0] * n
        active = list(range(n))
        while active:
            flat = [h for s in active for h in a[s]]
            logp = self.join(enc_t if n == 1 else enc_t[active], [len(a[s]) for s in active],
                             [h.slot for h in flat])  # (R, V)
            scores = torch.tensor([h.score for h in flat])
            blank_scores = (scores + logp[:, -1]).tolist()
            nonblank = scores.unsqueeze(1) + logp[:, :-1]  # (R, V - 1)
            width = nonblank.shape[1]

            offset = 0
            parents, tokens, prefixes, new_scores, owners = [], [], [], [], []
            for s in active:
                count = len(a[s])
                b[s] = self._merge_blank(b[s], a[s], blank_scores[offset:offset + count], key_to_b[s])
                if symbols[s] != self.step_max_tokens:
                    block = nonblank[offset:offset + count].reshape(-1)
                    top_scores, top_idx = block.topk(min(beam, block.numel()))
                    threshold = -float("inf") if len(b[s]) < beam else b[s][-beam].score
                    for score, idx in zip(top_scores.tolist(), top_idx.tolist(), strict=True):
                        if score > threshold:
                            parent = a[s][idx // width]
                            parents.append(parent.slot)
                            tokens.append(idx % width)
                            prefixes.append(parent.tokens + (idx % width,))
                            new_scores.append(score)
                            owners.append(s)
                a[s] = []
                offset += count
            if prefixes:
                new_slots = self.cache.extend(parents, tokens, prefixes)
                for s, key, slot, score in zip(owners, prefixes, new_slots, new_scores, strict=True):
                    a[s].append(Hyp(key, slot, score))
            still = []
            for s in active:
                if a[s]:
                    symbols[s] += 1
                    still.append(s)
            active = still

        out = []
        for s in range(n):
            _, idx = torch.tensor([sort_key(h) for h in b[s]]).topk(min(beam, len(b[s])))
            out.append([b[s][i] for i in idx.tolist()])
        return out

    @staticmethod
    def _merge_blank(b: list[Hyp], a: list[Hyp], blank_scores: list[float], key_to_b: dict
                     ) -> list[Hyp]:
        """torchaudio's ``_gen_b_hypos``: each ``a`` hypothesis + blank joins ``b``, merging
        with an equal token sequence by log-add-exp (fp32, one scalar op as torchaudio
        does), then ``b`` sorted by score (ascending)."""
        for h_a, blank_score in zip(a, blank_scores, strict=True):
            h_b = key_to_b.get(h_a.tokens)
            if h_b is not None:
                b.remove(h_b)
                blank_score = float(torch.tensor(h_b.score).logaddexp(torch.tensor(blank_score)))
            h_new = Hyp(h_a.tokens, h_a.slot, blank_score)
            b.append(h_new)
            key_to_b[h_a.tokens] = h_new
        _, order = torch.tensor([h.score for h in b]).sort()
        return [b[i] for i in order.tolist()]
