"""Our vectorised rnnt_loss against torchaudio.functional.rnnt_loss (the reference)."""

from __future__ import annotations

import pytest
import torch
import torchaudio.functional

from emformer_variants.training.rnnt_loss import rnnt_loss

LOSS_TOL = {"rtol": 1e-5, "atol": 1e-5}
GRAD_TOL = {"rtol": 0.0, "atol": 1e-4}


def make_inputs(batch, frames, labels, vocab, blank=-1, seed=0, scale=1.0):
    """Random (B, T, U+1, V) logits and int32 targets/lengths with padding in T and U.

    The longest lengths fill the tensors, as torchaudio requires; targets avoid blank.
    """
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, labels + 1, vocab, generator=gen) * scale
    targets = torch.randint(0, vocab - 1, (batch, labels), dtype=torch.int32, generator=gen)
    targets[targets >= blank % vocab] += 1
    logit_lengths = torch.randint(1, frames + 1, (batch,), dtype=torch.int32, generator=gen)
    target_lengths = torch.randint(0, labels + 1, (batch,), dtype=torch.int32, generator=gen)
    logit_lengths[0], target_lengths[-1] = frames, labels
    return logits, targets, logit_lengths, target_lengths


def loss_and_grad(loss_fn, logits, *args, **kwargs):
    logits = logits.detach().requires_grad_()
    loss = loss_fn(logits, *args, **kwargs)
    # Weighted so that a per-utterance mix-up of gradients cannot cancel out.
    weights = torch.linspace(0.5, 1.5, loss.numel()).view_as(loss)
    (loss * weights).sum().backward()
    return loss.detach(), logits.grad


def assert_matches_torchaudio(inputs, **kwargs):
    loss, grad = loss_and_grad(rnnt_loss, *inputs, **kwargs)
    ref_loss, ref_grad = loss_and_grad(torchaudio.functional.rnnt_loss, *inputs, **kwargs)
    torch.testing.assert_close(loss, ref_loss, **LOSS_TOL)
    torch.testing.assert_close(grad, ref_grad, **GRAD_TOL)


