"""WER by TTS engine (the speaker name's prefix: espeak, flite, hibari, piper) from decoded rows.

    python scripts/wer_breakdown.py outputs/evaluate/<run>/hyps.jsonl \
        [--manifest cache/synthetic-<hash>/test.jsonl] [--train-manifest cache/synthetic-<hash>/train.jsonl]

HYPS is ``evaluate.py``'s ``hyps.jsonl`` or ``scripts/peer_whisper.py``'s JSON list. Rows without
a ``speaker`` (evaluations before the field existed) take it from ``--manifest`` by audio file
name. ``--train-manifest`` also counts reference words never seen in training transcripts.
Pure Python (jiwer), so it runs in the peer venv too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's pure-Python metrics


def _rows(path: Path) -> list[dict]:
    text = path.read_text()
    return json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()
                                                                   if x.strip()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("hyps", type=Path, help="hyps.jsonl of evaluate.py, or peer_whisper.py's JSON")
    p.add_argument("--manifest", type=Path, help="the split's manifest, for rows without a speaker")
    p.add_argument("--train-manifest", type=Path, help="count reference words absent from its transcripts")
    args = p.parse_args()
    for path in (args.hyps, args.manifest, args.train_manifest):
        if path is not None and not path.is_file():
            sys.exit(f"error: {path}: no such file")
    from emformer_variants.metrics.wer import error_rates, error_rates_by
    from emformer_variants.text_norm import normalize_text

    rows = _rows(args.hyps)
    manifest = _rows(args.manifest) if args.manifest else []
    speakers = {Path(r["audio"]).name: r.get("speaker", "") for r in manifest}
    groups = []
    for r in rows:
        speaker = r.get("speaker") or speakers.get(Path(r["audio"]).name)
        if not speaker:
            sys.exit(f"error: {args.hyps}: a row has no speaker ({r['audio']}); pass --manifest")
        groups.append(speaker.split("-")[0])
    refs, hyps = [r["ref"] for r in rows], [r["hyp"] for r in rows]
    print(f"all: {100 * error_rates(refs, hyps)['wer']:.2f}% ({len(rows)} utterances)")
    for engine, m in error_rates_by(refs, hyps, groups).items():
        print(f"  {engine}: {100 * m['wer']:.1f}% ({m['num_utterances']})")
    if args.train_manifest:
        seen = {w for r in _rows(args.train_manifest) for w in normalize_text(r["text"]).split()}
        words = [w for ref in refs for w in normalize_text(ref).split()]
        print(f"reference words never in training transcripts: {sum(w not in seen for w in words)} "
              f"of {len(words)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
