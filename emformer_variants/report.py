"""Gather runs into one table and Pareto plots:
python -m emformer_variants.report DIR... [--out DIR] [--csv OUT.csv] [--no-plots]

Each DIR is a run folder (or a folder of run folders: a sweep) holding ``metrics.json``
from train.py (rows: base / after_surgery / fine_tuned) or evaluate.py (one row). Prints a
markdown table; ``--out`` (default: the one DIR given) receives ``report.md``, ``report.csv``
and four PNGs: WER against GFLOPs per audio second, RTF, K/V-cache bytes and active
parameters, with the Pareto front marked.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.reporting.runs import collect, markdown, write_csv, write_report
from emformer_variants.utils.paths import PROJECT_ROOT


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emformer_variants.report",
                                description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None,
                   help="folder for report.md/.csv and the PNGs (default: the one DIR given, "
                        "else outputs/report/<timestamp>)")
    p.add_argument("--csv", type=Path, default=None, help="also write the table here")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--rows", default="fine_tuned,evaluate",
                   help="row kinds to plot (base, after_surgery, fine_tuned, evaluate)")
    args = p.parse_args(argv)
    rows = collect(args.dirs)
    if not rows:
        raise UserError(f"no metrics.json under {[str(d) for d in args.dirs]}")
    print(markdown(rows))
    out = args.out
    if out is None:
        single = len(args.dirs) == 1 and args.dirs[0].is_dir()
        out = args.dirs[0] if single else \
            PROJECT_ROOT / "outputs" / "report" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    for line in write_report(out, rows, plots=not args.no_plots,
                             kinds=tuple(k.strip() for k in args.rows.split(",") if k.strip())):
        print(line)
    if args.csv:
        write_csv(rows, args.csv)
        print(f"csv: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
