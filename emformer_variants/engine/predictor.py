"""Batched one-token steps of torchaudio's RNN-T predictor, and a cache of its outputs.

Shapes: M new prefixes, Q distinct parents, L LSTM layers, H LSTM width, D predictor
output width, V symbols, P cache slots.

torchaudio's ``_CustomLSTM`` computes ``gates = x2g(x) + p2g(h)`` per layer. Both halves
are computed where they are cheapest, in the same order and with the same weights:
- ``x2g`` of the first layer depends on the token alone, so
  ``x2g(input_layer_norm(embedding(v)))`` is tabulated once for all V tokens;
- ``p2g(h)`` depends on the parent prefix alone, so it is computed once per parent (Q rows,
  not M: a beam extends the same parent by several tokens, and again on later frames) and
  kept with the parent's slot.
The predictor is a deterministic function of the token prefix, so outputs and LSTM states
are cached per prefix (``PrefixCache``) and shared by hypotheses, frames and streams.
When every linear after the first layer's table runs in a packed kernel and the norms are
LayerNorms, the per-child step runs in one C++ call (``kernels/predictor_step.cpp``): the same
ops in the same order, so the same bits, without the interpreter's per-op cost. Both take the
cell's tanh from ``engine.linear.tanh`` (the kernels' ``fast_tanh`` where they load).
"""

from __future__ import annotations

import torch

from emformer_variants.engine import packed
from emformer_variants.engine.linear import NO_TENSOR, fast_linear, kernel_args, kernel_impl, plain_norm, tanh


