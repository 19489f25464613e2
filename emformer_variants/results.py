"""The results table, from the real CLIs: python -m emformer_variants.results [--rows ...]

Each row is a fine-tuning recipe, ``conf/experiment/finetune/<row>.yaml`` (every file there is
a row): ``train.py`` applies the surgery to the shipped base and fine-tunes it (``surgery.pt``
is the variant before fine-tuning, ``final.pt`` after), then ``evaluate.py`` scores both
checkpoints in streaming mode on every evaluation set. The ``base`` row is
``evaluate.py ckpt=base``. A step whose
``metrics.json`` already exists is not run again, so an interrupted run picks up where it
stopped. Prints the markdown table and writes ``results.md`` / ``results.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.utils.files import write_json_atomic
from emformer_variants.utils.paths import PROJECT_ROOT

RECIPES = PROJECT_ROOT / "conf" / "experiment" / "finetune"
EVAL_SETS = {"test": ["split=test"], "test_voice": ["split=test_voice"], "asterisk": ["data=asterisk"]}
SURGERY_SETS = ["test"]  # the variant before fine-tuning: the test split is enough to show the drop


def rows() -> list[str]:
    """``base``, then every recipe in conf/experiment/finetune/ (``dense``, the control, first)."""
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    return ["base", *sorted(names, key=lambda n: n != "dense")]


def _run(cmd: list[str], out_dir: Path, log_path: Path) -> dict:
    """Run one CLI step unless its metrics.json exists; a failed step's folder is removed."""
    metrics = out_dir / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    if out_dir.exists():  # an interrupted earlier attempt: start it again
        shutil.rmtree(out_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not metrics.is_file():
        raise UserError(f"{' '.join(cmd[1:])} failed (exit {proc.returncode}); see {log_path}")
    print(f"[results] {out_dir.relative_to(out_dir.parents[1])} done in {time.perf_counter() - start:.0f} s",
          flush=True)
    return json.loads(metrics.read_text())


def run_row(row: str, out: Path, extra: list[str], eval_extra: list[str],
            sets: list[str] | None = None) -> dict:
    """Train (unless base) and evaluate one row; returns {stage: {set: metrics}} plus commands."""
    py = sys.executable
    log = out / row / "commands.log"
    commands: list[str] = []
    stages: dict[str, str] = {}
    if row == "base":
        stages["base"] = "base"
    else:
        train_dir = out / row / "train"
        cmd = [py, "train.py", f"experiment=finetune/{row}", *extra]
        commands.append("python " + " ".join(cmd[1:]))
        _run([*cmd, f"paths.output_dir={train_dir}"], train_dir, log)
        if (train_dir / "surgery.pt").is_file():  # train.py writes it when the variant has a surgery
            stages["surgery"] = str(train_dir / "surgery.pt")
        stages["final"] = str(train_dir / "final.pt")
    result: dict = {"stages": {}, "commands": commands}
    for stage, ckpt in stages.items():
        for name, overrides in EVAL_SETS.items():
            if (stage == "surgery" and name not in SURGERY_SETS) or (sets and name not in sets):
                continue
            flops = "flops=true" if name == "test" else "flops=false"  # once per checkpoint is enough
            cmd = [py, "evaluate.py", f"ckpt={ckpt}", *overrides, flops, *eval_extra]
            if stage != "surgery":
                shown = "python " + " ".join(cmd[1:]).replace(str(out / row / "train"), "<run>")
                commands.append(shown)
            ev_dir = out / row / f"{stage}-{name}"
            result["stages"].setdefault(stage, {})[name] = _run([*cmd, f"paths.output_dir={ev_dir}"],
                                                                ev_dir, log)
    return result


def _pct(m: dict | None) -> str:
    return "-" if not m else f"{100 * m['wer']:.1f}"


def table(results: dict[str, dict]) -> str:
    """One markdown row per results row: WER before -> after fine-tuning on each set, then the
    cost columns of the final model (params, GFLOPs per audio second, K/V bytes, RTF)."""
    head = ("| row | WER test (%) | WER test_voice (%) | WER Asterisk (%) | params total / active | "
            "GFLOPs per audio s (all / encoder) | KV bytes per stream | RTF |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for row, res in results.items():
        stages = res["stages"]
        before = stages.get("surgery") or stages.get("base") or {}  # dense: no surgery stage
        after = stages.get("final") or stages.get("base")
        cells = []
        for name in EVAL_SETS:
            b, a = _pct(before.get(name)), _pct(after.get(name))
            cells.append(a if before is after or b == "-" else f"{b} → {a}")
        t = after["test"]
        cells += [f"{t['params_total']:,} / {t['params_active']:,}",
                  f"{t['gflops_per_audio_s']:.3f} / {t['gflops_per_audio_s_encoder']:.3f}",
                  f"{t['kv_cache_bytes']:,}", f"{t['rtf']:.3f}"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    known = rows()
    p.add_argument("--rows", nargs="+", default=known, help=f"rows to run (default: all of {known})")
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "outputs" / "results")
    p.add_argument("--jobs", type=int, default=2, help="rows run at once (each evaluation uses 1 thread)")
    p.add_argument("--train", nargs="*", default=[], help="extra overrides for every train.py run")
    p.add_argument("--eval", nargs="*", default=[], help="extra overrides for every evaluate.py run")
    p.add_argument("--sets", nargs="+", choices=list(EVAL_SETS), default=None,
                   help="evaluation sets to run, test among them (default: all; others show -)")
    args = p.parse_args(argv)
    unknown = [r for r in args.rows if r not in known]
    if unknown:
        raise UserError(f"--rows {unknown}: unknown; choose from {known}")
    if args.sets and "test" not in args.sets:
        raise UserError(f"--sets {args.sets}: include test (the cost columns come from it)")
    out = args.out.resolve()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {r: pool.submit(run_row, r, out, args.train, args.eval, args.sets) for r in args.rows}
        results = {r: f.result() for r, f in futures.items()}
    md = table(results)
    cmds = "\n".join(f"- {r}: " + "; ".join(f"`{c}`" for c in res["commands"])
                     for r, res in results.items())
    (out / "results.md").write_text(md + "\n\nCommands per row:\n" + cmds + "\n")
    write_json_atomic(out / "results.json", results)
    print(md)
    print(f"results: {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
