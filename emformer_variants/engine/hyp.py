"""A search hypothesis: token prefix (starting with the blank that primes the predictor),
its predictor-cache slot, and its log-probability (an fp32 value held as a Python float)."""

from __future__ import annotations


class Hyp:
    __slots__ = ("tokens", "slot", "score")

    def __init__(self, tokens: tuple, slot: int, score: float):
        self.tokens, self.slot, self.score = tokens, slot, score

    def __repr__(self) -> str:
        return f"Hyp({list(self.tokens)}, {self.score:.4f})"


def sort_key(h: Hyp) -> float:
    """torchaudio's default ranking: score / (number of tokens + 1)."""
    return h.score / (len(h.tokens) + 1)
