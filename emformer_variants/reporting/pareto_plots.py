"""Pareto plots of report rows: WER against a cost, front marked, points labelled."""

from __future__ import annotations

from pathlib import Path

from emformer_variants.metrics.pareto import pareto_front, usable

# file stem -> (cost column, axis label, short name for the title)
PLOTS = {
    "pareto_wer_vs_gflops": ("gflops_per_audio_s", "GFLOPs per audio second", "GFLOPs/s"),
    "pareto_wer_vs_encoder_gflops": ("gflops_per_audio_s_encoder", "encoder GFLOPs per audio second",
                                     "encoder GFLOPs/s"),
    "pareto_wer_vs_rtf": ("rtf", "real-time factor (compute s / audio s)", "RTF"),
    "pareto_wer_vs_kv_bytes": ("kv_cache_bytes", "K/V cache bytes per stream", "K/V cache bytes"),
    "pareto_wer_vs_active_params": ("params_active", "active parameters", "active params"),
}


def pareto_plot(rows: list[dict], cost: str, xlabel: str, path: Path, title: str = "") -> list[int] | None:
    """Scatter WER (y) against ``cost`` (x), one colour per variant, the front as a step
    line with ringed points, each point labelled. Returns the front's row indices, or None
    (nothing written) when no row has both numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.get(cost) for r in rows]
    ys = [r.get("wer") for r in rows]
    front = pareto_front(xs, ys)
    ok = [i for i in range(len(rows)) if usable(xs[i]) and usable(ys[i])]
    if not ok:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=110)
    variants = sorted({rows[i].get("variant") or "?" for i in ok})
    colours = {v: plt.cm.tab10(k % 10) for k, v in enumerate(variants)}
    for v in variants:
        pts = [i for i in ok if (rows[i].get("variant") or "?") == v]
        ax.scatter([xs[i] for i in pts], [100 * ys[i] for i in pts], color=colours[v], label=v, s=36,
                   zorder=3)
    if front:
        ax.step([xs[i] for i in front], [100 * ys[i] for i in front], where="post", color="black",
                lw=1, ls="--", zorder=2, label="Pareto front")
        ax.scatter([xs[i] for i in front], [100 * ys[i] for i in front], s=130, facecolors="none",
                   edgecolors="black", lw=1.2, zorder=4)
    for i in ok:
        ax.annotate(rows[i].get("label") or rows[i].get("variant") or "?", (xs[i], 100 * ys[i]),
                    textcoords="offset points", xytext=(5, 4), fontsize=7)
    lo, hi = min(xs[i] for i in ok), max(xs[i] for i in ok)
    if lo > 0 and hi / lo > 20:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.3, hi * 3)  # room on the right for the labels
    else:
        span = (hi - lo) or abs(hi) or 1.0
        ax.set_xlim(lo - 0.08 * span, hi + 0.45 * span)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("WER (%)")
    ax.set_title(title or "WER vs cost (lower-left is better)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return front


def write_pareto_plots(rows: list[dict], out_dir: Path) -> dict[str, Path | None]:
    """Every plot into ``out_dir``; value None for a plot no row has data for."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path | None] = {}
    for stem, (cost, label, short) in PLOTS.items():
        path = out_dir / f"{stem}.png"
        title = f"WER vs {short}: Pareto front ringed (lower-left is better)"
        written[stem] = path if pareto_plot(rows, cost, label, path, title) is not None else None
    return written
