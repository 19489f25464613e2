"""Latency figures from evaluation rows (``hyps.jsonl``): pure functions -> matplotlib Figures.

Each row carries per-chunk compute times (``features_ms``, ``encoder_ms``, ``decoder_ms``,
``chunk_ms`` = their sum), ``ttft_s`` and ``rtf``. Figures:
- ``latency_cdf``: CDF of per-chunk compute latency for each pipeline component and the total;
- ``ttft``: distribution of time to first token (simulated live stream);
- ``rtf``: real-time factor per utterance against its duration;
- ``latency_over_time``: per-chunk total latency in decoding order (warm-up, drift, hiccups)
  and against the chunk's position in its utterance (growth while the left context fills).
Uses matplotlib's object API (no pyplot state, Agg canvas), so it is safe in any process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

COMPONENTS = ("features", "encoder", "decoder")


def _cdf(ax, values, label: str) -> None:
    v = np.sort(np.asarray(values, dtype=float))
    if v.size:
        ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=label)


def latency_cdf(rows: list[dict], segment_ms: float | None = None) -> Figure:
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for part in COMPONENTS:
        _cdf(ax, [x for r in rows for x in r.get(f"{part}_ms", [])], part)
    total = [x for r in rows for x in r["chunk_ms"]]
    _cdf(ax, total, "total")
    if total:
        for q in (50, 90, 99):
            ax.axvline(np.percentile(total, q), color="grey", lw=0.6, ls=":")
    if segment_ms:
        ax.axvline(segment_ms, color="red", lw=1, ls="--", label=f"chunk duration {segment_ms:.0f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("compute latency per chunk (ms, log scale); dotted: total p50/p90/p99")
    ax.set_ylabel("fraction of chunks")
    ax.set_title("Chunk latency CDF per pipeline component")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def ttft(rows: list[dict], algorithmic_s: float | None = None) -> Figure:
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    values = [r["ttft_s"] for r in rows if r.get("ttft_s") is not None]
    if values:
        ax.hist(values, bins=min(40, max(5, len(values) // 3)), color="tab:blue", alpha=0.8)
        ax.axvline(float(np.median(values)), color="black", lw=1, label=f"median {np.median(values):.3f} s")
    if algorithmic_s:
        ax.axvline(algorithmic_s, color="red", lw=1, ls="--",
                   label=f"algorithmic latency {algorithmic_s:.2f} s")
    ax.set_xlabel("time to first token (s, from stream start; simulated live stream)")
    ax.set_ylabel("utterances")
    ax.set_title(f"Time to first token ({len(values)} of {len(rows)} utterances emitted a token)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rtf(rows: list[dict]) -> Figure:
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    ax.scatter([r["audio_s"] for r in rows], [r["rtf"] for r in rows], s=10, alpha=0.7)
    if rows:
        med = float(np.median([r["rtf"] for r in rows]))
        ax.axhline(med, color="black", lw=1, label=f"median {med:.3f}")
    ax.axhline(1.0, color="red", lw=1, ls="--", label="real time")
    ax.set_xlabel("utterance duration (s)")
    ax.set_ylabel("real-time factor (compute / audio)")
    ax.set_yscale("log")
    ax.set_title("RTF per utterance")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def latency_over_time(rows: list[dict], segment_ms: float | None = None) -> Figure:
    fig = Figure(figsize=(9, 4.2))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    total = np.asarray([x for r in rows for x in r["chunk_ms"]], dtype=float)
    ax1.plot(np.arange(total.size), total, lw=0.5, alpha=0.6, label="total per chunk")
    if total.size >= 25:
        w = 25
        rolling = np.array([np.median(total[max(0, i - w + 1):i + 1]) for i in range(total.size)])
        ax1.plot(np.arange(total.size), rolling, color="black", lw=1, label=f"rolling median ({w})")
    if segment_ms:
        ax1.axhline(segment_ms, color="red", lw=1, ls="--", label="chunk duration")
    ax1.set_xlabel("chunk, in decoding order (all utterances)")
    ax1.set_ylabel("compute latency (ms)")
    ax1.set_title("Per-chunk latency over time")
    ax1.legend(fontsize=8)
    pos = [k for r in rows for k in range(len(r["chunk_ms"]))]
    ax2.scatter(pos, total, s=4, alpha=0.4)
    ax2.set_xlabel("chunk index within utterance")
    ax2.set_title("By position in utterance")
    fig.tight_layout()
    return fig


def latency_figures(rows: list[dict], segment_ms: float | None = None,
                    algorithmic_s: float | None = None) -> dict[str, Figure]:
    return {
        "latency_cdf": latency_cdf(rows, segment_ms),
        "ttft": ttft(rows, algorithmic_s),
        "rtf": rtf(rows),
        "latency_over_time": latency_over_time(rows, segment_ms),
    }


def write_latency_plots(rows: list[dict], out_dir: str | Path, segment_ms: float | None = None,
                        algorithmic_s: float | None = None) -> list[Path]:
    """Save every figure as ``<out_dir>/<name>.png``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in latency_figures(rows, segment_ms, algorithmic_s).items():
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths
