"""Corpus-level word and character error rates.

Both sides go through :func:`emformer_variants.text_norm.normalize_text` (the one
normaliser) before alignment, so "Forty-two" and "42" score as the same two words.
Rates are fractions (0.123), never percent, and corpus-level: total edits over total
reference words (characters), not a mean of per-utterance rates.
"""

from __future__ import annotations

import jiwer

from emformer_variants.text_norm import normalize_text


def error_rates(refs: list[str], hyps: list[str]) -> dict:
    """Corpus WER and CER of ``hyps`` against ``refs`` (paired by position).

    Utterances whose normalised reference is empty are skipped (no word to score
    against; any rate would divide by zero) and counted in ``skipped_empty_refs``.
    An empty hypothesis is scored normally: every reference word is a deletion.

    Returns a dict with ``wer``, ``cer`` (NaN when nothing is left to score),
    ``ref_words``, ``ref_chars``, ``substitutions``, ``deletions``, ``insertions``
    (word level), ``num_utterances`` (scored) and ``skipped_empty_refs``.
    CER counts spaces between words as characters (jiwer's convention).
    """
    if len(refs) != len(hyps):
        raise ValueError(f"refs and hyps differ in length: {len(refs)} vs {len(hyps)}")
    kept_refs: list[str] = []
    kept_hyps: list[str] = []
    skipped = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        ref_n = normalize_text(ref)
        if not ref_n:
            skipped += 1
            continue
        kept_refs.append(ref_n)
        kept_hyps.append(normalize_text(hyp))

    result = {
        "wer": float("nan"),
        "cer": float("nan"),
        "ref_words": 0,
        "ref_chars": 0,
        "substitutions": 0,
        "deletions": 0,
        "insertions": 0,
        "num_utterances": len(kept_refs),
        "skipped_empty_refs": skipped,
    }
    if not kept_refs:
        return result

    words = jiwer.process_words(kept_refs, kept_hyps)
    chars = jiwer.process_characters(kept_refs, kept_hyps)
    ref_words = words.hits + words.substitutions + words.deletions
    ref_chars = chars.hits + chars.substitutions + chars.deletions
    word_edits = words.substitutions + words.deletions + words.insertions
    char_edits = chars.substitutions + chars.deletions + chars.insertions
    result.update(
        wer=word_edits / ref_words,
        cer=char_edits / ref_chars,
        ref_words=ref_words,
        ref_chars=ref_chars,
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
    )
    return result


def error_rates_by(refs: list[str], hyps: list[str], groups: list[str]) -> dict[str, dict]:
    """Corpus WER/CER within each group (e.g. speaker): ``{group: {wer, cer, ref_words,
    num_utterances}}``, groups in sorted order. Each group is scored like :func:`error_rates`."""
    if not len(refs) == len(hyps) == len(groups):
        raise ValueError(f"refs, hyps and groups differ in length: {len(refs)}, {len(hyps)}, {len(groups)}")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = {}
    for g in sorted(members):
        r = error_rates([refs[i] for i in members[g]], [hyps[i] for i in members[g]])
        out[g] = {k: r[k] for k in ("wer", "cer", "ref_words", "num_utterances")}
    return out
