"""Shared entry-point plumbing: config resolvers, one-line errors, run-dir outputs."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from emformer_variants.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

if not OmegaConf.has_resolver("ev_root"):
    OmegaConf.register_new_resolver("ev_root", lambda: str(PROJECT_ROOT))
if not OmegaConf.has_resolver("ev_wandb_offline"):
    from emformer_variants.wandb_setup import wandb_offline

    OmegaConf.register_new_resolver("ev_wandb_offline", wandb_offline)
if not OmegaConf.has_resolver("ev_pid"):  # run-dir names: timestamp + pid never collide
    OmegaConf.register_new_resolver("ev_pid", os.getpid)

log = logging.getLogger("emformer_variants")


def one_line_errors(fn):
    """Print a UserError (also one raised in a DataLoader worker) as one line; exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised unless a UserError is behind it
            e = _user_error_in_chain(exc)
            if e is None:
                raise
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            msg = lines[-1] if lines else "unknown error"
            prefix = "emformer_variants.errors.UserError: "
            msg = msg[len(prefix):] if msg.startswith(prefix) else msg
            print(f"error: {msg}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def _user_error_in_chain(exc: BaseException) -> BaseException | None:
    """The UserError behind ``exc`` (Hydra's InstantiationException wraps it as __cause__)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def set_threads(n: int) -> None:
    torch.set_num_threads(max(1, int(n)))


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


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
