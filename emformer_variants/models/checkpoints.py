"""Checkpoint inspection without building a model: what a file holds, and how it differs
from what was asked for.

``peek`` reads a project checkpoint (``final.pt`` or a Lightning ``.ckpt`` from train.py)
memory-mapped, so it costs milliseconds even for a large file, and turns a missing,
truncated or foreign file into a one-line UserError. ``diff_variants`` / ``diff_arch`` list
every field in which a checkpoint differs from the requested variant or architecture.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emformer_variants.errors import UserError


@dataclass
class CheckpointInfo:
    path: Path
    kind: str  # "lightning" (train.py .ckpt) or "recognizer" (final.pt / export)
    config: dict  # {"arch", "features", "variants"}
    global_step: int | None = None


def load_file(path: Path, missing_hint: str = "check the path") -> Any:
    """torch.load a checkpoint (memory-mapped when it is a zip file); a missing, empty or
    unreadable file becomes a one-line UserError."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; {missing_hint}")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: checkpoint is empty (0 bytes; an interrupted copy?); use another one")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - not a zip checkpoint (mmap needs one): read it plainly
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UserError(
            f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            "the file is truncated or not a torch checkpoint"
        ) from None


def state_digest(state: dict) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict's tensors (sorted by name).

    Stored in every checkpoint the project writes; a mismatch on load means the file was
    damaged after it was written (torch.load itself only notices a broken zip structure)."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            continue
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(value.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def verify_state(state: dict, expected: str | None, path) -> None:
    """UserError if ``state`` does not match the digest recorded at save time (None: not recorded)."""
    if expected is None:
        return
    if state_digest(state) != expected:
        raise UserError(f"{path}: the weights do not match the checksum recorded when the file was "
                        "written (the file is corrupt); use another copy or an earlier checkpoint")


def peek(path: str | Path, verify: bool = False) -> CheckpointInfo:
    """What a project checkpoint holds (config and step), without building the model;
    ``verify``: also check the weights against their recorded checksum."""
    path = Path(path)
    obj = load_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("emformer_variants"), dict):
        payload, kind = obj["emformer_variants"], "lightning"
    elif isinstance(obj, dict) and obj.get("format") == "emformer-variants":
        payload, kind = obj, "recognizer"
    else:
        raise UserError(f"{path}: not an emformer-variants checkpoint (no recorded model config); "
                        "pass a final.pt or a checkpoints/*.ckpt written by train.py")
    config = payload.get("config")
    if not isinstance(config, dict) or not {"arch", "features"} <= set(config):
        raise UserError(f"{path}: checkpoint has no valid model config (corrupt file)")
    config.setdefault("variants", [])
    if verify:
        verify_state(obj.get("state_dict", {}), payload.get("state_digest"), path)
    return CheckpointInfo(path, kind, config, obj.get("global_step"))


def diff_variants(recorded: list[dict], requested: list[dict]) -> list[str]:
    """Human-readable differences between two surgery lists (empty if they match). Fields a
    surgery resolves itself count as equal when the request leaves them unset."""
    from emformer_variants.surgery.registry import resolved_fields, variant_name

    rec_names = [s.get("name") for s in recorded]
    req_names = [s.get("name") for s in requested]
    if rec_names != req_names:
        return [f"variant {variant_name(recorded)} in the checkpoint vs {variant_name(requested)} requested"]
    out = []
    for i, (a, b) in enumerate(zip(recorded, requested, strict=True)):
        skip = resolved_fields(a.get("name"))
        for key in sorted((set(a) | set(b)) - {"name"}):
            va, vb = a.get(key), b.get(key)
            if key in skip and vb is None:
                continue
            if _norm(va) != _norm(vb):
                where = f"{a['name']}.{key}" if len(recorded) == 1 else f"stack[{i}].{a['name']}.{key}"
                out.append(f"{where}: {va!r} in the checkpoint vs {vb!r} requested")
    return out


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def diff_arch(recorded: dict, expected: dict) -> list[str]:
    """Architecture fields that differ (``num_symbols`` null = from the tokenizer: not compared)."""
    out = []
    for key in sorted(set(recorded) | set(expected)):
        va, vb = recorded.get(key), expected.get(key)
        if key == "num_symbols" and (va is None or vb is None):
            continue
        if key in expected and _norm(va) != _norm(vb):
            out.append(f"arch.{key}: {va!r} in the checkpoint vs {vb!r} requested")
    return out


def mismatch_error(what: str, path, diffs: list[str], fix: str) -> UserError:
    shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    return UserError(f"{what}={path}: the checkpoint differs from the requested model: {shown}; {fix}")
