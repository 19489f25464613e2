"""A few Harvard sentences read by named TTS voices, as a manifest: a quick check of a voice
before a corpus trains on it (how a peer recogniser hears it, ``scripts/peer_whisper.py``).

    python scripts/voice_manifest.py --voices accents mbrola-af1-en --texts 8 --out DIR
    .venv-peer/bin/python scripts/peer_whisper.py DIR/test.jsonl DIR/whisper.json   # WER per voice

``--voices`` takes voice names of the registry (``tts.accent_voices``, ``tts.nonfree_voices``,
the default training voices), a family (``accents``, ``nonfree``), or ``mbrola-XX-en`` for any
MBROLA diphone set that espeak-ng drives in English. Audio at 16 kHz, FLAC, under ``--out``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emformer_variants.data import tts  # noqa: E402
from emformer_variants.data.manifest import Utterance, write_manifest  # noqa: E402
from emformer_variants.errors import UserError, one_line_errors  # noqa: E402
from emformer_variants.text_norm import normalize_text  # noqa: E402
from emformer_variants.utils.paths import project_cache_dir  # noqa: E402

FAMILIES = {"accents": tts.accent_voices, "nonfree": tts.nonfree_voices}


def resolve(names: list[str]) -> list[tts.Voice]:
    known = {v.name: v for v in tts.default_voices() + tts.accent_voices() + tts.nonfree_voices()
             + tts.held_out_voices()}
    out: list[tts.Voice] = []
    for name in names:
        if name in FAMILIES:
            out += FAMILIES[name]()
        elif name in known:
            out.append(known[name])
        elif re.fullmatch(r"mbrola-[a-z]{2}\d-en", name):
            out.append(tts.Voice(name, "mbrola", {"voice": "mb-" + name.removeprefix("mbrola-")}))
        else:
            raise UserError(f"--voices {name}: unknown voice; give a registry name, a family "
                            f"({', '.join(FAMILIES)}) or mbrola-XX-en")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voices", nargs="+", required=True)
    p.add_argument("--texts", type=int, default=8, help="Harvard sentences per voice (the first N)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from emformer_variants.data.english import load_english
    from emformer_variants.data.synthetic import SAMPLE_RATE, to_sample_rate

    voices = resolve(args.voices)
    texts = [normalize_text(t) for t in load_english("harvard", project_cache_dir())[: args.texts]]
    requests = [(v, t, 1.0, 1.0, i) for v in voices for i, t in enumerate(texts)]
    utts = []
    waves = tts.synthesize_many(requests)
    for n, ((voice, text, *_), (wave, sr)) in enumerate(zip(requests, waves, strict=True)):
        path = args.out / f"{voice.name}-{n % len(texts):03d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        wave = to_sample_rate(wave, sr)
        sf.write(path, wave, SAMPLE_RATE)
        utts.append(Utterance(str(path), text, len(wave) / SAMPLE_RATE, voice.name))
    write_manifest(args.out / "test.jsonl", utts)
    print(f"{len(utts)} utterances of {len(voices)} voices: {args.out / 'test.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main)())
