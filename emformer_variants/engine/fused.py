"""A search's chunk in one C++ call: exact mode (``kernels/exact_search.cpp``) and modified /
greedy mode (``kernels/modified_search.cpp``) on one prefix cache in C++.

Its prefix cache lives in C++; a ``Hyp.slot`` here is the prefix's handle, a number never
reused, so a stale beam is rejected. ``slot_of``, ``free``, ``capacity``, ``computed`` and
``hits`` read the cache as ``PrefixCache``'s attributes do.
"""

from __future__ import annotations

import torch

from emformer_variants.engine import packed
from emformer_variants.engine.base import STALE
from emformer_variants.engine.hyp import Hyp
from emformer_variants.engine.linear import kernel_args, kernel_impl

LABELS = {"ExactSearch": "exact_search", "ModifiedSearch": "modified_search"}


class FusedSearch:
    def __init__(self, impl, blank: int, flops: tuple[int, int, int], label: str):
        self.impl, self.blank, self.label = impl, blank, label
        self.flops = flops  # per joiner row, predictor row, recurrent-gate row (one layer)

    @classmethod
    def build(cls, search, kind: str, limit: int) -> FusedSearch | None:
        """``kind`` (ExactSearch, ModifiedSearch) for ``search`` (a ``CachedSearch``), with
        ``limit`` its symbols per frame (exact: step_max_tokens; modified: max_symbols). None
        unless the joiner, predictor step and recurrent gates all run in kernels and the
        joiner's activation is ReLU or tanh."""
        pred = search.predictor
        gates = [kernel_impl(m) for m in pred.p2g]
        joiner = kernel_impl(search.joiner.linear)
        act = {torch.nn.ReLU: 0, torch.nn.Tanh: 1}.get(type(search.joiner.activation))
        if pred.fused is None or None in gates or joiner is None or act is None:
            return None
        params, eps, macs = pred.fused
        impl = getattr(packed.kernel(), kind)(
            pred.table0, params, eps, pred.out_dim, [t for g in gates for t in kernel_args(g)],
            kernel_args(joiner), joiner.out_features, act, float(search.joiner.temperature),
            search.blank, search.beam, limit, 256)
        flops = (2 * joiner.in_features * joiner.out_features, 2 * macs,
                 2 * gates[0].in_features * gates[0].out_features)
        return cls(impl, search.blank, flops, LABELS[kind])

    def step(self, enc: torch.Tensor, beams: list, keep: int) -> list[list[Hyp]]:
        rows = self._rows()
        beams = [[Hyp((self.blank,), self.impl.root(), 0.0)] if b is None else b for b in beams]
        flat = [h for b in beams for h in b]
        handles = [h.slot for h in flat]
        if not self.impl.live(handles):
            raise ValueError(STALE)
        out = packed.call(self.impl.step, enc, handles, [h.score for h in flat], [len(b) for b in beams],
                          keep, label=self.label)
        packed.count_flops(sum(f * (b - a) for f, a, b in zip(self.flops, rows, self._rows(), strict=True)))
        return [[Hyp(flat[origin].tokens + tuple(added), handle, score)
                 for origin, handle, score, added in stream] for stream in out]

    def _rows(self) -> tuple[int, int, int]:
        return self.impl.joiner_rows, self.impl.predictor_rows, self.impl.gate_rows

    @property
    def slot_of(self) -> dict[tuple, int]:
        return {tuple(tokens): handle for tokens, handle in self.impl.prefixes()}

    @property
    def free(self) -> list[int]:
        return self.impl.free_slots()

    @property
    def capacity(self) -> int:
        return self.impl.capacity()

    @property
    def computed(self) -> int:
        return self.impl.computed

    @property
    def hits(self) -> int:
        return self.impl.hits
