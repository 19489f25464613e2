"""The results tables, from the real CLIs: python -m emformer_variants.results [--rows ...]

Rows: ``base``, then every recipe in ``conf/experiment/finetune/<row>.yaml`` (``dense``, the
control, first). Each row with a surgery is scored at two stages:

- ``surgery``: the variant straight after surgery, no training:
  ``evaluate.py ckpt=base surgery=<row>`` (calibrated as train.py does) on the first set, which
  writes ``surgery.pt``; the other sets score that same ``surgery.pt``;
- ``final``: after the recovery recipe, ``train.py experiment=finetune/<row>``, then
  ``evaluate.py ckpt=<run>/final.pt`` on every set.

Sets: ``test``, ``test_everyday``, ``test_voice`` (per voice too) and ``asterisk``; on request
``voices_nonfree`` (per voice too; needs ``scripts/setup.sh --nonfree-voices``). Every WER
gets a 95% bootstrap interval over utterances, and every variant the paired bootstrap
interval of its difference to the base on the same utterances (``metrics.bootstrap``, from
each run's ``hyps.jsonl``); a difference whose interval excludes 0 is marked ``*``.

A step whose ``metrics.json`` already exists is not run again, so an interrupted run picks up
where it stopped; an interrupted training run goes on from its ``last.ckpt``. The results
folder belongs to one base: the default ``--out`` is ``outputs/results/base-<sha>`` (the first
10 hex digits of the base checkpoint's SHA-256), so a new base starts a new table, and a folder
made with another base is refused (``base.json``).
Writes ``results.md``, ``results.json`` and the Pareto PNGs (WER on test
against encoder GFLOPs per audio second, chunk latency and K/V-cache bytes) into ``--out``.
Smaller runs: ``--rows``, ``--sets``, ``--max-utterances``, ``--steps``; ``--no-run`` writes the
tables from the steps already done, running nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from emformer_variants.compare import utterance_key
from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.metrics.bootstrap import paired_delta_interval, utterance_errors, wer_interval
from emformer_variants.utils.files import write_json_atomic
from emformer_variants.utils.paths import PROJECT_ROOT
from emformer_variants.utils.run_dir import release_ended_claim

RECIPES = PROJECT_ROOT / "conf" / "experiment" / "finetune"
VARIANTS = PROJECT_ROOT / "conf" / "variant"
EVAL_SETS = {"test": ["split=test"], "test_everyday": ["split=test_everyday"],
             "test_voice": ["split=test_voice"], "asterisk": ["data=asterisk"],
             "voices_nonfree": ["data=voices_nonfree"]}
DEFAULT_SETS = ["test", "test_everyday", "test_voice", "asterisk"]
PER_VOICE_SETS = ("test_voice", "voices_nonfree")
STAGES = ("base", "surgery", "final")
# Pareto plots: file stem -> (cost key of the test metrics, axis label, short name)
PARETO = {
    "pareto_wer_vs_encoder_gflops": ("gflops_per_audio_s_encoder", "encoder GFLOPs per audio second",
                                     "encoder GFLOPs/s"),
    "pareto_wer_vs_latency": ("chunk_ms_p50", "compute latency per chunk, p50 (ms)", "chunk latency"),
    "pareto_wer_vs_kv_bytes": ("kv_cache_bytes", "K/V cache bytes per stream", "K/V cache bytes"),
}


def base_identity(eval_extra: list[str]) -> dict:
    """The base the rows start from: ``model.ckpt=`` among the evaluate overrides, else the
    shipped checkpoint; its SHA-256 (file bytes). With ``model=`` and no ``model.ckpt=``, the
    override itself names the base."""
    ckpt = next((o.split("=", 1)[1] for o in reversed(eval_extra) if o.startswith("model.ckpt=")), None)
    model = next((o for o in reversed(eval_extra) if o.startswith("model=")), None)
    if ckpt is None and model is not None:
        return {"base": model, "sha256": hashlib.sha256(model.encode()).hexdigest()}
    path = Path(ckpt) if ckpt else PROJECT_ROOT / "checkpoints" / "tiny_base.pt"
    if not path.is_file():
        raise UserError(f"base checkpoint {path}: not found; pass --eval model.ckpt=PATH "
                        "(and --train the same)")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"base": str(path), "sha256": digest.hexdigest()}


def claim_out(out: Path, base: dict) -> None:
    """Record ``base`` in ``out/base.json``, or refuse a folder made with another base."""
    record = out / "base.json"
    if record.is_file():
        made = json.loads(record.read_text())
        if made.get("sha256") != base["sha256"]:
            raise UserError(f"--out {out}: holds results of another base ({made.get('base')}, sha256 "
                            f"{str(made.get('sha256'))[:10]}); this base is {base['base']} "
                            f"({base['sha256'][:10]}): choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, base)


def rows() -> list[str]:
    """``base``, then every recipe in conf/experiment/finetune/ (``dense``, the control, first)."""
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    return ["base", *sorted(names, key=lambda n: n != "dense")]


def has_surgery(row: str) -> bool:
    return row not in ("base", "dense")


def run_step(cmd: list[str], out_dir: Path, log_path: Path, run: bool = True,
             keep: bool = False) -> dict | None:
    """Run one CLI step (``cmd`` writes ``out_dir``) unless its metrics.json exists; a failed
    step's folder is removed and the error names ``log_path``, where its output went.
    With ``run=False`` nothing runs: the metrics when they exist, else None. ``keep``: the
    folder holds an interrupted run that ``cmd`` resumes (not removed)."""
    metrics = out_dir / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    if not run:
        return None
    if out_dir.exists() and not keep:  # an interrupted earlier attempt: start it again
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


def _resume_args(train_dir: Path) -> list[str]:
    """``ckpt_path=<last.ckpt>`` when ``train_dir`` holds an interrupted training run (a
    last.ckpt, no metrics.json), so an interrupted recipe goes on from its last checkpoint."""
    last = train_dir / "checkpoints" / "last.ckpt"
    if (train_dir / "metrics.json").is_file() or not last.is_file():
        return []
    release_ended_claim(train_dir)
    return [f"ckpt_path={last}"]


def run_row(row: str, out: Path, sets: list[str], train_extra: list[str], eval_extra: list[str],
            stages: tuple[str, ...] = STAGES, run: bool = True) -> dict:
    """Evaluate one row at its stages; returns {"stages": {stage: {set: eval dir}}, "commands"}.
    ``run=False``: only the steps already done (the table from what exists)."""
    py = sys.executable
    log = out / row / "commands.log"
    commands: list[str] = []
    result: dict = {"stages": {}, "commands": commands}

    def evaluate(stage: str, name: str, ckpt_args: list[str]) -> None:
        flops = "flops=true" if name == sets[0] else "flops=false"  # once per checkpoint is enough
        cmd = [py, "evaluate.py", *ckpt_args, *EVAL_SETS[name], flops, *eval_extra]
        commands.append("python " + " ".join(cmd[1:]).replace(str(out / row), "<row>"))
        ev_dir = out / row / f"{stage}-{name}"
        if run_step([*cmd, f"paths.output_dir={ev_dir}"], ev_dir, log, run) is not None:
            result["stages"].setdefault(stage, {})[name] = str(ev_dir)

    if row == "base":
        if "base" in stages:
            for name in sets:
                evaluate("base", name, ["ckpt=base"])
        return result
    if has_surgery(row) and "surgery" in stages:
        first = out / row / f"surgery-{sets[0]}"
        if run and not (first / "metrics.json").is_file() and not (VARIANTS / f"{row}.yaml").is_file():
            raise UserError(f"row {row}: no conf/variant/{row}.yaml for its after-surgery stage")
        evaluate("surgery", sets[0], ["ckpt=base", f"surgery={row}"])
        for name in sets[1:]:  # the very weights the first set scored
            evaluate("surgery", name, [f"ckpt={first / 'surgery.pt'}"])
    if "final" in stages:
        train_dir = out / row / "train"
        cmd = [py, "train.py", f"experiment=finetune/{row}", *train_extra]
        commands.append("python " + " ".join(cmd[1:]))
        resume = _resume_args(train_dir) if run else []
        if run_step([*cmd, *resume, f"paths.output_dir={train_dir}"], train_dir, log, run,
                    keep=bool(resume)) is not None:
            for name in sets:
                evaluate("final", name, [f"ckpt={train_dir / 'final.pt'}"])
    return result


# ---------------------------------------------------------------- statistics

def read_errors(ev_dir: str | Path) -> dict[tuple, tuple[int, int, str]]:
    """{utterance: (word edits, reference words, speaker)} per utterance of an evaluate.py run,
    keyed as ``compare`` pairs them (``utterance_key``)."""
    rows = [json.loads(line) for line in (Path(ev_dir) / "hyps.jsonl").read_text().splitlines() if line]
    edits, words = utterance_errors([r["ref"] for r in rows], [r["hyp"] for r in rows])
    return {utterance_key(r): (int(e), int(w), r.get("speaker") or "")
            for r, e, w in zip(rows, edits, words, strict=True)}


def _interval(iv) -> dict:
    return {"value": iv.value, "low": iv.low, "high": iv.high}


def score(ev_dir: str | Path, base_dir: str | Path | None, replicates: int, seed: int) -> dict:
    """An evaluation's metrics with the WER's bootstrap interval and, given the base's run on
    the same set, the paired interval of WER(this) - WER(base) over the shared utterances."""
    metrics = json.loads((Path(ev_dir) / "metrics.json").read_text())
    errs = read_errors(ev_dir)
    e = [v[0] for v in errs.values()]
    w = [v[1] for v in errs.values()]
    out = {**metrics, "wer_interval": _interval(wer_interval(e, w, replicates=replicates, seed=seed))}
    if base_dir is not None and Path(base_dir).resolve() != Path(ev_dir).resolve():
        base = read_errors(base_dir)
        shared = [k for k in base if k in errs]
        if shared:
            delta = paired_delta_interval([base[k][0] for k in shared], [errs[k][0] for k in shared],
                                          [base[k][1] for k in shared], replicates=replicates, seed=seed)
            out["delta_vs_base"] = {**_interval(delta), "significant": delta.excludes(0.0),
                                    "num_utterances": len(shared)}
    return out


def gather(results: dict[str, dict], replicates: int, seed: int) -> dict[str, dict]:
    """{row: {stage: {set: scored metrics}}} from the run folders of ``results``."""
    base = results.get("base", {}).get("stages", {}).get("base", {})
    return {row: {stage: {name: score(d, base.get(name), replicates, seed) for name, d in by_set.items()}
                  for stage, by_set in res["stages"].items()}
            for row, res in results.items()}


# ---------------------------------------------------------------- tables and plots

def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def cell(m: dict | None) -> str:
    """``12.3 [11.0, 13.7]`` and, against the base, ``+1.2 [0.4, 2.0]*`` (``*``: significant)."""
    if not m:
        return "-"
    iv = m.get("wer_interval")
    text = _pct(m["wer"]) + (f" [{_pct(iv['low'])}, {_pct(iv['high'])}]" if iv else "")
    d = m.get("delta_vs_base")
    if d:
        text += (f"; Δ {100 * d['value']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
                 + ("*" if d["significant"] else ""))
    return text


def wer_table(scored: dict[str, dict], name: str) -> str:
    """One set: per row, WER after surgery and after recovery (base: its own WER)."""
    lines = ["| row | after surgery: WER % [95% CI]; Δ vs base | after recovery: WER % [95% CI]; Δ vs base |",
             "|---|---|---|"]
    for row, stages in scored.items():
        if row == "base":  # the reference, in both columns
            base = cell(stages.get("base", {}).get(name))
            lines.append(f"| base | {base} | {base} |")
            continue
        lines.append(f"| {row} | {cell(stages.get('surgery', {}).get(name))} | "
                     f"{cell(stages.get('final', {}).get(name))} |")
    return "\n".join(lines)


def voice_table(scored: dict[str, dict], name: str = "test_voice") -> str | None:
    """Corpus WER per held-out voice and their mean, per row and stage."""
    found = [(row, stage, by_set[name]) for row, stages in scored.items() for stage, by_set in stages.items()
             if name in by_set and by_set[name].get("wer_by_speaker")]
    if not found:
        return None
    voices = sorted({v for _, _, m in found for v in m["wer_by_speaker"]})
    lines = ["| row | stage | " + " | ".join(voices) + " | mean of voices |",
             "|---|---|" + "---|" * (len(voices) + 1)]
    for row, stage, m in found:
        per = [_pct(m["wer_by_speaker"][v]) if v in m["wer_by_speaker"] else "-" for v in voices]
        lines.append(f"| {row} | {stage} | " + " | ".join(per) + f" | {_pct(m['wer_speaker_mean'])} |")
    return "\n".join(lines)


def _final(stages: dict) -> dict:
    return stages.get("final") or stages.get("base") or {}


def cost_table(scored: dict[str, dict], name: str) -> str:
    """Costs of each row's final model, measured on set ``name``."""
    lines = ["| row | params total / active | GFLOPs per audio s (all / encoder) | KV bytes per stream | "
             "chunk ms p50 | RTF |", "|---|---|---|---|---|---|"]
    for row, stages in scored.items():
        t = _final(stages).get(name)
        if not t:
            continue
        g = t.get("gflops_per_audio_s")
        ge = t.get("gflops_per_audio_s_encoder")
        gf = "-" if g is None else f"{g:.3f} / {ge:.3f}"
        lines.append(f"| {row} | {t['params_total']:,} / {t['params_active']:,} | {gf} | "
                     f"{t['kv_cache_bytes']:,} | {t['chunk_ms_p50']:.2f} | {t['rtf']:.3f} |")
    return "\n".join(lines)