@pytest.mark.parametrize(
    ("batch", "frames", "labels", "vocab"),
    [(1, 1, 0, 2), (1, 6, 3, 5), (4, 9, 5, 7), (3, 4, 8, 6), (5, 20, 12, 29), (2, 7, 0, 4)],
)
@pytest.mark.parametrize("blank", [-1, 0, "last"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_torchaudio(batch, frames, labels, vocab, blank, reduction):
    blank = vocab - 1 if blank == "last" else blank
    inputs = make_inputs(batch, frames, labels, vocab, blank=blank, seed=batch * 100 + frames)
    assert_matches_torchaudio(inputs, blank=blank, reduction=reduction)


def test_matches_torchaudio_realistic_shape():
    inputs = make_inputs(4, 60, 30, 29, seed=1)
    assert_matches_torchaudio(inputs, reduction="mean")


def test_targets_may_contain_blank():
    logits, targets, logit_lengths, target_lengths = make_inputs(3, 6, 4, 5, seed=2)
    targets[:, 1] = 4  # == blank: label and blank arcs then share one logit
    assert_matches_torchaudio((logits, targets, logit_lengths, target_lengths), blank=-1)


@pytest.mark.parametrize("normalised", [True, False])
def test_unfused_log_softmax_matches_torchaudio(normalised):
    logits, *rest = make_inputs(3, 8, 5, 6, seed=3)
    log_probs = logits.log_softmax(-1) if normalised else logits
    assert_matches_torchaudio((log_probs, *rest), fused_log_softmax=False, reduction="sum")


def test_clamp_matches_torchaudio():
    inputs = make_inputs(4, 10, 6, 8, seed=4, scale=4.0)
    _, grad = loss_and_grad(rnnt_loss, *inputs)
    clamp = 0.5 * grad.abs().max().item() * inputs[0].shape[0]  # binds on the largest entries
    assert_matches_torchaudio(inputs, clamp=clamp, reduction="mean")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input(dtype):
    logits, *rest = make_inputs(3, 8, 5, 6, seed=5)
    logits = logits.to(dtype)
    loss, grad = loss_and_grad(rnnt_loss, logits, *rest, reduction="none")
    assert loss.dtype == grad.dtype == dtype
    # Same as float32 on the rounded logits, up to rounding of the outputs.
    ref_loss, ref_grad = loss_and_grad(
        torchaudio.functional.rnnt_loss, logits.float(), *rest, reduction="none"
    )
    torch.testing.assert_close(loss.float(), ref_loss, rtol=1e-2, atol=0.0)
    torch.testing.assert_close(grad.float(), ref_grad, rtol=0.0, atol=1e-2)


@pytest.mark.parametrize("scale", [1e3, 1e6])
def test_large_logits_stay_finite(scale):
    inputs = make_inputs(4, 12, 7, 9, seed=6, scale=scale)
    loss, grad = loss_and_grad(rnnt_loss, *inputs, reduction="none")
    ref_loss, ref_grad = loss_and_grad(torchaudio.functional.rnnt_loss, *inputs, reduction="none")
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    # Costs ~ 10 * scale: both sides carry float32 rounding of that size (checked in float64).
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0.0)
    if scale <= 1e3:
        torch.testing.assert_close(grad, ref_grad, rtol=0.0, atol=5e-3)


def test_non_finite_padding_is_ignored():
    logits, targets, _, _ = make_inputs(3, 8, 5, 6, seed=7)
    logit_lengths = torch.tensor([8, 3, 6], dtype=torch.int32)
    target_lengths = torch.tensor([2, 1, 5], dtype=torch.int32)
    clean = loss_and_grad(rnnt_loss, logits, targets, logit_lengths, target_lengths)
    dirty = logits.clone()
    for b, (frames_b, labels_b) in enumerate(zip(logit_lengths, target_lengths, strict=True)):
        dirty[b, frames_b:] = float("nan")
        dirty[b, :, labels_b + 1 :] = -float("inf")
    loss, grad = loss_and_grad(rnnt_loss, dirty, targets, logit_lengths, target_lengths)
    torch.testing.assert_close(loss, clean[0])
    torch.testing.assert_close(grad, clean[1])
    assert grad[1, logit_lengths[1] :].eq(0).all()
    assert grad[1, :, target_lengths[1] + 1 :].eq(0).all()


def test_impossible_alignment_costs_inf_with_zero_grad():
    logits, targets, logit_lengths, target_lengths = make_inputs(2, 5, 3, 4, seed=8)
    target_lengths[0] = 3
    logits[0, :, 0, targets[0, 0]] = -float("inf")  # the first label can never be emitted
    loss, grad = loss_and_grad(
        rnnt_loss, logits, targets, logit_lengths, target_lengths, reduction="none"
    )
    assert loss[0] == float("inf") and torch.isfinite(loss[1])
    assert grad[0].eq(0).all() and grad[1].abs().sum() > 0


def test_no_grad_gives_same_costs():
    inputs = make_inputs(3, 8, 5, 6, seed=9)
    with torch.no_grad():
        loss = rnnt_loss(*inputs, reduction="none")
    torch.testing.assert_close(loss, loss_and_grad(rnnt_loss, *inputs, reduction="none")[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reduction": "max"}, "reduction"),
        ({"blank": 6}, "blank"),
        ({"logit_lengths": torch.tensor([9, 1, 1], dtype=torch.int32)}, "logit_lengths"),
        ({"logit_lengths": torch.tensor([0, 1, 1], dtype=torch.int32)}, "logit_lengths"),
        ({"target_lengths": torch.tensor([6, 1, 1], dtype=torch.int32)}, "target_lengths"),
        ({"targets": torch.zeros(3, 4, dtype=torch.int32)}, "targets"),
    ],
)
def test_bad_arguments_raise(change, message):
    logits, targets, logit_lengths, target_lengths = make_inputs(3, 8, 5, 6)
    kwargs = {
        "targets": targets,
        "logit_lengths": logit_lengths,
        "target_lengths": target_lengths,
    } | change
    with pytest.raises(ValueError, match=message):
        rnnt_loss(logits, **kwargs)
