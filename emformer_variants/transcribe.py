"""Live transcription of files or of raw PCM from a pipe, segment by segment.

    python -m emformer_variants.transcribe speech.flac other.mp3
    arecord -f S16_LE -r 16000 | python -m emformer_variants.transcribe -
    python -m emformer_variants.transcribe talk.wav --decoder exact --precision int8 --json

Files: any format soundfile reads, any rate and channel count. ``-``: raw 16-bit
little-endian PCM on stdin (``--rate``, ``--channels``), decoded as it arrives. On a
terminal the partial hypothesis is one refreshed line; each finished segment is printed as
``[start-end] text`` (seconds). ``--json``: one object per event and line,
``{"type": "partial"|"final", "text", "start", "end", "chunk_ms", "audio"}``. Segments end
at endpoints (docs/streaming.md: the rules and their defaults) and at the end of the input,
which is flushed with zeros so the last words are decoded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emformer_variants.engine.endpoint import EndpointConfig
from emformer_variants.engine.names import DECODER_NAMES, KERNEL_PRECISIONS
from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.lm import LM_WEIGHT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m emformer_variants.transcribe",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("audio", nargs="+", help="audio files, or - for raw 16-bit PCM on stdin")
    ap.add_argument("--ckpt", default="base", help="a project checkpoint, or base (checkpoints/tiny_base.pt)")
    ap.add_argument("--decoder", default="stock", choices=DECODER_NAMES, help="as decoder= of evaluate.py")
    ap.add_argument("--precision", default="fp32", choices=KERNEL_PRECISIONS)
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--max-symbols", type=int, default=None, help="modified/greedy: symbols per frame")
    ap.add_argument("--lm", default=None,
                    help="modified decoder: shallow fusion with english (built on first use) or an LM file")
    ap.add_argument("--lm-weight", type=float, default=LM_WEIGHT, help="the LM's scale (with --lm)")
    ap.add_argument("--rate", type=int, default=16000, help="stdin PCM sample rate (Hz)")
    ap.add_argument("--channels", type=int, default=1, help="stdin PCM channels (interleaved)")
    ap.add_argument("--json", action="store_true", help="one JSON object per event and line")
    ap.add_argument("--realtime", action="store_true", help="pace files at real speed")
    ap.add_argument("--no-endpoint", action="store_true", help="one segment per input")
    defaults = EndpointConfig()
    ap.add_argument("--rule1", type=float, default=defaults.rule1_silence_s,
                    help="endpoint: seconds of silence with nothing decoded")
    ap.add_argument("--rule2", type=float, default=defaults.rule2_silence_s,
                    help="endpoint: seconds of silence after speech")
    ap.add_argument("--rule3", type=float, default=defaults.rule3_max_segment_s,
                    help="endpoint: longest segment in seconds")
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args(argv)


def check_inputs(paths: list[str]) -> None:
    """Every input exists and has a readable header, before any decoding."""
    if paths.count("-") > 1:
        raise UserError("-: stdin can be read once; pass - at most once")
    for p in paths:
        if p != "-" and not Path(p).is_file():
            raise UserError(f"{p}: no such audio file; pass an existing file, or - to read raw "
                            "16-bit PCM from stdin")
    from emformer_variants.data.audio import audio_duration

    for p in paths:
        if p != "-":
            audio_duration(p)


class Printer:
    """Events to stdout: JSON lines, or text with a live partial line on a terminal."""

    def __init__(self, as_json: bool, live: bool, label: str | None):
        self.as_json, self.live, self.label = as_json, live, label
        self.width = 0

    def event(self, kind: str, text: str, start: float, end: float, chunk_ms: float, audio: str) -> None:
        if self.as_json:
            print(json.dumps({"type": kind, "text": text, "start": round(start, 3), "end": round(end, 3),
                              "chunk_ms": round(chunk_ms, 3), "audio": audio}), flush=True)
            return
        line = f"{self.label + ': ' if self.label else ''}[{start:.2f}-{end:.2f}] {text}"
        if kind == "partial":
            if self.live:
                self._write("\r" + line + " " * max(0, self.width - len(line)))
                self.width = len(line)
            return
        pad = " " * max(0, self.width - len(line)) if self.live else ""
        self._write(("\r" if self.live else "") + line + pad + "\n")
        self.width = 0

    def clear(self) -> None:
        if self.live and self.width:
            self._write("\r" + " " * self.width + "\r")
            self.width = 0

    @staticmethod
    def _write(s: str) -> None:
        sys.stdout.write(s)
        sys.stdout.flush()


def transcribe_stream(rec, pipeline, blocks, printer: Printer, audio: str,
                      endpoint: EndpointConfig | None) -> list[dict]:
    """Decode one input (16 kHz blocks as they arrive) and print its events; returns the
    finals. The tail is padded with zeros (right context + two chunks) so the model's last
    emissions come out before the stream is finalised."""
    from emformer_variants.data.live_audio import Counted
    from emformer_variants.engine.stream import decode_chunks, stream_windows

    cfg = rec.features.cfg
    chunk_s = cfg.chunk_seconds
    counted = Counted(blocks)
    windows = stream_windows(counted, cfg.segment_samples, cfg.window_samples,
                             tail=cfg.window_samples + cfg.segment_samples)
    finals, shown = [], ""
    for u in decode_chunks(rec, windows, pipeline, endpoint=endpoint):
        duration = counted.seconds
        if u.first_chunk is None:
            if u.final:
                shown = ""
            continue
        start = min(u.first_chunk * chunk_s, duration)
        if u.final:
            end = max(start, min((u.last_chunk + 1) * chunk_s, duration))
            printer.event("final", u.text, start, end, 1000 * u.compute_s, audio)
            finals.append({"text": u.text, "start": start, "end": end})
            shown = ""
        elif u.text != shown:
            end = max(start, min((u.index + 1) * chunk_s, duration))
            printer.event("partial", u.text, start, end, 1000 * u.compute_s, audio)
            shown = u.text
    printer.clear()
    return finals


def input_blocks(path: str, args: argparse.Namespace):
    from emformer_variants.data.audio import load_audio
    from emformer_variants.data.live_audio import paced, pcm_blocks, wave_blocks

    if path == "-":
        return pcm_blocks(sys.stdin.buffer, args.rate, args.channels)
    blocks = wave_blocks(load_audio(path))
    return paced(blocks) if args.realtime else blocks


@one_line_errors
def run(args: argparse.Namespace) -> int:
    import torch

    from emformer_variants.engine.pipeline import build_pipeline, check_decoder
    from emformer_variants.engine.precision import apply_precision_
    from emformer_variants.models.build import load_named_checkpoint

    check_inputs(args.audio)
    check_decoder(args.decoder, args.beam, args.max_symbols, args.lm is not None)
    if args.lm is not None and args.lm != "english" and not Path(args.lm).is_file():
        raise UserError(f"--lm {args.lm}: no such file; pass --lm english or an LM from "
                        "python -m emformer_variants.lm.build")
    if args.threads < 1:
        raise UserError(f"--threads {args.threads}: must be at least 1")
    endpoint = None if args.no_endpoint else EndpointConfig(args.rule1, args.rule2, args.rule3)
    torch.set_num_threads(args.threads)
    rec = load_named_checkpoint(args.ckpt)
    apply_precision_(rec, args.precision)
    options = {"max_symbols": args.max_symbols} if args.max_symbols else {}
    if args.lm is not None:
        from emformer_variants.lm.build import load_lm
        from emformer_variants.utils.paths import project_cache_dir

        options["lm"], _ = load_lm(args.lm, rec.tokenizer, project_cache_dir())
        options["lm_weight"] = args.lm_weight
    pipeline = build_pipeline(rec, args.decoder, args.beam, **options)
    live = sys.stdout.isatty() and not args.json
    for path in args.audio:
        label = path if len(args.audio) > 1 else None
        printer = Printer(args.json, live, label)
        transcribe_stream(rec, pipeline, input_blocks(path, args), printer, path, endpoint)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
