"""Bootstrap confidence intervals for corpus WER, and for a WER difference on the same audio.

Utterances are the resampling unit (Bisani & Ney 2004, "Bootstrap estimates for confidence
intervals in ASR performance evaluation"): each replicate draws as many utterances as
there are, with replacement, and recomputes the corpus WER (total edits / total reference
words) of the draw. The 95% interval is the 2.5th and 97.5th percentile of the replicates.
For two systems on the same utterances the *paired* bootstrap draws one set of
utterance indices per replicate for both, so the interval of the difference excludes the
between-utterance variance that both share; a difference whose interval excludes 0 is
called real.

Pure functions on per-utterance counts (numpy); ``utterance_errors`` gets those counts
from reference/hypothesis text with the project's normaliser.
"""

from __future__ import annotations

from dataclasses import dataclass

import jiwer
import numpy as np

from emformer_variants.text_norm import normalize_text

DEFAULT_REPLICATES = 2000


@dataclass(frozen=True)
class Interval:
    value: float  # on all utterances
    low: float
    high: float

    def excludes(self, x: float = 0.0) -> bool:
        return not self.low <= x <= self.high


def utterance_errors(refs: list[str], hyps: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(word edits, reference words) per utterance, both (N,) int arrays, after normalising.
    An utterance with an empty reference has 0 words and counts its insertions."""
    if len(refs) != len(hyps):
        raise ValueError(f"refs and hyps differ in length: {len(refs)} vs {len(hyps)}")
    edits, words = np.zeros(len(refs), np.int64), np.zeros(len(refs), np.int64)
    for i, (ref, hyp) in enumerate(zip(refs, hyps, strict=True)):
        r, h = normalize_text(ref), normalize_text(hyp)
        if not r:
            edits[i] = len(h.split())
            continue
        out = jiwer.process_words(r, h)
        edits[i] = out.substitutions + out.deletions + out.insertions
        words[i] = out.hits + out.substitutions + out.deletions
    return edits, words


def _draws(n: int, replicates: int, seed: int) -> np.ndarray:
    """(replicates, n) utterance indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(replicates, n))


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def wer_interval(edits, words, *, level: float = 0.95, replicates: int = DEFAULT_REPLICATES,
                 seed: int = 0) -> Interval:
    """Corpus WER with its bootstrap interval; ``edits``/``words`` are per-utterance counts."""
    edits, words = np.asarray(edits, np.float64), np.asarray(words, np.float64)
    if edits.shape != words.shape or edits.ndim != 1 or edits.size == 0:
        raise ValueError("edits and words must be equal-length, non-empty 1-D arrays")
    idx = _draws(edits.size, replicates, seed)
    samples = edits[idx].sum(1) / np.maximum(words[idx].sum(1), 1)
    return Interval(float(edits.sum() / max(words.sum(), 1)), *_percentiles(samples, level))


def paired_delta_interval(edits_a, edits_b, words, *, level: float = 0.95,
                          replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> Interval:
    """WER(b) - WER(a) on the same utterances (same ``words``), with its paired bootstrap interval."""
    a, b = np.asarray(edits_a, np.float64), np.asarray(edits_b, np.float64)
    words = np.asarray(words, np.float64)
    if not a.shape == b.shape == words.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("edits_a, edits_b and words must be equal-length, non-empty 1-D arrays")
    idx = _draws(a.size, replicates, seed)
    total = np.maximum(words[idx].sum(1), 1)
    samples = (b[idx].sum(1) - a[idx].sum(1)) / total
    return Interval(float((b.sum() - a.sum()) / max(words.sum(), 1)), *_percentiles(samples, level))
