"""Distillation from the frozen base (``module.distill``): pure loss functions.

``kind: joiner`` (Hinton et al. 2015, applied to the RNN-T output lattice as in Panchapagesan
et al. 2021, "Efficient knowledge distillation for RNN-Transducer models"): the temperature-
scaled KL(teacher || student) between the joiner's output distributions over all V symbols,
times temperature^2 so its gradient scale does not change with the temperature.

Memory. The full lattice is B x T' x (U+1) x V; the RNN-T loss already holds one for the
student. Scoring every cell would add the teacher's lattice and the KL's own log-softmaxes
(about three more of that size). Instead the KL is taken on ``positions`` cells per utterance,
drawn uniformly without replacement among its valid (t < T'_b, u <= U_b) cells; the joiner
runs only on those cells for both models (N x V, N = B x positions), the teacher's in
chunks of ``chunk`` cells under no_grad. The sample is an unbiased estimate of the mean KL
over valid cells. ``positions: null`` takes every valid cell (exact; memory N x V with N the
whole lattice). Student and teacher score the same cells through the same joiner code, so
the loss is exactly 0 when the student equals the teacher.

``kind: encoder``: mean squared difference of the encoder outputs on valid frames.

``kind: modules`` (layer-wise distillation, as in the local reconstruction objectives of
MoEfication and low-rank compression): every module the surgery swapped (``replaced_modules``:
the outermost student module whose class differs from the teacher's at the same path) and the
teacher's original module both run on the inputs the student's module received in the
forward pass, detached; the loss is the mean over those calls of the relative squared error
||y - t||^2 / ||t||^2 of their outputs. Each new module gets a dense, local signal of what the
module it replaced computed (its gradient reaches no other parameter), where the joiner's KL
reaches it only through every later layer. It costs one more forward and backward of the
replaced modules.

Shapes: B batch, T' encoder frames, U target tokens (U+1 predictor steps), D joiner input
width, V symbols, N sampled lattice cells.
"""

from __future__ import annotations

import torch

from emformer_variants.errors import UserError

KINDS = ("joiner", "encoder", "modules")
DEFAULTS = {"kind": "joiner", "weight": 0.0, "temperature": 1.0, "positions": 64, "chunk": 4096}


def check_distill(distill: dict | None) -> dict:
    """``module.distill`` with defaults filled in; one-line errors for bad values."""
    cfg = {**DEFAULTS, **dict(distill or {})}
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise UserError(f"module.distill: unknown field(s) {unknown}; known: {sorted(DEFAULTS)}")
    if cfg["kind"] not in KINDS:
        raise UserError(f"module.distill.kind={cfg['kind']!r}: choose one of {', '.join(KINDS)}")
    if not cfg["weight"] >= 0:
        raise UserError(f"module.distill.weight={cfg['weight']}: must be >= 0")
    if not cfg["temperature"] > 0:
        raise UserError(f"module.distill.temperature={cfg['temperature']}: must be > 0")
    if cfg["positions"] is not None and not (isinstance(cfg["positions"], int) and cfg["positions"] >= 1):
        raise UserError(f"module.distill.positions={cfg['positions']!r}: an integer >= 1 (lattice cells "
                        "per utterance) or null (every cell)")
    if not (isinstance(cfg["chunk"], int) and cfg["chunk"] >= 1):
        raise UserError(f"module.distill.chunk={cfg['chunk']!r}: must be an integer >= 1")
    return cfg


