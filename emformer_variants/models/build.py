"""Recognizers from config: the base (loaded), a fresh one (init=scratch), or random weights
of a configured architecture (benchmarks and the architecture report)."""

from __future__ import annotations

import logging
import random

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from emformer_variants.data.audio import load_audio
from emformer_variants.data.manifest import Utterance
from emformer_variants.errors import UserError
from emformer_variants.models.features import FeatureConfig, FeatureExtractor, compute_global_stats
from emformer_variants.models.recognizer import Recognizer, _torch_load, load_recognizer
from emformer_variants.models.tokenizer import train_tokenizer

log = logging.getLogger(__name__)


def load_base(model_cfg: DictConfig) -> Recognizer:
    """The configured base weights (``model.base``: a loader with its arguments)."""
    return hydra.utils.instantiate(model_cfg.base)


def build_scratch(model_cfg: DictConfig, train: list[Utterance], stats_utterances: int = 300,
                  seed: int = 0, skip_bad: bool = False) -> Recognizer:
    """New SentencePiece model from training transcripts, global stats from training audio,
    randomly initialised weights. ``skip_bad``: audio that fails to load is left out of the
    statistics (and logged) instead of stopping the run."""
    if "arch" not in model_cfg:
        raise UserError(f"model={model_cfg.get('name')}: init=scratch needs model.arch and "
                        "model.features in the model config")
    tok_cfg = OmegaConf.to_container(model_cfg.get("tokenizer", {}), resolve=True) or {}
    tokenizer = train_tokenizer([u.text for u in train], model_type=tok_cfg.get("model_type", "char"),
                                vocab_size=tok_cfg.get("vocab_size", 0))
    feats = FeatureConfig(**OmegaConf.to_container(model_cfg.features, resolve=True))
    sample = random.Random(seed).sample(train, min(stats_utterances, len(train)))
    mean, invstd = compute_global_stats(FeatureExtractor(feats), _waves(sample, skip_bad))
    log.info("scratch init: %d-piece tokenizer, stats from %d utterances", tokenizer.vocab_size,
             len(sample))
    return Recognizer(OmegaConf.to_container(model_cfg.arch, resolve=True), feats, tokenizer, mean, invstd)


def _waves(utts: list[Utterance], skip_bad: bool):
    for u in utts:
        try:
            yield load_audio(u.audio)
        except UserError as e:
            if not skip_bad:
                raise
            log.warning("global stats: skipped (data.skip_bad=true): %s", e)


def resolve_checkpoint(ckpt: str, model_cfg: DictConfig) -> Recognizer:
    """``base`` -> the model config's base; a project checkpoint -> itself; a raw torchaudio
    RNNT state dict -> the model config's loader with ``ckpt`` replaced."""
    if ckpt == "base":
        return load_base(model_cfg)
    obj = _torch_load(__import__("pathlib").Path(ckpt))
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        base_cfg = OmegaConf.to_container(model_cfg.base, resolve=True)
        if "ckpt" not in base_cfg:
            raise UserError(f"ckpt={ckpt} is a raw state dict; pass model=emformer_base (or a model "
                            "config whose loader takes ckpt) so the tokenizer and stats are known")
        base_cfg["ckpt"] = ckpt
        return hydra.utils.instantiate(OmegaConf.create(base_cfg))
    return load_recognizer(ckpt)


class _VocabOnly:
    """Stands in for a tokenizer of ``vocab_size`` pieces: the joiner's size uses it, and
    ``decode`` spells piece ids as ``<id>`` (random weights have no text to show)."""

    def __init__(self, vocab_size: int):
        self.vocab_size, self.blank, self.num_symbols = vocab_size, vocab_size, vocab_size + 1

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"<{i}>" for i in ids)


def build_random(model: str, seed: int = 0) -> Recognizer:
    """``conf/model/<model>``'s architecture with random weights (seeded): sizes and compute
    are real, decoding behaviour is not. ``emformer_base`` gets a 4096-piece vocabulary."""
    from hydra import compose, initialize_config_dir

    from emformer_variants.utils.paths import PROJECT_ROOT

    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
    torch.manual_seed(seed)
    if model == "emformer_base":
        from emformer_variants.models.emformer_base import EMFORMER_BASE_ARCH

        return Recognizer(EMFORMER_BASE_ARCH, FeatureConfig(), _VocabOnly(4096)).eval()
    arch = OmegaConf.to_container(cfg.model.arch, resolve=True)
    tok = train_tokenizer(["abc"], model_type="char")
    return Recognizer(arch, FeatureConfig(**cfg.model.features), tok).eval()


def load_named_checkpoint(ckpt: str = "base") -> Recognizer:
    """``--ckpt`` of the command-line tools: ``base`` (the shipped checkpoints/tiny_base.pt)
    or a project checkpoint path, as ``ckpt=`` of evaluate.py with model=tiny."""
    from emformer_variants.utils.paths import PROJECT_ROOT

    path = PROJECT_ROOT / "checkpoints" / "tiny_base.pt" if ckpt == "base" else ckpt
    return load_recognizer(path, missing_hint="pass --ckpt PATH to an existing file or --ckpt base").eval()
