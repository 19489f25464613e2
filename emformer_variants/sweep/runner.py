"""Run a W&B sweep file here, without a W&B server.

    python -m emformer_variants.sweep sweeps/moe.yaml --count 4 [--seed 0] [key=value ...]

Expands the file (grid or random) into runs, composes every run's Hydra config first (a
bad key or value fails here, before any training), then runs the program once per run as
a subprocess, each in its own folder ``<sweep dir>/run-NNN``. At the end it writes
``sweep.md`` / ``sweep.csv`` (one row per run, sorted by the sweep's metric) and the
report with Pareto plots into the sweep folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.sweep.spec import SweepSpec, expand, load_sweep, to_overrides
from emformer_variants.sweep.validate import CONF_DIR, check_run_variant, compose_checked
from emformer_variants.utils.files import write_json_atomic
from emformer_variants.utils.hydra_run import metric_value
from emformer_variants.utils.paths import PROJECT_ROOT


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def plan(spec: SweepSpec, count: int | None, seed: int, method: str | None,
         extra: list[str]) -> list[dict]:
    """Every run's overrides, checked by composing its config. Fails before any run starts."""
    config_name = Path(spec.program).stem
    if not (CONF_DIR / f"{config_name}.yaml").is_file() or not (PROJECT_ROOT / spec.program).is_file():
        raise UserError(f"{spec.path}: program: {spec.program} is not an entry point of this project "
                        "(train.py or evaluate.py)")
    origin = {o: f"{spec.path}: command" for o in spec.fixed_overrides}
    origin.update({o: "command line" for o in extra})
    runs = []
    for i, point in enumerate(expand(spec, count, seed, method)):
        swept = to_overrides(point)
        for o in swept:
            origin[o] = f"{spec.path}: parameters.{_key(o)}"
        merged: dict[str, str] = {}
        for o in [*spec.fixed_overrides, *swept, *extra]:  # later wins, like Hydra
            merged.pop(_key(o), None)
            merged[_key(o)] = o
        overrides = list(merged.values())
        cfg = compose_checked(config_name, overrides, origin, where=str(spec.path))
        check_run_variant(cfg, f"{spec.path}: run {i} ({' '.join(swept)})")
        runs.append({"index": i, "params": point, "overrides": overrides,
                     "swept": [o for o in swept if o in overrides]})  # not replaced by an extra
    if not runs:
        raise UserError(f"{spec.path}: the sweep expands to no runs")
    return runs


def _run_one(spec: SweepSpec, run: dict, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(PROJECT_ROOT / spec.program), *run["overrides"],
           f"paths.output_dir={run_dir}"]
    start = time.perf_counter()
    with open(run_dir / "sweep_run.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    result = {"seconds": round(time.perf_counter() - start, 1), "returncode": proc.returncode,
              "dir": str(run_dir), "metric": None, "status": "ok"}
    metrics = run_dir / "metrics.json"
    if proc.returncode != 0 or not metrics.is_file():
        result["status"] = f"failed (exit {proc.returncode})"
        tail = (run_dir / "sweep_run.log").read_text().strip().splitlines()[-1:]
        result["error"] = tail[0] if tail else ""
        return result
    summary = json.loads(metrics.read_text())
    try:
        result["metric"] = metric_value(summary, spec.metric)
    except UserError as e:
        result["status"] = "no metric"
        result["error"] = str(e)
    result["fine_tuned_wer"] = summary.get("results", {}).get("fine_tuned", {}).get("wer")
    return result


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_rows(spec: SweepSpec, runs: list[dict]) -> list[dict]:
    """One row per run, best first by the sweep's metric (failed runs last)."""
    rows = [{"run": Path(r["dir"]).name, "status": r["status"],
             **{k: v for k, v in r["params"].items() if f"{k}={v}" in r["swept"]}, spec.metric: r["metric"],
             "fine_tuned/wer": r.get("fine_tuned_wer"), "seconds": r["seconds"]} for r in runs]
    sign = 1 if spec.goal == "minimize" else -1
    return sorted(rows, key=lambda r: (r[spec.metric] is None, sign * (r[spec.metric] or 0)))


def write_summary(spec: SweepSpec, rows: list[dict], out: Path) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    table = "\n".join(lines)
    (out / "sweep.md").write_text(f"# sweep {spec.name} ({spec.path}), {spec.metric} "
                                  f"({spec.goal})\n\n{table}\n")
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return table


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emformer_variants.sweep",
                                description="Run a W&B sweep file locally (grid or random), no server.")
    p.add_argument("sweep", type=Path, help="a W&B sweep file, e.g. sweeps/moe.yaml")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (win over the file)")
    p.add_argument("--count", type=int, default=None, help="runs: random draws, or the first N of a grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the random method")
    p.add_argument("--method", choices=["grid", "random"], default=None, help="override the file's method")
    p.add_argument("--out", type=Path, default=None,
                   help="sweep folder (default outputs/sweep/<name>/<timestamp>)")
    p.add_argument("--dry-run", action="store_true", help="check and print the runs, run nothing")
    args = p.parse_intermixed_args(argv)
    if args.count is not None and args.count < 1:
        raise UserError(f"--count {args.count}: must be >= 1")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UserError(f"{bad[0]!r}: extra arguments must be Hydra overrides key=value")

    spec = load_sweep(args.sweep)
    runs = plan(spec, args.count, args.seed, args.method, args.overrides)
    print(f"sweep {spec.name}: {len(runs)} run(s) of {spec.program}, checked; metric {spec.metric} "
          f"({spec.goal})")
    for r in runs:
        print(f"  run-{r['index']:03d}: {' '.join(r['overrides'])}")
    if args.dry_run:
        return 0

    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    out = (args.out or PROJECT_ROOT / "outputs" / "sweep" / spec.name / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "plan.json", {"sweep_file": str(spec.path), "seed": args.seed,
                                          "method": args.method or spec.method, "runs": runs})
    for r in runs:
        run_dir = out / f"run-{r['index']:03d}"
        print(f"[{r['index'] + 1}/{len(runs)}] {' '.join(r['swept'])} -> {run_dir}", flush=True)
        r.update(_run_one(spec, r, run_dir))
        detail = f"{spec.metric} {_fmt(r['metric'])}" if r["status"] == "ok" else \
            f"{r['status']}: {r.get('error', '')}"
        print(f"    {detail} ({r['seconds']} s)", flush=True)

    rows = summary_rows(spec, runs)
    print(write_summary(spec, rows, out))
    print(f"sweep summary: {out / 'sweep.md'} ({out / 'sweep.csv'})")
    from emformer_variants.reporting.runs import collect, write_report

    if any(r["status"] == "ok" for r in runs):
        for line in write_report(out, collect([out])):
            print(line)
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        print(f"{len(failed)} of {len(runs)} run(s) failed; logs: <run dir>/sweep_run.log",
              file=sys.stderr)
        return 1
    return 0
