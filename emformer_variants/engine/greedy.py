"""Fast mode: greedy search, the best symbol per step, batched over streams.

At most ``max_symbols`` symbols per frame per stream (icefall's ``max_sym_per_frame``):
after a symbol, the same frame is joined again with the new predictor output. One joiner
call and at most one predictor call per round serve all streams.

When the joiner and predictor run in the packed kernels, the chunk runs in C++ as modified
beam search with beam 1 (``kernels/modified_search.cpp``); ``fused=False`` keeps this loop.

Shapes: N streams, D joiner width, V symbols.
"""

from __future__ import annotations

import torch

from emformer_variants.engine.base import CachedSearch
from emformer_variants.engine.hyp import Hyp


class GreedySearch(CachedSearch):
    name = "greedy"

    def __init__(self, model: torch.nn.Module, blank: int, beam: int = 1, max_symbols: int = 3,
                 fused: bool = True, **kw):
        super().__init__(model, blank, 1, **kw)
        self.max_symbols = max_symbols
        # Modified beam search with beam 1 is this search (the best pair each round; a symbol
        # joins the frame again, blank ends it): its C++ loop runs the chunk. Its scores add
        # fp32 log-probs to the fp32-rounded score, where this loop adds in double.
        self._fuse("ModifiedSearch", max_symbols, fused)

    def _frame(self, enc_t: torch.Tensor, beams: list[list[Hyp]]) -> list[list[Hyp]]:
        hyps = [b[0] for b in beams]
        active = list(range(len(hyps)))
        for _ in range(self.max_symbols):
            logp = self.join(enc_t if len(hyps) == 1 else enc_t[active], [1] * len(active),
                             [hyps[s].slot for s in active])
            best, token = logp.max(dim=1)
            emit = []
            for s, score, tok in zip(active, best.tolist(), token.tolist(), strict=True):
                if tok == self.blank:  # a new object: callers may keep the old beam
                    hyps[s] = Hyp(hyps[s].tokens, hyps[s].slot, hyps[s].score + score)
                else:
                    emit.append((s, tok, score))
            if not emit:
                break
            keys = [hyps[s].tokens + (tok,) for s, tok, _ in emit]
            slots = self.cache.extend([hyps[s].slot for s, _, _ in emit], [t for _, t, _ in emit], keys)
            for (s, _, score), key, slot in zip(emit, keys, slots, strict=True):
                hyps[s] = Hyp(key, slot, hyps[s].score + score)
            active = [s for s, _, _ in emit]
        return [[h] for h in hyps]