def encoder_mse(enc: torch.Tensor, t_enc: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of (B, T', D) encoder outputs over the valid frames."""
    mask = (torch.arange(enc.shape[1], device=enc.device)[None] < lengths[:, None]).unsqueeze(-1)
    diff = (enc.float() - t_enc.float()) ** 2 * mask
    return diff.sum() / (mask.sum() * enc.shape[-1]).clamp_min(1)


def sample_cells(enc_lengths: torch.Tensor, target_lengths: torch.Tensor, positions: int | None,
                 frames: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """(b, t, u) index tensors, each (N,), of lattice cells: ``positions`` per utterance drawn
    without replacement among its T'_b x (U_b + 1) valid cells (all of them when fewer, or when
    ``positions`` is None). ``frames`` is T', the encoder output's padded length: torchaudio's
    Emformer can report a length one frame beyond it (the right context), never scored."""
    bs, ts, us = [], [], []
    for b, (t_len, u_len) in enumerate(zip(enc_lengths.tolist(), target_lengths.tolist(), strict=True)):
        width = int(u_len) + 1
        cells = min(int(t_len), frames) * width
        if cells <= 0:
            continue
        if positions is None or positions >= cells:
            flat = torch.arange(cells)
        else:
            flat = torch.randperm(cells, generator=generator)[:positions]
        bs.append(torch.full_like(flat, b))
        ts.append(flat // width)
        us.append(flat % width)
    if not bs:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    device = enc_lengths.device
    return tuple(torch.cat(x).to(device) for x in (bs, ts, us))


def joint_at(model, enc: torch.Tensor, pred: torch.Tensor, cells: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The joiner's (N, V) logits at the given cells of the lattice of ``enc`` (B, T', D) and
    ``pred`` (B, U+1, D): each cell joined alone as a 1 x 1 lattice."""
    b, t, u = cells
    source, target = enc[b, t].unsqueeze(1), pred[b, u].unsqueeze(1)  # (N, 1, D)
    ones = torch.ones(source.shape[0], dtype=torch.int32, device=source.device)
    logits, _, _ = model.join(source, ones, target, ones)  # (N, 1, 1, V)
    return logits[:, 0, 0]


def joiner_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              temperature: float = 1.0) -> torch.Tensor:
    """temperature^2 x mean over cells of KL(softmax(teacher / T) || softmax(student / T));
    both (N, V)."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    s = (student_logits.float() / temperature).log_softmax(-1)
    t = (teacher_logits.float() / temperature).log_softmax(-1)
    kl = (t.exp() * (t - s)).sum(-1)
    return kl.mean() * temperature ** 2


def teacher_joint_at(model, enc: torch.Tensor, pred: torch.Tensor, cells: tuple[torch.Tensor, ...],
                     chunk: int) -> torch.Tensor:
    """``joint_at`` for a frozen model, ``chunk`` cells at a time (bounded memory)."""
    with torch.no_grad():
        n = cells[0].shape[0]
        parts = [joint_at(model, enc, pred, tuple(c[i:i + chunk] for c in cells))
                 for i in range(0, n, chunk)]
    return torch.cat(parts) if parts else enc.new_zeros(0, 0)


def replaced_modules(student: torch.nn.Module, teacher: torch.nn.Module) -> list[str]:
    """Paths of the modules a surgery swapped in ``student``: the outermost whose class differs
    from ``teacher``'s module at the same path (paths the teacher lacks are inside one), taken
    up to an enclosing ``nn.Sequential`` (the MoE surgery swaps the FFN's members of one, and
    only the whole chain computes what the dense FFN did)."""
    theirs = dict(teacher.named_modules())
    mine = dict(student.named_modules())
    found: list[str] = []
    for name, module in mine.items():
        other = theirs.get(name)
        if other is None or type(other) is type(module):
            continue
        while "." in name:
            parent = name.rsplit(".", 1)[0]
            if not (isinstance(mine.get(parent), torch.nn.Sequential)
                    and isinstance(theirs.get(parent), torch.nn.Sequential)):
                break
            name = parent
        if name not in found:
            found.append(name)
    return [p for p in found if not any(p.startswith(f"{q}.") for q in found)]


def _float_tensors(out) -> list[torch.Tensor]:
    """The floating-point tensors of a module's output (a tensor, or nested tuples/lists)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _float_tensors(o)]
    return []


def relative_error(student_out, teacher_out) -> torch.Tensor:
    """||y - t||^2 / ||t||^2 over the floating-point tensors of two outputs of one structure."""
    ys, ts = _float_tensors(student_out), _float_tensors(teacher_out)
    if len(ys) != len(ts) or any(y.shape != t.shape for y, t in zip(ys, ts, strict=True)):
        raise ValueError("distill kind=modules: the replaced module's outputs differ in structure from "
                         "the original's")
    num = sum(((y.float() - t.float()) ** 2).sum() for y, t in zip(ys, ts, strict=True))
    den = sum((t.float() ** 2).sum() for t in ts)
    return num / den.clamp_min(1e-12)


def _detached(value):
    """``value`` with every tensor inside (tuples, lists, dicts) detached from the graph."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


class ModuleCapture:
    """Forward pre-hooks on ``student``'s replaced modules that record each call's inputs, detached,
    while ``active``. ``loss(teacher)`` runs the student's module and the teacher's original on
    those inputs and returns the mean ``relative_error``: local, so its gradient reaches only
    the replaced modules' own parameters (the records are then forgotten)."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module):
        self.paths = replaced_modules(student, teacher)
        if not self.paths:
            raise UserError("module.distill.kind=modules: the variant replaced no module (nothing to "
                            "match); use kind=joiner or kind=encoder")
        self.student = student
        self.records: list[tuple] = []
        self.active = False
        modules = dict(student.named_modules())
        self.handles = [modules[p].register_forward_pre_hook(self._hook(p), with_kwargs=True)
                        for p in self.paths]

    def _hook(self, path: str):
        def record(module, args, kwargs):
            if self.active:
                self.records.append((path, _detached(args), _detached(kwargs)))
        return record

    def loss(self, teacher: torch.nn.Module) -> torch.Tensor:
        mine, theirs = dict(self.student.named_modules()), dict(teacher.named_modules())
        records, self.records = self.records, []
        errors = []
        for path, args, kwargs in records:
            with torch.no_grad():
                target = theirs[path](*args, **kwargs)
            errors.append(relative_error(mine[path](*args, **kwargs), target))
        if not errors:
            raise ValueError("distill kind=modules: no replaced module ran in the forward pass")
        return torch.stack(errors).mean()
