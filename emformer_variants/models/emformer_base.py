"""torchaudio's ``emformer_rnnt_base`` with the LibriSpeech bundle's tokenizer and stats.

Weights come from ``model.ckpt=PATH`` (the ``emformer_rnnt_base_librispeech.pt`` state
dict) or from torchaudio's bundle cache under ``$TORCH_HOME/hub/torchaudio``; nothing is
downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from emformer_variants.errors import UserError
from emformer_variants.metrics.flops import emformer_base_arch
from emformer_variants.models.features import FeatureConfig, load_global_stats
from emformer_variants.models.recognizer import Recognizer, _torch_load, load_state_strict
from emformer_variants.models.tokenizer import Tokenizer

# Keys of torchaudio.pipelines.EMFORMER_RNNT_BASE_LIBRISPEECH, relative to the hub dir.
BUNDLE_FILES = {
    "ckpt": "torchaudio/models/emformer_rnnt_base_librispeech.pt",
    "global_stats": "torchaudio/pipeline-assets/global_stats_rnnt_librispeech.json",
    "sp_model": "torchaudio/pipeline-assets/spm_bpe_4096_librispeech.model",
}

EMFORMER_BASE_ARCH = emformer_base_arch(num_symbols=4097)


def bundle_cache_path(key: str) -> Path:
    return Path(torch.hub.get_dir()) / BUNDLE_FILES[key]


def resolve_bundle_file(key: str, given: str | None) -> Path:
    """A user-given path, else torchaudio's cache; a clear error when neither exists."""
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise UserError(f"model.{key}={given}: file not found")
        return path
    path = bundle_cache_path(key)
    if not path.is_file():
        missing = [f"{bundle_cache_path(k)}" for k in BUNDLE_FILES if not bundle_cache_path(k).is_file()]
        raise UserError(
            "emformer_base needs torchaudio's LibriSpeech bundle files, which cannot be downloaded "
            f"here; place them at: {', '.join(missing)} (or pass model.ckpt/model.sp_model/"
            "model.global_stats=PATH)"
        )
    return path


def load_emformer_base(ckpt: str | None = None, sp_model: str | None = None,
                       global_stats: str | None = None, arch: dict | None = None,
                       features: FeatureConfig | None = None) -> Recognizer:
    sp_path = resolve_bundle_file("sp_model", sp_model)
    stats_path = resolve_bundle_file("global_stats", global_stats)
    ckpt_path = resolve_bundle_file("ckpt", ckpt)
    tokenizer = Tokenizer.from_file(sp_path)
    mean, invstd = load_global_stats(stats_path)
    rec = Recognizer(arch or EMFORMER_BASE_ARCH, features or FeatureConfig(), tokenizer, mean, invstd)
    state = _torch_load(ckpt_path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{ckpt_path}: expected a torchaudio RNNT state dict (name -> tensor)")
    load_state_strict(rec.model, state, str(ckpt_path))
    return rec
