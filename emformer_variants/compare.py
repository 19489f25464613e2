"""Compare two evaluations of the same utterances: WER of each, and the paired difference.

python -m emformer_variants.compare RUN_A RUN_B [--replicates 2000] [--only SPEAKER ...]
python -m emformer_variants.compare RESULTS_A RESULTS_B     # two bases, every set both scored

RUN_A and RUN_B are evaluate.py run folders (or their hyps.jsonl); RESULTS_A and RESULTS_B
are ``emformer_variants.results`` folders (``outputs/results/base-<sha>``, one per base):
their base rows are paired set by set (``base/base-<set>``). Prints each WER with its 95%
bootstrap interval over utterances, B - A in points with the paired interval (the same
resampled utterances for both; ``*`` when the interval excludes 0), and both WERs and their
paired difference per speaker when there are 2 to ``--speakers`` of them (default 12: held-out
voices, not a corpus's hundreds). ``--only`` pools the named speakers alone (for example the
voices of a held-out set that a model never trained on).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.metrics.bootstrap import (
    DEFAULT_REPLICATES,
    paired_delta_interval,
    utterance_errors,
    wer_interval,
)


def read_hyps(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "hyps.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: not found; pass an evaluate.py run folder or its hyps.jsonl")
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for row in rows:
            row["ref"], row["hyp"], row["audio"]  # noqa: B018 - the fields compare reads
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not an evaluate.py hyps.jsonl ({type(e).__name__}: {e})") from None
    return rows


def utterance_key(row: dict) -> tuple:
    """One utterance, whichever checkout decoded it: the last three parts of its audio path
    (corpus folder, split, file) and its reference, so runs of the same corpus from a git
    worktree or a clone pair with runs from the main checkout."""
    return Path(row["audio"]).parts[-3:], row["ref"]


def speaker(row: dict) -> str:
    """The row's speaker ("" when evaluate.py's data had none)."""
    return str(row.get("speaker", ""))


def compare(a: list[dict], b: list[dict], replicates: int = DEFAULT_REPLICATES) -> dict:
    """WER of each and the paired B - A difference, overall and per speaker (fractions)."""
    if [utterance_key(r) for r in a] != [utterance_key(r) for r in b]:
        raise UserError("the two evaluations decoded different utterances (or in another order); "
                        "compare runs of the same data, split and max_utterances")
    refs = [r["ref"] for r in a]
    ea, words = utterance_errors(refs, [r["hyp"] for r in a])
    eb, _ = utterance_errors(refs, [r["hyp"] for r in b])
    out = {"utterances": len(a), "a": wer_interval(ea, words, replicates=replicates),
           "b": wer_interval(eb, words, replicates=replicates),
           "delta": paired_delta_interval(ea, eb, words, replicates=replicates), "speakers": {}}
    speakers = sorted({speaker(r) for r in a})
    if len(speakers) > 1:
        for s in speakers:
            idx = np.array([i for i, r in enumerate(a) if speaker(r) == s])
            out["speakers"][s] = {"utterances": len(idx), "a": ea[idx].sum() / words[idx].sum(),
                                  "b": eb[idx].sum() / words[idx].sum(),
                                  "delta": paired_delta_interval(ea[idx], eb[idx], words[idx],
                                                                 replicates=replicates)}
    return out


def only_speakers(rows: list[dict], speakers: list[str], label: str) -> list[dict]:
    """The rows of ``speakers``; a ``UserError`` naming any speaker the run does not have."""
    have, wanted = {speaker(r) for r in rows}, set(speakers)
    missing = sorted(wanted - have)
    if missing:
        raise UserError(f"--only: {label} has no speaker {', '.join(missing)}; "
                        f"it has {', '.join(sorted(have))}")
    return [r for r in rows if speaker(r) in wanted]


def base_runs(path: str | Path) -> dict[str, Path] | None:
    """A results folder's evaluations of its base, by set, or None if ``path`` is not one."""
    path = Path(path)
    if not (path / "base.json").is_file():
        return None
    return {d.name.removeprefix("base-"): d for d in sorted((path / "base").glob("base-*"))
            if (d / "hyps.jsonl").is_file()}


def _fmt(iv) -> str:
    return f"{100 * iv.value:.2f}% [{100 * iv.low:.1f}, {100 * iv.high:.1f}]"


def _delta(iv) -> str:
    star = "*" if iv.excludes(0.0) else ""
    return f"{100 * iv.value:+.2f} points [{100 * iv.low:+.1f}, {100 * iv.high:+.1f}]{star}"


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="evaluate.py run folder (or hyps.jsonl), or a results folder: "
                                  "the reference")
    parser.add_argument("b", help="the other run (same utterances) or results folder")
    parser.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES)
    parser.add_argument("--speakers", type=int, default=12, help="per-speaker lines up to this many speakers")
    parser.add_argument("--only", nargs="+", metavar="SPEAKER", default=None,
                        help="compare the utterances of these speakers only, pooled (with results "
                             "folders: in the sets that have them)")
    args = parser.parse_args(argv)
    sets_a, sets_b = base_runs(args.a), base_runs(args.b)
    if (sets_a is None) != (sets_b is None):
        raise UserError(f"{args.a if sets_a is None else args.b}: not a results folder like the other "
                        "(base.json); compare two evaluate.py runs or two results folders")
    if sets_a is None:
        pairs = [(args.a, args.b)]
    else:
        common = [name for name in sets_a if name in sets_b]
        if not common:
            raise UserError(f"{args.a} and {args.b} scored no set in common (base/base-<set>); "
                            "run python -m emformer_variants.results --rows base with the same --sets")
        pairs = [(sets_a[name], sets_b[name]) for name in common]
    for run_a, run_b in pairs:
        a, b = read_hyps(run_a), read_hyps(run_b)
        if len(pairs) > 1:
            if args.only and not set(args.only) <= {speaker(r) for r in a}:
                continue
            print(f"== {Path(run_a).name.removeprefix('base-')}")
        if args.only:
            a, b = only_speakers(a, args.only, str(run_a)), only_speakers(b, args.only, str(run_b))
        report(compare(a, b, args.replicates), str(run_a), str(run_b), args.speakers)
    return 0


def report(res: dict, label_a: str, label_b: str, max_speakers: int) -> None:
    print(f"utterances: {res['utterances']}")
    print(f"A: {_fmt(res['a'])}   {label_a}")
    print(f"B: {_fmt(res['b'])}   {label_b}")
    print(f"B - A: {_delta(res['delta'])}")
    for s, v in res["speakers"].items() if len(res["speakers"]) <= max_speakers else ():
        print(f"  {s}: {100 * v['a']:.2f}% -> {100 * v['b']:.2f}%, {_delta(v['delta'])} "
              f"({v['utterances']} utterances)")


if __name__ == "__main__":
    sys.exit(main())
