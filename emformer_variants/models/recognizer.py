"""The Recognizer: a torchaudio Emformer RNN-T plus its features and tokenizer, and the
one checkpoint format that carries all three (and the surgery that was applied).

Build order (../shared/STYLE.md): base architecture -> load base weights strictly ->
surgery (training); or base architecture -> surgery with empty init -> load strictly
(reloading a fine-tuned variant). The variant list lives in the checkpoint.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torchaudio.models import RNNT, emformer_rnnt_model

from emformer_variants.errors import UserError
from emformer_variants.models.checkpoints import load_file, state_digest, verify_state
from emformer_variants.models.features import FeatureConfig, FeatureExtractor
from emformer_variants.models.tokenizer import Tokenizer

CHECKPOINT_FORMAT = "emformer-variants"
CHECKPOINT_VERSION = 1
# The fix for a missing checkpoint named on a command line (models.export / average / grow).
CLI_HINT = "give the path of an existing final.pt, .ckpt or exported .pt"


class Recognizer(torch.nn.Module):
    """``model`` (torchaudio RNNT) + ``features`` (with global stats) + ``tokenizer``.

    ``config`` = {"arch": kwargs of emformer_rnnt_model, "features": FeatureConfig fields,
    "variants": [surgery specs applied in order]}.
    """

    def __init__(self, arch: dict, features: FeatureConfig, tokenizer: Tokenizer,
                 mean: torch.Tensor | None = None, invstddev: torch.Tensor | None = None):
        super().__init__()
        arch = dict(arch)
        if arch.get("num_symbols") is None:
            arch["num_symbols"] = tokenizer.num_symbols
        if arch["num_symbols"] != tokenizer.num_symbols:
            raise UserError(
                f"model.arch.num_symbols={arch['num_symbols']} but the tokenizer has "
                f"{tokenizer.vocab_size} pieces + blank = {tokenizer.num_symbols}; set it to null"
            )
        check_arch_fits_features(arch, features)
        self.arch = arch
        self.tokenizer = tokenizer
        self.features = FeatureExtractor(features, mean, invstddev)
        self.model: RNNT = emformer_rnnt_model(**arch)
        self.variants: list[dict] = []

    @property
    def blank(self) -> int:
        return self.tokenizer.blank

    @property
    def config(self) -> dict:
        return {"arch": dict(self.arch), "features": asdict(self.features.cfg),
                "variants": copy.deepcopy(self.variants)}


def check_arch_fits_features(arch: dict, features: FeatureConfig) -> None:
    """The streaming chunk must match the model: torchaudio counts the arch's segment and
    right-context lengths in input feature frames (before time reduction)."""
    stride = arch["time_reduction_stride"]
    for key in ("segment_length", "right_context_length"):
        if getattr(features, key) != arch[key]:
            raise UserError(f"model.features.{key}={getattr(features, key)} must equal "
                            f"model.arch.{key}={arch[key]} (feature frames)")
        if arch[key] % stride:
            raise UserError(f"model.arch.{key}={arch[key]} must be a multiple of "
                            f"time_reduction_stride={stride}")


# ---------------------------------------------------------------- checkpoints

def recognizer_payload(rec: Recognizer) -> dict[str, Any]:
    """Everything needed to rebuild ``rec`` without any config file."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": rec.config,
        "tokenizer": rec.tokenizer.model_proto,
    }


def save_recognizer(rec: Recognizer, path: str | Path, meta: dict | None = None,
                    half: bool = False) -> None:
    """Write a self-contained checkpoint atomically (tmp file + rename).

    ``half=True`` stores floating weights as fp16 (for shipping); they load back as fp32.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = rec.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = recognizer_payload(rec) | {"state_dict": state, "meta": meta or {},
                                         "state_digest": state_digest(state)}
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def build_from_config(config: dict, tokenizer_proto: bytes) -> Recognizer:
    """Rebuild architecture + surgery (empty init) from a checkpoint's config."""
    from emformer_variants.surgery.registry import apply_surgery_

    feats = FeatureConfig(**config["features"])
    rec = Recognizer(config["arch"], feats, Tokenizer(tokenizer_proto))
    for spec in config.get("variants", []):
        apply_surgery_(rec, spec, init="empty")
    return rec


CKPT_HINT = "pass ckpt=PATH to an existing file or ckpt=base"


def _torch_load(path: Path, missing_hint: str = CKPT_HINT) -> Any:
    return load_file(path, missing_hint=missing_hint)


def load_state_strict(module: torch.nn.Module, state: dict, source: str) -> None:
    """load_state_dict(strict) with a one-line error listing what differs."""
    result = module.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys (e.g. {result.missing_keys[:3]})")
    if result.unexpected_keys:
        problems.append(
            f"unexpected {len(result.unexpected_keys)} keys (e.g. {result.unexpected_keys[:3]})"
        )
    if problems:
        raise UserError(f"{source}: weights do not match the model: {'; '.join(problems)}")


def load_recognizer(path: str | Path, missing_hint: str = CKPT_HINT) -> Recognizer:
    """Load a project checkpoint (our format or a Lightning .ckpt from train.py); ``missing_hint``
    is the fix a missing file's error suggests (the default fits ``ckpt=`` of the CLIs)."""
    path = Path(path)
    ckpt = _torch_load(path, missing_hint)
    if isinstance(ckpt, dict) and "emformer_variants" in ckpt:  # Lightning checkpoint
        payload = ckpt["emformer_variants"]
        verify_state(ckpt["state_dict"], payload.get("state_digest"), path)
        prefix = "recognizer."
        state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    elif isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
        payload, state = ckpt, ckpt["state_dict"]
        verify_state(state, ckpt.get("state_digest"), path)
    else:
        raise UserError(
            f"{path}: not an emformer-variants checkpoint; for a raw torchaudio state dict use "
            "model=emformer_base model.ckpt=PATH"
        )
    rec = build_from_config(payload["config"], payload["tokenizer"])
    try:
        shapes_ok = all(rec.state_dict()[k].shape == v.shape for k, v in state.items()
                        if k in rec.state_dict())
    except Exception:  # noqa: BLE001
        shapes_ok = False
    if not shapes_ok:
        raise UserError(f"{path}: tensor shapes differ from the architecture stored in it (corrupt file)")
    load_state_strict(rec, {k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                      str(path))
    return rec
