"""Memory over a long live stream: decode one N-minute stream chunk by chunk (the same
``stream_decode`` evaluation uses) and record, through a stream hook, the bytes of the carried
encoder state after every chunk and, every few chunks, the process RSS.

    python -m emformer_variants.long_stream --minutes 10              # shipped base, TTS speech
    python -m emformer_variants.long_stream --ckpt PATH --audio a.wav b.flac --minutes 10
    python -m emformer_variants.long_stream --minutes 60 --decoder exact --precision int8 --endpoint

The stream is speech (offline TTS sentences, or the given files) tiled with 0.5 s pauses.
A streaming model must hold constant memory however long it runs: the Emformer state is a
fixed left-context cache (plus memory bank), so its size must stop changing after the first
chunks, and RSS must stay flat; only the transcript itself grows. Without endpoints the
search carries the whole transcript as one hypothesis, so its work per chunk grows; with
``--endpoint`` the hypothesis restarts at each endpoint and the per-chunk latency (p50/p99,
first minute against last minute) must stay flat too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from emformer_variants.engine.endpoint import EndpointConfig
from emformer_variants.engine.pipeline import Pipeline
from emformer_variants.engine.stream import Stream, StreamHook, stream_decode
from emformer_variants.errors import UserError
from emformer_variants.metrics.latency import percentiles
from emformer_variants.metrics.memory import current_rss_mb, peak_rss_mb

SENTENCES = [
    "it is a truth universally acknowledged that a single man in possession of a good fortune",
    "she was the youngest of the two daughters of a most affectionate indulgent father",
    "the family of dashwood had long been settled in sussex",
    "my dear mister bennet said his lady to him one day have you heard",
    "nothing could be more pleasant than the evening walk along the river",
    "they walked towards the house together and talked of the weather",
]


def tts_stream(seconds: float, pause_s: float = 0.5) -> torch.Tensor:
    """Offline TTS sentences (espeak voices) tiled with pauses to ``seconds`` of 16 kHz audio."""
    import torchaudio.functional as AF

    from emformer_variants.data.tts import default_voices, synthesize

    voices = [v for v in default_voices() if v.engine == "espeak"][:3]
    pieces = []
    for i, text in enumerate(SENTENCES):
        wave, sr = synthesize(voices[i % len(voices)], text)
        pieces.append(AF.resample(torch.from_numpy(wave).float(), sr, 16000))
    return tile(pieces, seconds, pause_s)


def tile(pieces: list[torch.Tensor], seconds: float, pause_s: float = 0.5) -> torch.Tensor:
    pause = torch.zeros(int(pause_s * 16000))
    out, total, i = [], 0, 0
    target = int(seconds * 16000)
    while total < target:
        for part in (pieces[i % len(pieces)], pause):
            out.append(part)
            total += part.numel()
        i += 1
    return torch.cat(out)[:target]


class _Memory(StreamHook):
    """Per chunk: the bytes of the carried encoder state and the length of the best
    hypothesis (tokens the search carries); every ``every`` chunks: RSS."""

    def __init__(self, every: int):
        self.every = every
        self.state_bytes: list[int] = []
        self.hyp_tokens: list[int] = []
        self.rss: list[tuple[int, float]] = []

    def chunk_done(self, stream: Stream) -> None:
        self.state_bytes.append(stream.state_bytes())
        self.hyp_tokens.append(len(stream.best_tokens()))
        if len(self.state_bytes) % self.every == 1:
            self.rss.append((len(self.state_bytes), current_rss_mb()))


def measure_long_stream(rec, wave: torch.Tensor, beam: int = 4, rss_every: int = 50,
                        pipeline: Pipeline | None = None, endpoint: EndpointConfig | None = None) -> dict:
    """Decode ``wave`` as one live stream (``pipeline``, default stock with ``beam``; with
    ``endpoint`` rules if given); per-chunk state bytes, hypothesis length and latency, and
    sampled RSS."""
    memory = _Memory(rss_every)
    rss_start = current_rss_mb()
    t0 = time.perf_counter()
    result = stream_decode(rec, wave, beam, pipeline, hooks=(memory,), endpoint=endpoint)
    wall = time.perf_counter() - t0
    state_bytes, rss = memory.state_bytes, memory.rss
    rss.append((len(state_bytes), current_rss_mb()))
    chunk_s = rec.features.cfg.chunk_seconds
    minute = min(len(state_bytes) - 1, int(round(60 / chunk_s)))
    rss_at_1min = next((mb for k, mb in rss if k > minute), rss[-1][1])
    steady = state_bytes[min(len(state_bytes) - 1, 16):]
    chunk_ms = [1000 * c for c in result.chunk_s]
    first_ms, last_ms = percentiles(chunk_ms[:minute], (50, 99)), percentiles(chunk_ms[-minute:], (50, 99))
    last_start = len(state_bytes) - minute
    rss_first = [mb for k, mb in rss if k <= minute] or [rss[0][1]]
    rss_last = [mb for k, mb in rss if k >= last_start] or [rss[-1][1]]
    return {
        "audio_s": wave.numel() / 16000,
        "chunks": len(state_bytes),
        "state_bytes_first": state_bytes[0],
        "state_bytes_max": max(state_bytes),
        "state_bytes_steady_min": min(steady),
        "state_bytes_steady_max": max(steady),
        "state_bytes_last": state_bytes[-1],
        "rss_mb_start": rss_start,
        "rss_mb_after_1min": rss_at_1min,
        "rss_mb_end": rss[-1][1],
        "rss_growth_mb_after_1min": rss[-1][1] - rss_at_1min,
        "peak_rss_mb": peak_rss_mb(),
        "rss_samples": rss,
        "rtf": wall / (wave.numel() / 16000),
        "transcript_words": len(result.text.split()),
        # Compute per chunk in the first and the last minute of the stream (memory is flat, but
        # the beam search's work can grow with the transcript it carries).
        "encoder_ms_first_min": 1000 * _mean(result.encoder_s[:minute]),
        "encoder_ms_last_min": 1000 * _mean(result.encoder_s[-minute:]),
        "decoder_ms_first_min": 1000 * _mean(result.decoder_s[:minute]),
        "decoder_ms_last_min": 1000 * _mean(result.decoder_s[-minute:]),
        "chunk_ms_p50_first_min": first_ms["p50"], "chunk_ms_p99_first_min": first_ms["p99"],
        "chunk_ms_p50_last_min": last_ms["p50"], "chunk_ms_p99_last_min": last_ms["p99"],
        "rss_mb_first_min": max(rss_first), "rss_mb_last_min": max(rss_last),
        # Tokens of the best hypothesis the search carries: bounded by the segment with endpoints
        "hyp_tokens_max_first_min": max(memory.hyp_tokens[:minute] or [0]),
        "hyp_tokens_max_last_min": max(memory.hyp_tokens[-minute:] or [0]),
        "endpoint": endpoint is not None,
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(1, len(xs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default="base", help="a project checkpoint, or base (checkpoints/tiny_base.pt)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--decoder", default="stock", help="stock | exact | modified | greedy (docs/engine.md)")
    ap.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 | int8")
    ap.add_argument("--endpoint", action="store_true",
                    help="restart the hypothesis at endpoints (docs/streaming.md: the rules)")
    ap.add_argument("--audio", nargs="*", help="files to tile into the stream (default: TTS speech)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the measurements as JSON here")
    args = ap.parse_args(argv)
    try:
        from emformer_variants.data.audio import load_audio
        from emformer_variants.engine.pipeline import build_pipeline, check_decoder
        from emformer_variants.engine.precision import apply_precision_, check_precision
        from emformer_variants.models.build import load_named_checkpoint

        check_decoder(args.decoder, args.beam)
        check_precision(args.precision)
        torch.set_num_threads(args.threads)
        rec = load_named_checkpoint(args.ckpt)
        apply_precision_(rec, args.precision)
        pipeline = build_pipeline(rec, args.decoder, args.beam)
        seconds = args.minutes * 60
        wave = tile([load_audio(a) for a in args.audio], seconds) if args.audio else tts_stream(seconds)
        report = measure_long_stream(rec, wave, args.beam, pipeline=pipeline,
                                     endpoint=EndpointConfig() if args.endpoint else None)
        report.update(decoder=args.decoder, precision=args.precision, beam=args.beam)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for key, value in report.items():
        if key != "rss_samples":
            print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
