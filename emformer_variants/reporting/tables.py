"""The metrics table train.py and evaluate.py print: one row per metric, one column per model."""

from __future__ import annotations

_TABLE_KEYS = ["wer", "cer", "rtf", "ttft_s", "chunk_ms_p50", "chunk_ms_p90", "chunk_ms_p99",
               "gflops_per_audio_s", "gflops_per_audio_s_encoder", "gflops_per_audio_s_encoder_analytic",
               "params_total", "params_active", "kv_cache_bytes", "peak_rss_mb", "num_utterances",
               "audio_s", "features_ms_per_chunk", "encoder_ms_per_chunk", "decoder_ms_per_chunk"]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


MAX_SPEAKER_ROWS = 8


def metrics_table(columns: dict[str, dict]) -> str:
    """Markdown table: one row per metric, one column per model (e.g. base / fine-tuned)."""
    names = list(columns)
    keys = [k for k in _TABLE_KEYS if any(k in c for c in columns.values())]
    keys += sorted({k for c in columns.values() for k, v in c.items() if not isinstance(v, dict)}
                   - set(keys) - {"ref_words"})  # nested (e.g. wer_by_speaker): metrics.json only
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(columns[n].get(k)) for n in names) + " |")
    # A few speakers (the held-out voices): one row each; many: metrics.json only.
    speakers = sorted({s for c in columns.values() for s in c.get("wer_by_speaker", {})})
    if len(speakers) <= MAX_SPEAKER_ROWS:
        for s in speakers:
            lines.append(f"| wer [{s}] | " + " | ".join(
                _fmt(columns[n].get("wer_by_speaker", {}).get(s)) for n in names) + " |")
    return "\n".join(lines)
