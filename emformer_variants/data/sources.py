"""Corpus sources: each turns one kind of data into ``{split: [Utterance]}``.

Splits are named ``train``, ``dev``, ``test`` (+ ``test_everyday`` and ``test_voice`` for the
synthetic corpus).
Sources are instantiated from ``conf/data/*.yaml`` by Hydra; nothing is downloaded except
Debian packages by name (synthetic text, Asterisk prompts).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from emformer_variants.data.manifest import Utterance, read_manifest
from emformer_variants.errors import UserError
from emformer_variants.text_norm import normalize_text


def _cache(cache_dir: str | None) -> Path:
    from emformer_variants.utils.paths import project_cache_dir

    return Path(cache_dir).expanduser() if cache_dir else project_cache_dir()


def _plain(value):
    """A Hydra DictConfig/ListConfig as a plain container (others unchanged)."""
    if value is None or isinstance(value, (dict, list, str, int, float)):
        return value
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True)


@dataclass
class SyntheticSource:
    """English texts read by offline TTS voices (built once, cached, deterministic)."""

    num_train: int = 2000
    num_dev: int = 200
    num_test: int = 200
    num_test_everyday: int = 200
    num_test_voice: int = 100  # texts of test read by each held-out voice
    seed: int = 0
    workers: int = 2
    cache_dir: str | None = None
    # Share of train/dev/test utterances per TTS engine and per text source (null: defaults).
    engine_weights: dict | None = None
    text_weights: dict | None = None

    def splits(self) -> dict[str, list[Utterance]]:
        from emformer_variants.data.synthetic import (
            FORMAT_VERSION,
            build_synthetic_corpus,
            check_engine_weights,
            check_text_weights,
        )

        cache = _cache(self.cache_dir)
        engines = check_engine_weights(_plain(self.engine_weights), "data.source.engine_weights")
        texts = check_text_weights(_plain(self.text_weights), "data.source.text_weights")
        fields = [FORMAT_VERSION, self.num_train, self.num_dev, self.num_test, self.num_test_everyday,
                  self.num_test_voice, self.seed, engines, texts]
        key = json.dumps(fields, separators=(",", ":"), sort_keys=True)
        out = cache / f"synthetic-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
        manifests = build_synthetic_corpus(
            out, num_train=self.num_train, num_dev=self.num_dev, num_test=self.num_test,
            num_test_everyday=self.num_test_everyday, num_test_voice=self.num_test_voice,
            seed=self.seed, workers=self.workers, cache_dir=cache, engine_weights=engines,
            text_weights=texts,
        )
        return {split: read_manifest(path) for split, path in manifests.items()}


@dataclass
class AsteriskSource:
    """Real human speech (Asterisk English prompts), evaluation only: split ``test``."""

    cache_dir: str | None = None

    def splits(self) -> dict[str, list[Utterance]]:
        from emformer_variants.data.asterisk import build_asterisk

        cache = _cache(self.cache_dir)
        manifests = build_asterisk(cache / "asterisk", cache_dir=cache)
        return {split: read_manifest(path) for split, path in manifests.items()}


@dataclass
class NonfreeVoicesSource:
    """Extra held-out voices (SVOX Pico, RHVoice, MBROLA from Debian contrib/non-free) reading the
    default corpus's ``test_voice`` texts; evaluation only: split ``test``, WER per voice."""

    num_texts: int = 50
    corpus_num_test: int = 200
    corpus_seed: int = 0
    text_weights: dict | None = None
    cache_dir: str | None = None

    def splits(self) -> dict[str, list[Utterance]]:
        from emformer_variants.data.nonfree_voices import build_nonfree_voices

        cache = _cache(self.cache_dir)
        key = json.dumps([self.num_texts, self.corpus_num_test, self.corpus_seed, _plain(self.text_weights)],
                         sort_keys=True)
        out = cache / f"nonfree-voices-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
        manifests = build_nonfree_voices(out, num_texts=self.num_texts, corpus_num_test=self.corpus_num_test,
                                         corpus_seed=self.corpus_seed, cache_dir=cache,
                                         text_weights=_plain(self.text_weights))
        return {split: read_manifest(path) for split, path in manifests.items()}


@dataclass
class ManifestSource:
    """Any folder of ``<split>.jsonl`` manifests (the project's own format)."""

    root: str = "???"

    def splits(self) -> dict[str, list[Utterance]]:
        root = Path(self.root)
        found = sorted(root.glob("*.jsonl"))
        if not found:
            raise UserError(f"data.root={root}: no <split>.jsonl manifests found")
        return {p.stem: read_manifest(p) for p in found}


_HF_SPLITS = {"train": "train", "validation": "dev", "valid": "dev", "dev": "dev", "test": "test"}


