"""Bootstrap intervals on cases whose answer can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from emformer_variants.metrics.bootstrap import (
    paired_delta_interval,
    utterance_errors,
    wer_interval,
)


def test_two_utterances_give_the_binomial_interval():
    """Two one-word utterances, one wrong: a replicate draws the wrong one 0, 1 or 2 times
    (probability 1/4, 1/2, 1/4), so its WER is 0, 0.5 or 1 and the 95% interval is [0, 1]."""
    ci = wer_interval([1, 0], [1, 1], replicates=20000, seed=1)
    assert ci.value == 0.5 and (ci.low, ci.high) == (0.0, 1.0)
    # the 40% interval (30th to 70th percentile) is the middle outcome alone
    mid = wer_interval([1, 0], [1, 1], level=0.4, replicates=20000, seed=1)
    assert (mid.low, mid.high) == (0.5, 0.5)


def test_identical_utterances_have_no_spread():
    ci = wer_interval([2] * 30, [10] * 30)
    assert (ci.value, ci.low, ci.high) == (0.2, 0.2, 0.2) and not ci.excludes(0.2)


def test_paired_delta_of_a_constant_shift_is_exact_and_real():
    """System b makes one more error on every 10-word utterance: the difference is 0.1 in
    every replicate, whatever the utterances' own spread, so its interval is [0.1, 0.1]."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 10, size=50)
    ci = paired_delta_interval(a, a + 1, np.full(50, 10))
    assert ci.value == pytest.approx(0.1) and ci.low == pytest.approx(0.1) and ci.high == pytest.approx(0.1)
    assert ci.excludes(0.0)
    # unpaired, the two WERs' own intervals overlap: pairing is what makes it real
    ia, ib = wer_interval(a, np.full(50, 10)), wer_interval(a + 1, np.full(50, 10), seed=5)
    assert ia.high > ib.low


def test_no_difference_is_not_real():
    a = np.array([0, 1, 2, 0, 1] * 20)
    b = np.array([1, 0, 2, 1, 0] * 20)  # same total, errors moved around
    ci = paired_delta_interval(a, b, np.full(100, 5))
    assert ci.value == 0.0 and ci.low < 0 < ci.high and not ci.excludes(0.0)


def test_utterance_errors_use_the_normaliser():
    edits, words = utterance_errors(["Forty-two apples", "a b c", ""], ["42 apples", "a x", "noise"])
    assert edits.tolist() == [0, 2, 1] and words.tolist() == [3, 3, 0]


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        wer_interval([1, 2], [1])
    with pytest.raises(ValueError):
        paired_delta_interval([1], [1, 2], [1])
