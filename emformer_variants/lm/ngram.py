"""A token n-gram language model for shallow fusion: interpolated Witten-Bell, in numpy arrays.

Tokens are the recognizer's symbol ids ``0..V-1``; id ``V`` (the blank, which starts every
search hypothesis) doubles as the sentence start: each training sentence is padded on the left
with ``order - 1`` of them, so every context has full length. Per order k, the model keeps the
sorted keys of the k-grams seen (base ``V + 1`` digits, oldest first) with their counts, and per
context the total count and the number of distinct next tokens. Witten-Bell interpolation:

    P_k(c | h) = (C(h c) + N1(h) P_{k-1}(c | h')) / (T(h) + N1(h)),   P_0(c) = 1 / V,

with ``h'`` the context without its oldest token, ``T(h)`` the count of ``h`` as a context and
``N1(h)`` its distinct continuations; an unseen context passes ``P_{k-1}`` through. Lookups are
``np.searchsorted`` over all hypotheses and symbols at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from emformer_variants.errors import UserError

FORMAT = "emformer-variants-ngram-v1"


class NgramLM:
    def __init__(self, vocab: int, order: int, tables: list[dict[str, np.ndarray]], meta: dict | None = None):
        self.vocab, self.order, self.tables, self.meta = vocab, order, tables, meta or {}
        self.base = vocab + 1
        self._syms = np.arange(vocab, dtype=np.int64)

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def build(cls, sentences: Iterable[list[int]], vocab: int, order: int, min_count: int = 1,
              meta: dict | None = None) -> NgramLM:
        """Count ``sentences`` (lists of symbol ids in ``0..vocab-1``). ``min_count`` drops rarer
        k-grams of orders 3 and up (the context statistics are taken after the drop)."""
        if order < 1:
            raise UserError(f"order={order}: must be at least 1")
        bos, base = vocab, vocab + 1
        if base ** order >= 2 ** 62:
            raise UserError(f"order={order}: too high for {vocab} symbols (keys overflow int64)")
        chunks, targets = [], []
        for ids in sentences:
            if not ids:
                continue
            arr = np.asarray(ids, dtype=np.int64)
            if arr.min() < 0 or arr.max() >= vocab:
                raise UserError(f"a sentence holds symbol ids outside 0..{vocab - 1}")
            chunks.append(np.full(order - 1, bos, dtype=np.int64))
            chunks.append(arr)
            mask = np.zeros(order - 1 + len(arr), dtype=bool)
            mask[order - 1:] = True
            targets.append(mask)
        if not chunks:
            raise UserError("no text to count: the language model needs at least one sentence")
        stream = np.concatenate(chunks)
        where = np.flatnonzero(np.concatenate(targets))  # positions of predicted tokens
        tables = []
        key = np.zeros(len(where), dtype=np.int64)
        for k in range(1, order + 1):
            # key of the k-gram ending at each target: prepend the token k-1 places back
            key = key + stream[where - (k - 1)] * base ** (k - 1)
            keys, counts = np.unique(key, return_counts=True)
            if k >= 3 and min_count > 1:
                keep = counts >= min_count
                keys, counts = keys[keep], counts[keep]
            ctx, first = np.unique(keys // base, return_index=True)
            totals = np.add.reduceat(counts, first) if len(keys) else counts
            distinct = np.diff(np.append(first, len(keys)))
            tables.append({"keys": keys, "counts": counts.astype(np.int64), "ctx": ctx,
                           "totals": totals.astype(np.int64), "distinct": distinct.astype(np.int64)})
        return cls(vocab, order, tables, meta)

    # -- storage ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{name}{k}": t[name] for k, t in enumerate(self.tables) for name in t}
        header = json.dumps({"format": FORMAT, "vocab": self.vocab, "order": self.order, "meta": self.meta})
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, header=np.frombuffer(header.encode(), dtype=np.uint8), **arrays)
        tmp.replace(path)  # a crash leaves no half-written model under the real name

    @classmethod
    def load(cls, path: str | Path) -> NgramLM:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"lm={path}: no such file; build one with python -m emformer_variants.lm.build")
        try:
            with np.load(path) as z:
                header = json.loads(bytes(z["header"]).decode())
                if header.get("format") != FORMAT:
                    raise ValueError("format")
                tables = [{name: z[f"{name}{k}"] for name in ("keys", "counts", "ctx", "totals", "distinct")}
                          for k in range(header["order"])]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"lm={path}: not a language model of this package ({type(e).__name__}); "
                            "rebuild it with python -m emformer_variants.lm.build") from None
        return cls(header["vocab"], header["order"], tables, header.get("meta"))

    def flat_tables(self) -> list[torch.Tensor]:
        """The tables as the C++ search takes them (``kernels/ngram_lm.h``): per order, keys,
        counts, ctx, totals, distinct (int64 tensors)."""
        return [torch.from_numpy(np.ascontiguousarray(t[name], dtype=np.int64)) for t in self.tables
                for name in ("keys", "counts", "ctx", "totals", "distinct")]

    # -- scoring -----------------------------------------------------------------------------
    def _lookup(self, sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
        if not len(sorted_keys):
            return np.zeros(query.shape, dtype=np.int64)
        idx = np.minimum(np.searchsorted(sorted_keys, query), len(sorted_keys) - 1)
        return np.where(sorted_keys[idx] == query, values[idx], 0)

    def probs(self, histories: list[tuple[int, ...]]) -> np.ndarray:
        """(R, V) next-symbol probabilities after each history (symbol ids; the blank is the
        sentence start and is skipped inside a history)."""
        n, base, vocab = self.order, self.base, self.vocab
        ctx_tokens = np.full((len(histories), max(n - 1, 0)), vocab, dtype=np.int64)
        for r, h in enumerate(histories):
            last = [t for t in h if t != vocab][-(n - 1):] if n > 1 else []
            if last:
                ctx_tokens[r, n - 1 - len(last):] = last
        p = np.full((len(histories), vocab), 1.0 / vocab)
        ctx = np.zeros(len(histories), dtype=np.int64)
        for k in range(1, n + 1):
            t = self.tables[k - 1]
            if k > 1:  # context of order k: one more token back
                ctx = ctx + ctx_tokens[:, n - k] * base ** (k - 2)
            total = self._lookup(t["ctx"], t["totals"], ctx).astype(np.float64)
            distinct = self._lookup(t["ctx"], t["distinct"], ctx).astype(np.float64)
            count = self._lookup(t["keys"], t["counts"], ctx[:, None] * base + self._syms[None, :])
            seen = total > 0
            mixed = (count + distinct[:, None] * p) / np.maximum(total + distinct, 1)[:, None]
            p = np.where(seen[:, None], mixed, p)
        return p

    def log_probs(self, histories: list[tuple[int, ...]], blank: int | None = None) -> torch.Tensor:
        """(R, V + 1) fp32 log-probabilities for a joiner's columns: the symbols, and 0 for the
        blank column (``blank``, default ``V``): blank emits nothing, so the LM does not score it."""
        lp = np.log(self.probs(histories))
        out = torch.zeros(len(histories), self.vocab + 1)
        blank = self.vocab if blank is None else blank
        cols = [c for c in range(self.vocab + 1) if c != blank]
        out[:, cols] = torch.from_numpy(lp).float()
        return out

    def sentence_logprob(self, ids: list[int]) -> float:
        """log P of ``ids`` after the sentence start (for tests and perplexity)."""
        hist: tuple[int, ...] = (self.vocab,)
        total = 0.0
        for t in ids:
            total += float(np.log(self.probs([hist])[0, t]))
            hist = hist + (t,)
        return total