class PredictorStep:
    """torchaudio's ``_Predictor`` + ``_CustomLSTM`` for one token, batched, split as
    ``recurrent_gates(h)`` (per parent) and ``__call__(tokens, pgates, c)`` (per child)."""

    def __init__(self, predictor: torch.nn.Module, fused: bool = True):
        layers = list(predictor.lstm_layers)
        self.x2g = [fast_linear(m.x2g) for m in layers]
        self.p2g = [fast_linear(m.p2g) for m in layers]
        self.g_norm = [m.g_norm for m in layers]
        self.c_norm = [m.c_norm for m in layers]
        self.hidden = layers[0].hidden_dim
        self.num_layers = len(layers)
        self.linear = fast_linear(predictor.linear)
        self.out_norm = predictor.output_layer_norm
        self.out_dim = predictor.output_layer_norm.normalized_shape[0]
        with torch.inference_mode():
            emb = predictor.input_layer_norm(predictor.embedding.weight.detach())
            self.table0 = self.x2g[0](emb).float()  # (V, 4H)
        self.fused = self._fused_args() if fused else None  # None: the Python loop

    def _fused_args(self) -> tuple[list[torch.Tensor], list[float], int] | None:
        """(params, eps, macs per row) for ``predictor_step``, or None if a part does not fit."""
        impls = [kernel_impl(m) for m in self.x2g[1:] + [self.linear]]
        norms = self.g_norm + self.c_norm + [self.out_norm]
        if None in impls or not all(plain_norm(m) for m in norms):
            return None
        params, eps = [], []
        for i in range(self.num_layers):
            x2g = kernel_args(impls[i - 1]) if i else [NO_TENSOR] * 4
            params += [*x2g, self.g_norm[i].weight.detach(), self.g_norm[i].bias.detach(),
                       self.c_norm[i].weight.detach(), self.c_norm[i].bias.detach()]
            eps += [float(self.g_norm[i].eps), float(self.c_norm[i].eps)]
        params += [*kernel_args(impls[-1]), self.out_norm.weight.detach(), self.out_norm.bias.detach()]
        eps.append(float(self.out_norm.eps))
        return params, eps, sum(m.in_features * m.out_features for m in impls)

    def zeros(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(self.num_layers, m, self.hidden), torch.zeros(self.num_layers, m, self.hidden)

    def recurrent_gates(self, h: torch.Tensor) -> torch.Tensor:
        """h (L, Q, H) -> p2g(h) per layer (L, Q, 4H)."""
        return torch.stack([self.p2g[i](h[i]) for i in range(self.num_layers)])

    def __call__(self, tokens: torch.Tensor, pgates: torch.Tensor, c: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens (M,), parents' p2g(h) (L, M, 4H) and cells (L, M, H) -> out (M, D), h', c'."""
        if self.fused is not None:
            params, eps, macs = self.fused
            packed.count_flops(2 * macs * tokens.numel())
            out, h, c = packed.run("predictor_step", tokens, pgates, c, self.table0, params, eps,
                                   self.out_dim)
            return out, h, c
        H = self.hidden
        hs, cs = [], []
        x = None
        for i in range(self.num_layers):
            gates = self.table0.index_select(0, tokens) if i == 0 else self.x2g[i](x)
            gates = self.g_norm[i](gates + pgates[i])
            sig = gates.sigmoid()  # input, forget, output gates (cell quarter uses tanh below)
            c_new = sig[:, H:2 * H] * c[i] + sig[:, :H] * tanh(gates[:, 2 * H:3 * H])
            c_new = self.c_norm[i](c_new)
            x = sig[:, 3 * H:] * tanh(c_new)
            hs.append(x)
            cs.append(c_new)
        out = self.out_norm(self.linear(x))
        return out, torch.stack(hs), torch.stack(cs)


class PrefixCache:
    """Predictor outputs, LSTM states and (lazily) recurrent gates per token prefix, in
    slot tensors with a free list.

    ``extend(parent_slots, tokens, prefixes)`` returns the slots of ``prefixes`` (each =
    its parent's prefix + token), computing the missing ones in one batched step.
    ``release_stale(keep)`` frees prefixes not used in the last ``keep`` ticks.
    """

    def __init__(self, step: PredictorStep, capacity: int = 256):
        self.step = step
        L, H = step.num_layers, step.hidden
        self.out = torch.zeros(capacity, step.out_dim)
        self.h = torch.zeros(L, capacity, H)
        self.c = torch.zeros(L, capacity, H)
        self.pg = torch.zeros(L, capacity, 4 * H)
        self.pg_ready: set[int] = set()
        self.free = list(range(capacity - 1, -1, -1))
        self.slot_of: dict[tuple, int] = {}
        self.last_used: dict[tuple, int] = {}
        self.tick = 0
        self.computed = 0  # prefixes computed (statistics)
        self.hits = 0

    @property
    def capacity(self) -> int:
        return self.out.shape[0]

    def _grow(self, need: int) -> None:
        old = self.capacity
        extra = max(old, need)

        def more(t: torch.Tensor, dim: int) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = extra
            return torch.cat([t, t.new_zeros(shape)], dim)

        self.out = more(self.out, 0)
        self.h, self.c, self.pg = more(self.h, 1), more(self.c, 1), more(self.pg, 1)
        self.free = list(range(old + extra - 1, old - 1, -1)) + self.free

    def _alloc(self, n: int) -> list[int]:
        if len(self.free) < n:
            self._grow(n - len(self.free))
        return [self.free.pop() for _ in range(n)]

    def root(self, blank: int) -> int:
        """Slot of the prefix (blank,) from the zero state: torchaudio's start hypothesis."""
        key = (blank,)
        slot = self.slot_of.get(key)
        if slot is None:
            h, c = self.step.zeros(1)
            out, h, c = self.step(torch.tensor([blank]), self.step.recurrent_gates(h), c)
            [slot] = self._alloc(1)
            self.out[slot], self.h[:, slot], self.c[:, slot] = out[0], h[:, 0], c[:, 0]
            self.slot_of[key] = slot
            self.computed += 1
        self.last_used[key] = self.tick
        return slot

    def _ensure_pgates(self, parents: list[int]) -> None:
        todo = sorted({p for p in parents if p not in self.pg_ready})
        if todo:
            idx = torch.tensor(todo)
            self.pg.index_copy_(1, idx, self.step.recurrent_gates(self.h.index_select(1, idx)))
            self.pg_ready.update(todo)

    def extend(self, parents: list[int], tokens: list[int], prefixes: list[tuple]) -> list[int]:
        """Slots of ``prefixes`` (each = parent's prefix + token); each missing prefix is
        computed once, even when several hypotheses (of several streams) ask for it."""
        tick = self.tick
        todo: dict[tuple, int] = {}  # missing prefix -> index of its first request
        for i, key in enumerate(prefixes):
            self.last_used[key] = tick
            if key not in self.slot_of and key not in todo:
                todo[key] = i
        self.hits += len(prefixes) - len(todo)
        if todo:
            first = list(todo.values())
            par = [parents[i] for i in first]
            self._ensure_pgates(par)
            new = self._alloc(len(first))
            idx = torch.tensor([par, [tokens[i] for i in first], new])
            out, h, c = self.step(idx[1], self.pg.index_select(1, idx[0]), self.c.index_select(1, idx[0]))
            self.out.index_copy_(0, idx[2], out)
            self.h.index_copy_(1, idx[2], h)
            self.c.index_copy_(1, idx[2], c)
            self.slot_of.update(zip(todo, new, strict=True))
            self.computed += len(first)
        return [self.slot_of[key] for key in prefixes]

    def touch(self, prefixes) -> None:
        for key in prefixes:
            self.last_used[key] = self.tick

    def release_stale(self, keep: int) -> None:
        """Free prefixes unused for ``keep`` ticks (touch live ones first), then tick."""
        limit = self.tick - keep
        for key in [k for k, t in self.last_used.items() if t < limit]:
            del self.last_used[key]
            slot = self.slot_of.pop(key)
            self.pg_ready.discard(slot)
            self.free.append(slot)
        self.tick += 1
