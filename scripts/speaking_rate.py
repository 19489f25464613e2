"""Speaking rate of manifests: words a minute over all audio, and the median characters a second
(letters and apostrophes of the normalised text, utterances longer than 1.5 s).

    python scripts/speaking_rate.py cache/asterisk/test.jsonl cache/synthetic-<hash>/train.jsonl ...
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emformer_variants.data.manifest import read_manifest  # noqa: E402
from emformer_variants.errors import UserError, one_line_errors  # noqa: E402


def rate(path: Path) -> tuple[float, float, int]:
    """(words a minute, median characters a second, utterances) of one manifest."""
    if not path.is_file():
        raise UserError(f"{path}: no such manifest")
    utts = read_manifest(path)
    seconds = sum(u.duration for u in utts)
    if not utts or seconds <= 0:
        raise UserError(f"{path}: no audio in the manifest")
    words = sum(len(u.text.split()) for u in utts)
    cps = [len(u.text.replace(" ", "")) / u.duration for u in utts if u.duration > 1.5]
    return 60 * words / seconds, statistics.median(cps) if cps else float("nan"), len(utts)


def main(argv: list[str] | None = None) -> int:
    paths = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        raise UserError("give one or more manifests (a <split>.jsonl)")
    for path in paths:
        wpm, cps, n = rate(path)
        print(f"{path}: {wpm:.1f} words/min, {cps:.2f} chars/s (median), {n} utterances")
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main)())
