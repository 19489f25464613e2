"""Run folders -> report rows: every ``metrics.json`` from train.py (rows base /
after_surgery / fine_tuned, and ``validation``: its best val/wer on the dev split with the
costs known without decoding, the only row of a run with eval.before/after=false) or
evaluate.py (one row), labelled by its variant and the
``variant.*`` overrides the run was started with (Hydra's ``.hydra/overrides.yaml``); written
as ``report.md``, ``report.csv`` and Pareto plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from emformer_variants.errors import UserError
from emformer_variants.surgery.registry import variant_name

COLUMNS = ["run", "row", "variant", "label", "split", "wer", "cer", "params_total", "params_active",
           "gflops_per_audio_s", "gflops_per_audio_s_encoder", "kv_cache_bytes", "rtf", "ttft_s",
           "chunk_ms_p50", "num_utterances"]


def variant_overrides(run_dir: Path) -> list[str]:
    """The run's ``variant.*`` overrides, shortened (``top_k=2``), from Hydra's record."""
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text()) if path.is_file() else []
    except yaml.YAMLError:
        overrides = []
    return [o.lstrip("+~")[len("variant."):] for o in overrides or []
            if isinstance(o, str) and o.lstrip("+~").startswith("variant.")]


def _label_rows(rows: list[dict]) -> None:
    """``label`` = variant + the overrides that tell its runs apart (those shared by every
    run of the variant, e.g. a sweep's fixed settings, are left out)."""
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        if r["row"] != "base":
            by_variant.setdefault(r["variant"], []).append(r)
    for variant, group in by_variant.items():
        runs = {r["run"]: r["_overrides"] for r in group}
        common = set.intersection(*(set(o) for o in runs.values())) if len(runs) > 1 else set()
        for r in group:
            r["label"] = " ".join([variant, *(o for o in r["_overrides"] if o not in common)])
    for r in rows:
        r.pop("_overrides")
        r.setdefault("label", "base")


def validation_row(summary: dict) -> dict | None:
    """A train.py summary's validation as a row: the best val/wer (else the last), the dev
    split, and the model costs train.py records (encoder GFLOPs from the analytic count)."""
    val = summary.get("val") or {}
    wer = val.get("val/wer_best", val.get("val/wer"))
    if wer is None:
        return None
    model = summary.get("model") or {}
    return {"split": "dev", "wer": wer, "cer": val.get("val/cer"),
            "num_utterances": val.get("val/num_utterances"),
            "params_total": model.get("params_total"), "params_active": model.get("params_active"),
            "gflops_per_audio_s_encoder": model.get("gflops_per_audio_s_encoder_analytic")}


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
            variant = data.get("variant_name", "")
            overrides = variant_overrides(path.parent)
            for row, m in data["results"].items():  # the base row is the base, not the variant
                rows.append({"run": run, "row": row, "variant": "base" if row == "base" else variant,
                             "split": data.get("split"), "_overrides": overrides, **m})
            val = validation_row(data)
            if val is not None:
                rows.append({"run": run, "row": "validation", "variant": variant, "_overrides": overrides,
                             **val})
        else:  # evaluate.py
            name = variant_name(data.get("variants", []))
            rows.append({"run": run, "row": "evaluate", "variant": name,
                         "_overrides": variant_overrides(path.parent), **data})
    _label_rows(rows)
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


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def plot_rows(rows: list[dict], kinds: tuple[str, ...] = ("fine_tuned", "evaluate")) -> list[dict]:
    """The points to plot: rows of the given kinds, plus the first base row as a reference
    (every train run evaluates the same base; one point is enough)."""
    chosen = [r for r in rows if r["row"] in kinds]
    if not chosen:  # e.g. a sweep run with eval.before/after=false: its validation is all there is
        chosen = [r for r in rows if r["row"] == "validation"]
    base = [r for r in rows if r["row"] == "base"]
    if base and "base" not in kinds:
        chosen.append(base[0])
    return chosen


def write_report(out_dir: Path, rows: list[dict], plots: bool = True,
                 kinds: tuple[str, ...] = ("fine_tuned", "evaluate")) -> list[str]:
    """``report.md``, ``report.csv`` and the Pareto PNGs into ``out_dir``; returns lines
    saying where each went."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(markdown(rows) + "\n")
    write_csv(rows, out_dir / "report.csv")
    lines = [f"report: {out_dir / 'report.md'} ({out_dir / 'report.csv'})"]
    if plots:
        from emformer_variants.reporting.pareto_plots import write_pareto_plots

        for stem, path in write_pareto_plots(plot_rows(rows, kinds), out_dir).items():
            lines.append(f"plot: {path}" if path else f"plot {stem}: skipped (no run has that metric)")
    return lines