def markdown(scored: dict[str, dict], sets: list[str]) -> str:
    parts = ["WER in %; [95% bootstrap interval over utterances]; Δ: paired bootstrap difference to "
             "the base on the same utterances, * where its interval excludes 0."]
    for name in sets:
        parts += [f"\n### {name}\n", wer_table(scored, name)]
    for name in PER_VOICE_SETS:
        voices = voice_table(scored, name) if name in sets else None
        if voices:
            parts += [f"\n### {name} per held-out voice (WER %)\n", voices]
    parts += [f"\n### Costs of the final models (measured on {sets[0]})\n", cost_table(scored, sets[0])]
    return "\n".join(parts)


def write_pareto(scored: dict[str, dict], name: str, out: Path) -> list[Path]:
    """WER on ``name`` against each PARETO cost: base, after-surgery and recovered points."""
    from emformer_variants.reporting.pareto_plots import pareto_plot

    points = []
    for row, stages in scored.items():
        for stage, by_set in stages.items():
            if name in by_set:
                label = row if stage in ("base", "final") else f"{row} (surgery)"
                points.append({**by_set[name], "variant": row, "label": label})
    written = []
    for stem, (cost, xlabel, short) in PARETO.items():
        path = out / f"{stem}.png"
        title = f"WER ({name}) vs {short}: Pareto front ringed"
        if pareto_plot(points, cost, xlabel, path, title) is not None:
            written.append(path)
    return written


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    known = rows()
    p.add_argument("--rows", nargs="+", default=known, help=f"rows to run (default: all of {known})")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default: outputs/results/base-<first 10 of the base's sha256>)")
    p.add_argument("--jobs", type=int, default=2, help="rows run at once (each evaluation uses 1 thread)")
    p.add_argument("--sets", nargs="+", choices=list(EVAL_SETS), default=DEFAULT_SETS,
                   help=f"evaluation sets (default: {' '.join(DEFAULT_SETS)}); the first carries FLOPs "
                        "and the cost table")
    p.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES),
                   help="surgery alone needs no training run")
    p.add_argument("--max-utterances", type=int, default=None, help="utterances per evaluation set")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps of every recipe (validated at the end)")
    p.add_argument("--replicates", type=int, default=2000, help="bootstrap replicates")
    p.add_argument("--no-run", action="store_true",
                   help="run nothing: the tables and plots from the steps already done ('-' for the rest)")
    p.add_argument("--train", nargs="*", default=[], help="extra overrides for every train.py run")
    p.add_argument("--eval", nargs="*", default=[], help="extra overrides for every evaluate.py run")
    args = p.parse_args(argv)
    unknown = [r for r in args.rows if r not in known]
    if unknown:
        raise UserError(f"--rows {unknown}: unknown; choose from {known}")
    if args.max_utterances is not None and args.max_utterances < 1:
        raise UserError(f"--max-utterances {args.max_utterances}: must be >= 1")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps {args.steps}: must be >= 1")
    train = list(args.train)
    evaluate = list(args.eval)
    if args.steps is not None:
        train += [f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}"]
    if args.max_utterances is not None:
        evaluate.append(f"max_utterances={args.max_utterances}")
    base = base_identity(evaluate)
    out = (args.out or PROJECT_ROOT / "outputs" / "results" / f"base-{base['sha256'][:10]}").resolve()
    claim_out(out, base)
    order = ["base", *[r for r in args.rows if r != "base"]] if "base" in args.rows else args.rows
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {r: pool.submit(run_row, r, out, args.sets, train, evaluate, tuple(args.stages),
                                  not args.no_run) for r in order}
        results = {r: f.result() for r, f in futures.items()}
    scored = gather(results, args.replicates, seed=0)
    md = markdown(scored, args.sets)
    cmds = "\n".join(f"- {r}: " + "; ".join(f"`{c}`" for c in res["commands"]) for r, res in results.items())
    plots = write_pareto(scored, args.sets[0], out)
    (out / "results.md").write_text(md + "\n\nCommands per row:\n" + cmds + "\n")
    write_json_atomic(out / "results.json", {"sets": args.sets, "rows": scored,
                                             "commands": {r: res["commands"] for r, res in results.items()}})
    print(md)
    print(f"results: {out / 'results.md'}")
    for path in plots:
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
