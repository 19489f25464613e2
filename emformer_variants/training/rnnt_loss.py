"""RNN-T loss (Graves 2012, arXiv:1211.3711) in vectorised PyTorch, a drop-in for
``torchaudio.functional.rnnt_loss``.

torchaudio's CPU kernel walks the (T, U+1) lattice cell by cell for each utterance. Here
the alpha and beta recursions run over anti-diagonals ``d = t + u`` of a skewed lattice:
every cell on a diagonal depends only on the previous one, so one step is three
element-wise ops over all (B, U+1) cells, and there are only T + U steps. Like torchaudio,
the gradient w.r.t. the logits is computed in the forward pass (from alpha and beta, eq. 16
of the paper, fused with the log-softmax backward) and scaled by the incoming gradient in
backward, which makes ``clamp`` free.

Padding and impossible transitions use a large finite negative log-probability instead of
-inf, so ``logaddexp`` never sees ``-inf - -inf`` and no NaN can leak from padded cells.

Shapes: B batch, T frames, U target length, V vocab, D = T + U diagonals.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# exp(_NEG - x) is 0 for any real log-probability; sums of a few thousand stay finite in
# float32 (max ~3.4e38), unlike -inf, whose differences are NaN.
_NEG = -1e30
# exp() of inputs below about -87.3 (float32 denormals and underflow) is many times slower.
_EXP_MIN = -87.0
# A cost above this means no alignment has finite probability.
_INFEASIBLE = 1e29


def rnnt_loss(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = -1,
    clamp: float = -1,
    reduction: str = "mean",
    fused_log_softmax: bool = True,
) -> Tensor:
    """RNN-T loss with the semantics of ``torchaudio.functional.rnnt_loss``.

    Args:
        logits: (B, T, U+1, V) joiner output, float32/float16/bfloat16; the recursion runs in
            float32 whatever the input dtype.
        targets: (B, U) int label ids; entries at and past ``target_lengths`` are ignored.
        logit_lengths: (B,) int frames per utterance, 1 <= T_b <= T.
        target_lengths: (B,) int labels per utterance, 0 <= U_b <= U.
        blank: blank id; negative counts from the end (-1 is the last class).
        clamp: if > 0, clamp each element of the per-utterance gradient w.r.t. ``logits`` to
            [-clamp, clamp] (before the reduction scales it), as torchaudio does.
        reduction: ``"none"`` -> (B,) costs, ``"mean"`` -> their mean, ``"sum"`` -> their sum.
        fused_log_softmax: if False, ``logits`` are used as log-probabilities as given (call
            ``log_softmax`` yourself; the gradient is then w.r.t. those log-probabilities).

    Returns:
        (B,) costs ``-log P(y_b | x_b)`` for ``reduction="none"``, else a scalar; dtype of
        ``logits``. An utterance with no alignment of finite probability (e.g. a needed
        label's logit is -inf) gets cost +inf and a zero gradient (torchaudio returns NaN).
    """
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f'reduction should be "none", "mean" or "sum", got {reduction!r}')
    _check_shapes(logits, targets, logit_lengths, target_lengths)
    num_classes = logits.shape[-1]
    if not -num_classes <= blank < num_classes:
        raise ValueError(f"blank={blank} is out of range for {num_classes} classes")
    blank %= num_classes

    if torch.is_grad_enabled() and logits.requires_grad:
        costs = _RNNTLossFunction.apply(
            logits, targets, logit_lengths, target_lengths, blank, clamp, fused_log_softmax
        )
    else:
        costs, _ = _costs_and_grads(
            logits,
            targets,
            logit_lengths,
            target_lengths,
            blank,
            clamp,
            fused_log_softmax,
            need_grads=False,
        )
    if reduction == "mean":
        return costs.mean()
    if reduction == "sum":
        return costs.sum()
    return costs


class _RNNTLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, logit_lengths, target_lengths, blank, clamp, fused):
        costs, grads = _costs_and_grads(
            logits, targets, logit_lengths, target_lengths, blank, clamp, fused, need_grads=True
        )
        ctx.save_for_backward(grads)
        return costs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_costs):
        (grads,) = ctx.saved_tensors
        grad_logits = grads * grad_costs.to(grads.dtype).view(-1, 1, 1, 1)
        return grad_logits, None, None, None, None, None, None


def _check_shapes(logits, targets, logit_lengths, target_lengths) -> None:
    if logits.dim() != 4 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float (B, T, U+1, V) tensor, got {tuple(logits.shape)}")
    batch, frames, labels_plus_one, _ = logits.shape
    if targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"targets must be an integer tensor, got {targets.dtype}")
    if targets.shape != (batch, labels_plus_one - 1):
        raise ValueError(
            f"targets must be (B, U) = {(batch, labels_plus_one - 1)} to match logits "
            f"{tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    for name, lengths, low, high in (
        ("logit_lengths", logit_lengths, 1, frames),
        ("target_lengths", target_lengths, 0, labels_plus_one - 1),
    ):
        if lengths.shape != (batch,):
            raise ValueError(f"{name} must be ({batch},), got {tuple(lengths.shape)}")
        if batch and not bool(((lengths >= low) & (lengths <= high)).all()):
            raise ValueError(f"{name} must lie in [{low}, {high}], got {lengths.tolist()}")


def _exp(x: Tensor) -> Tensor:
    """In-place exp that maps inputs below _EXP_MIN to exactly 0 without the slow path."""
    underflow = x < _EXP_MIN
    return x.clamp_(min=_EXP_MIN).exp_().masked_fill_(underflow, 0.0)


def _skew_index(frames: int, cols: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(D, cols) frame index ``t = d - u`` of cell (d, u) clamped into range, and its mask."""
    diag = torch.arange(frames + cols - 1, device=device)[:, None]
    frame = diag - torch.arange(cols, device=device)
    valid = (frame >= 0) & (frame < frames)
    return frame.clamp(0, frames - 1), valid


def _skew(lattice: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """(B, T, U+1) -> (D, B, U+1) with ``out[t + u, b, u] = lattice[b, t, u]``, _NEG elsewhere."""
    batch = lattice.shape[0]
    skewed = lattice.gather(1, index.expand(batch, -1, -1))
    return skewed.masked_fill_(~valid, _NEG).transpose(0, 1).contiguous()


def _unskew(skewed: Tensor, frames: int) -> Tensor:
    """(D, B, U+1) -> (B, T, U+1), the inverse of ``_skew`` on valid cells."""
    _, batch, cols = skewed.shape
    diag = torch.arange(frames, device=skewed.device)[:, None] + torch.arange(
        cols, device=skewed.device
    )
    return skewed.transpose(0, 1).gather(1, diag.expand(batch, -1, -1))


@torch.no_grad()
def _costs_and_grads(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
    clamp: float,
    fused: bool,
    need_grads: bool,
) -> tuple[Tensor, Tensor | None]:
    """(B,) costs and, if ``need_grads``, (B, T, U+1, V) d cost_b / d logits[b]."""
    batch, frames, cols, _ = logits.shape
    device = logits.device
    logit_lengths = logit_lengths.to(device, torch.long)
    target_lengths = target_lengths.to(device, torch.long)

    # Log-probs, float32 whatever the input dtype. With fused=False the user's tensor must
    # not be modified, so it is only read.
    log_probs = logits.float().log_softmax(-1) if fused else logits.float()

    # Blank and label log-probs of every cell, (B, T, U+1); cells outside the utterance
    # (t >= T_b, u > U_b; no label at u = U_b) become _NEG, and -inf entries too.
    frame_ok = torch.arange(frames, device=device)[:, None] < logit_lengths[:, None, None]
    pos = torch.arange(cols, device=device)
    label_ok = pos < target_lengths[:, None]  # (B, U+1)
    labels = torch.zeros(batch, cols, dtype=torch.long, device=device)
    labels[:, :-1] = targets
    labels = labels.masked_fill_(~label_ok, 0)[:, None, :, None].expand(-1, frames, -1, 1)
    blank_lp = log_probs[..., blank]
    blank_lp = blank_lp.masked_fill(~(frame_ok & (pos <= target_lengths[:, None])[:, None]), _NEG)
    label_lp = log_probs.gather(3, labels).squeeze(3)
    label_lp = label_lp.masked_fill_(~(frame_ok & label_ok[:, None]), _NEG)
    blank_lp.clamp_(min=_NEG)
    label_lp.clamp_(min=_NEG)

    index, valid = _skew_index(frames, cols, device)
    blank_d = _skew(blank_lp, index, valid)  # (D, B, U+1)
    label_d = _skew(label_lp, index, valid)
    diags = blank_d.shape[0]

    # alpha[d, b, 1 + u] = log-prob of reaching cell (t = d - u, u); column 0 stays _NEG so
    # that the label move u - 1 -> u is a plain shifted view.
    alpha = torch.full((diags, batch, cols + 1), _NEG, device=device)
    alpha[0, :, 1] = 0.0
    label_shift = torch.nn.functional.pad(label_d, (1, 0), value=_NEG)[:, :, :-1]
    # Views made once: indexing inside the loop costs more than the arithmetic.
    blank_rows, label_rows, shift_rows = blank_d.unbind(0), label_d.unbind(0), label_shift.unbind(0)
    stay = torch.empty(batch, cols, device=device)
    move = torch.empty(batch, cols, device=device)
    alpha_here, alpha_left = alpha[:, :, 1:].unbind(0), alpha[:, :, :-1].unbind(0)
    for d in range(1, diags):
        torch.add(alpha_here[d - 1], blank_rows[d - 1], out=stay)
        torch.add(alpha_left[d - 1], shift_rows[d - 1], out=move)
        torch.logaddexp(stay, move, out=alpha_here[d])

    rows = torch.arange(batch, device=device)
    last_frame = logit_lengths - 1
    end_diag = last_frame + target_lengths
    log_prob = (
        alpha[end_diag, rows, target_lengths + 1] + blank_lp[rows, last_frame, target_lengths]
    )
    infeasible = log_prob < -_INFEASIBLE
    costs = (-log_prob).masked_fill_(infeasible, float("inf")).to(logits.dtype)
    if not need_grads:
        return costs, None

    # beta[d, b, u] = log-prob of finishing from cell (d - u, u); column U+1 stays _NEG for
    # the label move u -> u + 1. The final blank leaves (T_b - 1, U_b) for the virtual cell
    # (T_b, U_b) on diagonal T_b + U_b, whose beta is 0; padded cells stay near _NEG.
    beta = torch.full((diags + 1, batch, cols + 1), _NEG, device=device)
    finals: dict[int, list[int]] = {}
    for b, d in enumerate((end_diag + 1).tolist()):
        finals.setdefault(d, []).append(b)
    beta_here, beta_right = beta[:, :, :-1].unbind(0), beta[:, :, 1:].unbind(0)
    for d in range(diags, 0, -1):
        if d in finals:
            ends = torch.tensor(finals[d], device=device)
            beta[d, ends, target_lengths[ends]] = 0.0
        torch.add(beta_here[d], blank_rows[d - 1], out=stay)
        torch.add(beta_right[d], label_rows[d - 1], out=move)
        torch.logaddexp(stay, move, out=beta_here[d - 1])

    # d cost / d log-prob of an arc = -(posterior probability of using that arc), eq. 16.
    log_norm = log_prob.masked_fill(infeasible, 0.0)[:, None]
    reach = alpha[:, :, 1:] - log_norm
    grad_blank = _unskew(_exp(reach + blank_d + beta[1:, :, :-1]).neg_(), frames)
    grad_label = _unskew(_exp(reach + label_d + beta[1:, :, 1:]).neg_(), frames)
    grad_blank[infeasible] = 0.0
    grad_label[infeasible] = 0.0

    if fused:
        # Through log_softmax: g_v - softmax_v * sum_k g_k, built in the log-probs buffer.
        # Probabilities below exp(_EXP_MIN) ~ 1.6e-38 are rounded up to it: exp of smaller
        # inputs takes a slow path.
        grads = log_probs.clamp_(min=_EXP_MIN).exp_()
        grads.mul_((grad_blank + grad_label).neg_()[..., None])
    else:
        grads = torch.zeros_like(log_probs)
    grads[..., blank] += grad_blank
    grads.scatter_add_(3, labels, grad_label[..., None])
    # Padded cells get exactly zero, even where non-finite padded logits made 0 * inf = NaN.
    for b, (frames_b, labels_b) in enumerate(
        zip(logit_lengths.tolist(), target_lengths.tolist(), strict=True)
    ):
        grads[b, frames_b:] = 0.0
        grads[b, :frames_b, labels_b + 1 :] = 0.0
    if clamp > 0:
        grads.clamp_(-clamp, clamp)
    return costs, grads.to(logits.dtype)
