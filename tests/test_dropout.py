"""module.dropout: every dropout of the model set for training (nn.Dropout modules and the
attention modules' float probabilities), without touching the stored architecture."""

from __future__ import annotations

import functools

import torch

from emformer_variants.training.module import RNNTModule, set_dropout_
from tests.conftest import make_tiny_rec


def _encode_twice(rec) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    feats, lengths = torch.randn(2, 40, 80), torch.tensor([40, 32])
    rec.model.train()
    with torch.no_grad():
        a, _ = rec.model.transcribe(feats, lengths)
        b, _ = rec.model.transcribe(feats, lengths)
    return a, b


def test_module_dropout_zero_makes_training_forward_deterministic():
    rec = make_tiny_rec(transformer_dropout=0.3, lstm_dropout=0.3)
    a, b = _encode_twice(rec)
    assert not torch.equal(a, b)  # dropout on: two training passes differ
    RNNTModule(rec, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), dropout=0.0)
    a, b = _encode_twice(rec)
    assert torch.equal(a, b)
    assert rec.arch["transformer_dropout"] == 0.3  # a training setting; the architecture keeps its own


def test_set_dropout_reaches_modules_and_attention_probabilities():
    rec = make_tiny_rec(transformer_dropout=0.1, lstm_dropout=0.1)
    count = set_dropout_(rec.model, 0.25)
    dropouts = [m.p for m in rec.model.modules() if isinstance(m, torch.nn.Dropout)]
    attention = [m.dropout for m in rec.model.modules() if isinstance(getattr(m, "dropout", None), float)]
    assert attention and dropouts and count == len(dropouts) + len(attention)
    assert set(dropouts) == set(attention) == {0.25}


def test_module_dropout_null_keeps_the_architecture_value():
    rec = make_tiny_rec(transformer_dropout=0.1)
    RNNTModule(rec, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    assert {m.p for m in rec.model.modules() if isinstance(m, torch.nn.Dropout)} >= {0.1}
