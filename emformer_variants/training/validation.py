"""Hypothesis -> text, and full-context decoding used for validation."""

from __future__ import annotations

import torch
from torchaudio.models import RNNTBeamSearch


def hypothesis_text(tokenizer, hypothesis) -> str:
    """torchaudio hypotheses start with the blank used to prime the predictor: drop it."""
    return tokenizer.decode(hypothesis[0][1:])


def make_beam_search(rec) -> RNNTBeamSearch:
    return RNNTBeamSearch(rec.model, rec.blank)


@torch.no_grad()
def decode_full(rec, features: torch.Tensor, lengths: torch.Tensor, beam: int,
                search: RNNTBeamSearch | None = None) -> list[str]:
    """Full-context beam search per utterance: features (B, T, F) with the right-context
    padding after each utterance, lengths (B,) of valid frames (without that padding)."""
    search = search or make_beam_search(rec)
    rc = rec.features.cfg.right_context_length
    texts = []
    for i in range(features.shape[0]):
        n = int(lengths[i]) + rc
        # The length on the features' device: torchaudio builds the padding mask on it (GPU).
        hyps = search(features[i, :n], torch.tensor([n], device=features.device), beam)
        texts.append(hypothesis_text(rec.tokenizer, hyps[0]))
    return texts