@dataclass
class AudioFolderSource:
    """A Hugging Face ``audiofolder``: audio files + ``metadata.csv``/``metadata.jsonl`` with
    ``file_name`` and ``text`` (or ``transcription``). Read with ``datasets``; audio is
    decoded by soundfile and resampled/downmixed to 16 kHz mono. A folder without split
    subfolders serves every split (so it can be evaluated as ``test``)."""

    path: str = "???"

    def splits(self) -> dict[str, list[Utterance]]:
        from emformer_variants.data.audio import audio_duration

        root = Path(self.path).expanduser()
        if not root.is_dir():
            raise UserError(f"data.path={self.path}: folder not found")
        metas = [p for p in root.rglob("metadata.*") if p.suffix in (".csv", ".jsonl")]
        if not metas:
            raise UserError(
                f"data.path={root}: no metadata.csv or metadata.jsonl; add one with columns "
                "file_name,text (Hugging Face audiofolder layout)"
            )
        rows_by_split = _read_audiofolder(root)
        out: dict[str, list[Utterance]] = {}
        for split, rows in rows_by_split.items():
            utts = []
            for audio_path, text in rows:
                utts.append(Utterance(audio_path, normalize_text(text or ""), -1.0, ""))
            out[_HF_SPLITS.get(split, split)] = utts
        if len(out) == 1:
            only = next(iter(out.values()))
            out = {s: only for s in ("train", "dev", "test")}
        # Durations from headers (fast); errors are raised/skipped by the DataModule.
        for split, utts in out.items():
            fixed = []
            for u in utts:
                try:
                    dur = audio_duration(u.audio)
                except UserError:
                    dur = -1.0  # the DataModule reports or skips it
                fixed.append(Utterance(u.audio, u.text, dur, u.speaker))
            out[split] = fixed
        return out


def _read_audiofolder(root: Path) -> dict[str, list[tuple[str, str]]]:
    """{split: [(audio path, text)]} from audiofolder metadata files, read with ``datasets``.

    Follows the audiofolder layout: ``file_name`` is relative to the metadata file's folder;
    a top-level folder named train/validation/valid/dev/test is that split, anything else is
    ``train``. (Audio is decoded by soundfile: datasets' Audio feature needs torchcodec.)
    """
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    out: dict[str, list[tuple[str, str]]] = {}
    metas = sorted(p for p in root.rglob("metadata.*") if p.suffix in (".csv", ".jsonl"))
    for meta in metas:
        builder = "csv" if meta.suffix == ".csv" else "json"
        try:
            ds = datasets.load_dataset(builder, data_files=str(meta), split="train")
        except Exception as e:  # noqa: BLE001 - datasets raises many types for bad files
            raise UserError(f"{meta}: cannot read metadata ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:150]})") from None
        cols = ds.column_names
        text_col = "text" if "text" in cols else "transcription" if "transcription" in cols else None
        if "file_name" not in cols or text_col is None:
            raise UserError(f"{meta}: has columns {cols}; it needs 'file_name' and 'text' "
                            "(or 'transcription')")
        rel = meta.parent.relative_to(root).parts
        split = rel[0] if rel and rel[0] in _HF_SPLITS else "train"
        rows = out.setdefault(split, [])
        for row in ds:
            rows.append((str(meta.parent / row["file_name"]), row[text_col] or ""))
    return out


@dataclass
class LibriSpeechSource:
    """LibriSpeech from a local folder (``root/LibriSpeech/<split>/...`` or ``root/<split>``);
    never downloads."""

    root: str = "???"
    train: tuple = ("train-clean-100",)
    dev: tuple = ("dev-clean",)
    test: tuple = ("test-clean",)

    def splits(self) -> dict[str, list[Utterance]]:
        from emformer_variants.data.audio import audio_duration

        root = Path(self.root).expanduser()
        base = root / "LibriSpeech" if (root / "LibriSpeech").is_dir() else root
        out = {}
        for name, parts in (("train", self.train), ("dev", self.dev), ("test", self.test)):
            utts = []
            for part in parts:
                d = base / part
                if not d.is_dir():
                    raise UserError(f"data.root={root}: LibriSpeech split '{part}' not found at {d}; "
                                    "it is never downloaded, place it there")
                for trans in sorted(d.glob("*/*/*.trans.txt")):
                    for line in trans.read_text().splitlines():
                        utt_id, _, text = line.partition(" ")
                        flac = trans.parent / f"{utt_id}.flac"
                        utts.append(Utterance(str(flac), normalize_text(text), audio_duration(flac),
                                              utt_id.split("-")[0]))
            out[name] = utts
        return out
