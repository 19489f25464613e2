"""Gather runs into one table: python -m emformer_variants.report DIR... [--csv OUT.csv]

Each DIR is a run folder (or a folder of run folders) holding ``metrics.json`` from
train.py (rows: base / after_surgery / fine_tuned) or evaluate.py (one row). Prints a
markdown table; ``--csv`` also writes the rows as CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from emformer_variants.cli import one_line_errors
from emformer_variants.errors import UserError

COLUMNS = ["run", "row", "variant", "split", "wer", "cer", "params_total", "params_active",
           "gflops_per_audio_s", "gflops_per_audio_s_encoder", "kv_cache_bytes", "rtf", "ttft_s",
           "chunk_ms_p50", "num_utterances"]


def _variant_name(variants: list[dict]) -> str:
    return "+".join(v["name"] for v in variants) or "dense"


def collect(dirs: list[Path]) -> list[dict]:
    rows = []
    files = []
    for d in dirs:
        if d.is_file() and d.name == "metrics.json":
            files.append(d)
        elif d.is_dir():
            files.extend(sorted(d.rglob("metrics.json")))
        else:
            raise UserError(f"{d}: not a run folder or metrics.json")
    for path in files:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        run = str(path.parent)
        if "results" in data:  # train.py
            for row, m in data["results"].items():
                rows.append({"run": run, "row": row, "variant": data.get("variant_name", ""), **m})
        else:  # evaluate.py
            name = _variant_name(data.get("variants", []))
            rows.append({"run": run, "row": "evaluate", "variant": name,
                         **data})
    return rows


def _fmt(v) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--csv", type=Path, default=None)
    args = p.parse_args(argv)
    rows = collect(args.dirs)
    if not rows:
        raise UserError(f"no metrics.json under {[str(d) for d in args.dirs]}")
    print(markdown(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        print(f"csv: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
