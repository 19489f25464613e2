"""Real human speech for evaluation: the Asterisk PBX English prompts (CC-BY-SA-3.0).

One professional US female speaker (Allison), phone-menu text, ~550 prompts (~24 min).
Audio from Debian ``asterisk-core-sounds-en-g722`` (G.722: true 16 kHz), transcripts from
``asterisk-core-sounds-en`` (``core-sounds-en.txt.gz``, lines ``name: text``). Bracketed
and parenthesised notes (``[beep tone]``, ``(10 seconds of silence)``,
``(note: does not say "2")``) are not speech and are removed; prompts left without text
(tones, silences) are dropped.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from emformer_variants.data.manifest import Utterance, publish_corpus, read_manifest, write_manifest
from emformer_variants.data.text import add_cache_dir_argument, fetch_deb
from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.text_norm import normalize_text
from emformer_variants.utils.paths import project_cache_dir

AUDIO_PACKAGE = "asterisk-core-sounds-en-g722"
TEXT_PACKAGE = "asterisk-core-sounds-en"
SAMPLE_RATE = 16000
SPEAKER = "asterisk-allison"
FORMAT_VERSION = 2
_NOTES = re.compile(r"\[[^\]]*\]|\([^)]*\)")
# Written forms the speaker reads differently (acronyms spelled letter by letter, a typo).
_SPOKEN = tuple(
    (re.compile(a), b)
    for a, b in (
        (r"\bwww\.asterisk\.org\b", "w w w dot asterisk dot org"),
        (r"\b28\.8\b", "twenty eight point eight"),
        (r"\bH\.323\b", "H three two three"),
        (r"\b(PBX|IVR|MGCP|USB|IP)\b", lambda m: " ".join(m.group(1))),
        (r"\b[Ee]xclaimation\b", "exclamation"),
    )
)


def read_transcripts(path: Path) -> dict[str, str]:
    """``core-sounds-en.txt.gz`` -> {prompt name ("digits/1"): normalised spoken text}."""
    out = {}
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip() or line.startswith(";"):
                continue
            name, sep, text = line.partition(":")
            if sep:
                text = _NOTES.sub(" ", text)
                for pattern, spoken in _SPOKEN:
                    text = pattern.sub(spoken, text)
                out[name.strip()] = normalize_text(text)
    return out


def decode_g722(path: Path) -> np.ndarray:
    """G.722 file -> float32 mono 16 kHz waveform (T,)."""
    import av

    with av.open(str(path), format="g722") as container:
        stream = container.streams.audio[0]
        frames = [frame for frame in container.decode(stream)]
    if not frames:
        return np.zeros(0, np.float32)
    if frames[0].sample_rate != SAMPLE_RATE:
        raise UserError(
            f"{path}: decoded at {frames[0].sample_rate} Hz, expected 16000; check the PyAV (av) installation"
        )
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / 32768.0
    return pcm.astype(np.float32)


def build_asterisk(out_dir: Path, cache_dir: Path) -> dict[str, Path]:
    """Build (or find) the Asterisk test set; returns {"test": manifest path}.

    Idempotent (an existing complete ``out_dir`` returns at once) and crash-safe (built in
    ``<out_dir>.tmp-<pid>``, renamed when complete).
    """
    import soundfile as sf

    out_dir = Path(out_dir).absolute()
    manifests = {"test": out_dir / "test.jsonl"}
    meta_path = out_dir / "corpus.json"
    if out_dir.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise UserError(
                f"{out_dir}: exists but has no valid corpus.json; delete it and rebuild"
            ) from None
        if meta.get("config", {}).get("format_version") != FORMAT_VERSION:
            raise UserError(f"{meta_path}: built by another version; delete {out_dir} and rebuild")
        return manifests

    start = time.perf_counter()
    audio_root = fetch_deb(AUDIO_PACKAGE, Path(cache_dir))
    text_root = fetch_deb(TEXT_PACKAGE, Path(cache_dir))
    transcripts_gz = next(text_root.rglob("core-sounds-en.txt.gz"), None)
    sounds = next(audio_root.glob("usr/share/asterisk/sounds/*"), None)
    if transcripts_gz is None or sounds is None:
        raise UserError(
            f"{Path(cache_dir) / 'debs'}: {TEXT_PACKAGE}/{AUDIO_PACKAGE} lack the expected "
            "files; delete these folders and retry"
        )
    transcripts = read_transcripts(transcripts_gz)
    files = {p.relative_to(sounds).with_suffix("").as_posix(): p for p in sounds.rglob("*.g722")}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f"{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        utts = []
        for name in sorted(files):
            text = transcripts.get(name, "")
            if not text:
                continue  # tones, silences, prompts without a transcript
            wave = decode_g722(files[name])
            if wave.size == 0:
                continue
            path = tmp / "test" / (name.replace("/", "__") + ".flac")
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            utts.append(Utterance(str(path), text, round(len(wave) / SAMPLE_RATE, 4), SPEAKER))
        write_manifest(tmp / "test.jsonl", utts)
        hours = sum(u.duration for u in utts) / 3600
        meta = {
            "config": {"format_version": FORMAT_VERSION, "packages": [AUDIO_PACKAGE, TEXT_PACKAGE]},
            "stats": {"test": {"utterances": len(utts), "hours": round(hours, 4), "speakers": 1}},
            "dropped": sorted(set(files) - {Path(u.audio).stem.replace("__", "/") for u in utts}),
        }
        publish_corpus(tmp, out_dir, meta, lambda: (out_dir / "corpus.json").is_file())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(
        f"[asterisk] {len(utts)} prompts, {hours * 60:.1f} min, built in "
        f"{time.perf_counter() - start:.1f} s -> {out_dir}",
        flush=True,
    )
    return manifests


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the Asterisk prompts test set (real speech).")
    p.add_argument("--out", type=Path, required=True)
    add_cache_dir_argument(p)
    args = p.parse_args(argv)
    manifests = build_asterisk(args.out, args.cache_dir or project_cache_dir())
    print(f"test: {manifests['test']} ({len(read_manifest(manifests['test']))} utterances)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
