"""The one record every corpus is turned into, and its JSON-lines manifest format.

A manifest is ``<split>.jsonl`` with one object per line:
``{"audio": "<path relative to the manifest's folder, or absolute>", "text": "...",
"duration": seconds, "speaker": "voice or speaker id"}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from emformer_variants.errors import UserError


@dataclass(frozen=True)
class Utterance:
    audio: str  # absolute path once loaded
    text: str
    duration: float
    speaker: str = ""


def write_manifest(path: str | Path, utterances: list[Utterance]) -> None:
    """Write atomically (tmp file + rename), with audio paths relative to the manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for u in utterances:
            row = asdict(u)
            audio = Path(u.audio)
            if audio.is_absolute() and audio.is_relative_to(path.parent):
                row["audio"] = str(audio.relative_to(path.parent))
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read a manifest; audio paths come back absolute."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found; build the corpus first or check data.root")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                audio = Path(row["audio"])
                if not audio.is_absolute():
                    audio = path.parent / audio
                out.append(
                    Utterance(str(audio), row["text"], float(row["duration"]), row.get("speaker", ""))
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise UserError(
                    f"{path}:{lineno}: bad manifest line ({e}); each line needs audio, text, duration"
                ) from None
    return out


def built_with(out_dir: str | Path, config: dict, fix: str) -> bool:
    """Whether ``out_dir`` holds a finished corpus built with ``config`` (its ``corpus.json``):
    False when there is no ``out_dir``; a ``UserError`` ending in ``fix`` (what to do) when it
    holds no valid ``corpus.json`` or one of another config."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return False
    meta = out_dir / "corpus.json"
    try:
        found = json.loads(meta.read_text())["config"]
    except (OSError, json.JSONDecodeError, KeyError):
        raise UserError(f"{out_dir}: exists but has no valid corpus.json; {fix}") from None
    if found != json.loads(json.dumps(config)):
        raise UserError(f"{meta}: built with another config; {fix}")
    return True


def publish_corpus(tmp: str | Path, out_dir: str | Path, meta: dict, built_by_other) -> None:
    """Finish a corpus build: write ``corpus.json`` into the temporary folder ``tmp``, then
    rename it to ``out_dir`` in one step, so a half-built corpus is never visible.

    If ``out_dir`` appeared meanwhile and ``built_by_other()`` says it is a complete build
    (a concurrent process won the race), ``tmp`` is dropped instead.
    """
    import shutil

    tmp, out_dir = Path(tmp), Path(out_dir)
    (tmp / "corpus.json").write_text(json.dumps(meta, indent=1) + "\n")
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if not built_by_other():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
