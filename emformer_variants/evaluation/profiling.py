"""torch.profiler operator tables of the streaming decode (``evaluate.py profile=true``,
``python -m emformer_variants.bench --profile``).

The decode is ``engine.stream.stream_decode``; a hook runs each stage inside a
``record_function`` range (``stage:features``, ``stage:encoder``, ``stage:search``), so the
table shows the stages beside the operators they spend their time in.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from emformer_variants.data.audio import load_audio
from emformer_variants.engine.pipeline import Pipeline, build_pipeline
from emformer_variants.engine.stream import StreamHook, stream_decode


class _StageRanges(StreamHook):
    def stage(self, name: str):
        return record_function(f"stage:{name}")


def _decode(rec, pipe: Pipeline, wave: torch.Tensor) -> int:
    """Decode one utterance; returns its number of chunks."""
    return len(stream_decode(rec, wave, pipeline=pipe, hooks=(_StageRanges(),)).encoder_s)


@torch.inference_mode()
def profile_table(rec, pipe: Pipeline, waves: list[torch.Tensor], row_limit: int = 30) -> str:
    """Profile decoding ``waves`` (after one untimed warm-up pass) -> operator table text,
    sorted by self CPU time, with per-chunk averages of the three stages on top."""
    _decode(rec, pipe, waves[0][: rec.features.cfg.window_samples * 2])  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        chunks = sum(_decode(rec, pipe, w) for w in waves)
    events = prof.key_averages()
    lines = [f"decoder={pipe.name} encoder={pipe.encoder.name} threads={torch.get_num_threads()} "
             f"utterances={len(waves)} chunks={chunks}"]
    for ev in events:
        if ev.key.startswith("stage:"):
            lines.append(f"{ev.key:16s} {ev.cpu_time_total / 1000 / chunks:8.2f} ms per chunk (CPU total)")
    lines.append(events.table(sort_by="self_cpu_time_total", row_limit=row_limit))
    return "\n".join(lines)


def write_profile(rec, utts, path: str | Path, beam: int = 10, decoder: str = "stock",
                  max_utterances: int = 3) -> Path:
    waves = [load_audio(u.audio) for u in utts[:max_utterances]]
    text = profile_table(rec, build_pipeline(rec, decoder, beam), waves)
    path = Path(path)
    path.write_text(text + "\n")
    return path
