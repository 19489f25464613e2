"""Side-by-side streaming benchmark: torchaudio's stock pipeline and the engine's modes on
the same weights and the same audio, interleaved chunk by chunk in one process.

    python -m emformer_variants.bench [--model tiny|emformer_base] [--beam 10] [--chunks 60]
        [--threads 1] [--modes stock exact modified:4@int8 ...] [--streams 1 4 16]
        [--stream-modes exact@int8 ...] [--plot curve.png] [--profile DIR] [--manifest test.jsonl]
        [--json out.json] [--variants dense moe mla lowrank]

A mode is ``decoder[:K][@precision]``: decoder from ``engine.pipeline`` (stock, exact,
modified, greedy), K = symbols per frame for modified/greedy, precision from
``engine.precision`` (fp32, bf16, fp16, int8, int4, int8-fbgemm). Every mode decodes every chunk of every
utterance; within a chunk the modes run in rotating order, so a load change on the machine
hits all of them alike. Per-chunk latency = features + encoder + search, wall clock (CPU
time of the thread beside it). ``tiny`` is the shipped trained base on TTS speech (or
``--manifest``); ``emformer_base`` has random weights: its speed is real, its decoding
behaviour (symbols per frame, beam churn) is not a trained model's.

Many streams (``--streams``): N streams decoded together, one batched encoder + search step
per chunk, each finished utterance replaced by the next (continuous batching); reports the
aggregate throughput (audio seconds per wall second), the per-stream chunk latency
(= the step's wall time; real time when its p99 is under the chunk), the same by the
thread's CPU time (what one core does when other jobs share it) and, on the trained
``tiny``, the WER of the utterances decoded that way; ``--plot`` draws the curve.

Variants (``--variants``, configs in conf/variant/): each variant's stock pipeline and
engine modes (``--variant-modes``, default ``exact``; e.g. ``exact exact@int8``), all
interleaved chunk by chunk in one run, beside the variant's measured encoder FLOPs per
steady-state chunk (``arch_report.measure``) relative to dense. The engine runs a
variant's low-rank chains, MLA's latent attention and MoE FFNs (routing included) inside the
fused C++ layer stack.

For modes whose linears all run in the packed kernels (fp32, fp16, bf16, int8 and int4 engine
modes), the table adds the kernels' matmul work per chunk, and for the fp32-arithmetic ones
that work's time at the fp32 matmul peak measured in the same run: a floor no implementation
of those matmuls at fp32 arithmetic can beat on this CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emformer_variants.engine.packed import counting_flops, isa_report
from emformer_variants.engine.pipeline import DECODERS, Pipeline, build_pipeline
from emformer_variants.engine.precision import PRECISIONS, apply_precision_
from emformer_variants.engine.stream import Stream, chunk_windows
from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.metrics.latency import percentiles
from emformer_variants.utils.paths import PROJECT_ROOT

SENTENCES = [
    "it is a truth universally acknowledged that a single man in possession of a good fortune",
    "emma woodhouse handsome clever and rich with a comfortable home and happy disposition",
    "the family of dashwood had long been settled in sussex",
    "my dear mister bennet said his lady to him one day have you heard",
    "she was the youngest of the two daughters of a most affectionate indulgent father",
    "nothing could be more pleasant than the evening they spent together",
    "he had not been at home long before the letter arrived from town",
    "they walked towards the house together in silence",
]


@dataclass(frozen=True)
class Mode:
    decoder: str
    precision: str = "fp32"
    symbols: int | None = None

    @property
    def label(self) -> str:
        k = f":{self.symbols}" if self.symbols else ""
        return f"{self.decoder}{k}@{self.precision}"

    @classmethod
    def parse(cls, text: str) -> Mode:
        head, _, precision = text.partition("@")
        decoder, _, k = head.partition(":")
        precision = precision or "fp32"
        if decoder not in DECODERS:
            raise UserError(f"--modes {text}: unknown decoder {decoder!r}; choose from {', '.join(DECODERS)}")
        if precision not in PRECISIONS:
            raise UserError(f"--modes {text}: unknown precision {precision!r}; "
                            f"choose from {', '.join(PRECISIONS)}")
        if k and (decoder not in ("modified", "greedy") or not k.isdigit() or int(k) < 1):
            raise UserError(f"--modes {text}: ':K' (symbols per frame >= 1) applies to modified and greedy")
        return cls(decoder, precision, int(k) if k else None)

    def build(self, rec, beam: int) -> Pipeline:
        opts = {"max_symbols": self.symbols} if self.symbols else {}
        return build_pipeline(rec, self.decoder, beam, **opts)


@dataclass
class Timings:
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    gflop: list[float] = field(default_factory=list)  # packed-kernel matmul work per chunk
    tokens: list[list[int]] = field(default_factory=list)  # best hypothesis per utterance


# ------------------------------------------------------------------ model and audio

def build_model(name: str):
    """(recognizer, note) for ``tiny`` (the shipped trained base) or ``emformer_base`` (random)."""
    if name == "tiny":
        from emformer_variants.models.recognizer import load_recognizer

        return load_recognizer(PROJECT_ROOT / "checkpoints" / "tiny_base.pt").eval(), \
            "tiny: the shipped trained base (checkpoints/tiny_base.pt)"
    if name == "emformer_base":
        from emformer_variants.models.build import build_random

        return build_random("emformer_base"), ("emformer_base: RANDOM WEIGHTS (torchaudio's architecture, "
                                               "76.7M params); speed is real, decoding behaviour is not")
    raise UserError(f"--model {name}: choose tiny or emformer_base")


def bench_audio(chunks: int, segment_samples: int, manifest: str | None = None
                ) -> tuple[list[torch.Tensor], list[str]]:
    """Utterances until ``chunks`` streaming chunks are covered: from a manifest, or TTS
    (espeak-ng voices reading fixed sentences)."""
    waves, texts = [], []
    total = 0
    if manifest:
        from emformer_variants.data.audio import load_audio
        from emformer_variants.data.manifest import read_manifest

        source = ((load_audio(u.audio), u.text) for u in read_manifest(Path(manifest)))
    else:
        import torchaudio.functional as AF

        from emformer_variants.data.tts import default_voices, synthesize

        voices = [v for v in default_voices() if v.engine == "espeak"]

        def tts():
            for i in range(10_000):
                text = SENTENCES[i % len(SENTENCES)]
                wave, sr = synthesize(voices[(3 * i) % len(voices)], text)
                yield AF.resample(torch.from_numpy(wave), sr, 16000), text

        source = tts()
    for wave, text in source:
        n = -(-wave.numel() // segment_samples)
        if total + n > chunks:
            wave = wave[: (chunks - total) * segment_samples]
            n = chunks - total
        waves.append(wave)
        texts.append(text)
        total += n
        if total >= chunks:
            break
    if total < chunks:
        raise UserError(f"--manifest {manifest}: only {total} chunks of audio, asked for {chunks}")
    return waves, texts


# ------------------------------------------------------------------ one stream, interleaved

@torch.inference_mode()
def interleaved(rec_for: dict, pipes: dict[str, Pipeline], waves: list[torch.Tensor]) -> dict[str, Timings]:
    labels = list(pipes)
    out = {label: Timings() for label in labels}
    cfg = next(iter(rec_for.values())).features.cfg
    for wave in waves:
        windows = list(chunk_windows(wave, cfg.segment_samples, cfg.window_samples))
        streams = {m: Stream(rec_for[m], pipes[m]) for m in labels}
        for k, window in enumerate(windows):
            order = labels[k % len(labels):] + labels[:k % len(labels)]
            for m in order:
                with counting_flops() as flops:
                    t0, c0 = time.perf_counter(), time.thread_time()
                    streams[m].step(window)
                    out[m].wall_ms.append(1000 * (time.perf_counter() - t0))
                    out[m].cpu_ms.append(1000 * (time.thread_time() - c0))
                out[m].gflop.append(flops[0] / 1e9)
        for m in labels:
            out[m].tokens.append(streams[m].best_tokens())
    return out


# ------------------------------------------------------------------ many streams

@torch.inference_mode()
def many_streams(rec, pipe: Pipeline, waves: list[torch.Tensor], n: int, min_steps: int = 8,
                 rounds: int = 3, texts: list[str] | None = None) -> dict:
    """Continuous batching of ``n`` streams over ``waves``, repeated until every slot gets
    about ``rounds`` utterances and ``min_steps`` chunks (so few steps run on idle slots);
    per-step wall times, aggregate throughput, and with ``texts`` (the waves' references)
    the corpus WER of every decoded utterance."""
    if n > 1 and not pipe.encoder.supports_reset:
        raise UserError(f"{pipe.name}: its encoder cannot batch streams that start at different times")
    cfg = rec.features.cfg
    queue = list(range(len(waves)))
    need = n * min_steps * cfg.segment_samples
    while len(queue) < rounds * n or sum(waves[i].numel() for i in queue) < need:
        queue += range(len(waves))
    queue.reverse()
    slots: list[list | None] = [None] * n  # [windows, next index, utterance]
    stream = Stream(rec, pipe, n)
    steps, cpu, audio_s, decoded = [], [], 0.0, []
    silence = torch.zeros(cfg.window_samples)
    t_start = time.perf_counter()
    while True:
        for i in range(n):
            if slots[i] is None and queue:
                u = queue.pop()
                audio_s += waves[u].numel() / cfg.sample_rate
                slots[i] = [list(chunk_windows(waves[u], cfg.segment_samples, cfg.window_samples)), 0, u]
                stream.restart(i)
        if all(s is None for s in slots):
            break
        t0, c0 = time.perf_counter(), time.thread_time()
        batch = torch.stack([s[0][s[1]] if s else silence for s in slots])
        idle = list(stream.beams)
        stream.step(batch)
        stream.beams = [stream.beams[i] if slots[i] else idle[i] for i in range(n)]  # idle slots keep theirs
        steps.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.thread_time() - c0))
        for i, s in enumerate(slots):
            if s:
                s[1] += 1
                if s[1] == len(s[0]):
                    decoded.append((s[2], stream.best_tokens(i)))
                    slots[i] = None
    wall = time.perf_counter() - t_start
    p, pc = percentiles(steps), percentiles(cpu)
    row = {"streams": n, "steps": len(steps), "audio_s": audio_s, "wall_s": wall,
           "throughput": audio_s / wall, "cpu_throughput": 1000 * audio_s / sum(cpu),
           "step_ms_p50": p["p50"], "step_ms_p90": p["p90"], "step_ms_p99": p["p99"],
           "cpu_ms_p50": pc["p50"], "cpu_ms_p99": pc["p99"],
           "real_time": p["p99"] < 1000 * cfg.chunk_seconds,
           "real_time_cpu": pc["p99"] < 1000 * cfg.chunk_seconds}
    if texts is not None:
        from emformer_variants.metrics.wer import error_rates

        row["wer"] = error_rates([texts[u] for u, _ in decoded],
                                 [rec.tokenizer.decode(t) for _, t in decoded])["wer"]
    return row


def plot_streams(rows: list[dict], path: Path, chunk_ms: float, title: str) -> None:
    """Throughput and per-stream chunk latency p99 against the number of streams, per mode:
    by the thread's CPU time (solid) and by wall clock (dashed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["streams"])
        ns = [r["streams"] for r in mine]
        label = mode + (f" (WER {mine[0]['wer']:.3f})" if "wer" in mine[0] else "")
        line, = left.plot(ns, [r["cpu_throughput"] for r in mine], "o-", label=label)
        left.plot(ns, [r["throughput"] for r in mine], "o--", color=line.get_color(), alpha=0.5)
        right.plot(ns, [r["cpu_ms_p99"] for r in mine], "o-", color=line.get_color(), label=mode)
        right.plot(ns, [r["step_ms_p99"] for r in mine], "o--", color=line.get_color(), alpha=0.5)
    right.axhline(chunk_ms, color="k", ls="--", lw=1, label=f"real time ({chunk_ms:.0f} ms chunk)")
    left.set(xlabel="concurrent streams", ylabel="audio s per CPU s (solid), per wall s (dashed)",
             xscale="log")
    right.set(xlabel="concurrent streams", ylabel="chunk latency p99, ms: CPU (solid), wall (dashed)",
              xscale="log", yscale="log")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------------ report

def fp32_peak_gflops() -> float:
    """This CPU's fp32 matmul rate at the current thread count: the best of a few
    256 x 1024 x 4096 products."""
    a, b = torch.randn(256, 1024), torch.randn(1024, 4096)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * 256 * 1024 * 4096 / best / 1e9


def summarize(results: dict[str, Timings], audio_s: float, reference: str | None,
              texts: list[str] | None, decode, peak_gflops: float | None = None) -> list[dict]:
    ref = results.get(reference) if reference else None
    ref_p50 = statistics.median(ref.wall_ms) if ref else None
    rows = []
    for label, t in results.items():
        p50 = statistics.median(t.wall_ms)
        row = {"mode": label, "chunk_ms_p50": p50, "chunk_ms_p90": percentiles(t.wall_ms)["p90"],
               "cpu_ms_p50": statistics.median(t.cpu_ms),
               "speedup_vs_stock": ref_p50 / p50 if ref_p50 else None,
               "rtf": sum(t.wall_ms) / 1000 / audio_s,
               "same_as_stock": (f"{sum(a == b for a, b in zip(t.tokens, ref.tokens, strict=True))}"
                                 f"/{len(t.tokens)}") if ref else "n/a"}
        gflop = statistics.mean(t.gflop) if t.gflop else 0.0
        if gflop > 0:  # only modes whose linears all run through the packed kernel count
            row["gflop_per_chunk"] = gflop
            if peak_gflops and not label.endswith(("@int8", "@int4")):  # integer products are not fp32 work
                row["floor_ms"] = 1000 * gflop / peak_gflops
        if texts is not None and decode is not None:
            from emformer_variants.metrics.wer import error_rates

            row["wer"] = error_rates(texts, [decode(x) for x in t.tokens])["wer"]
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    cols = [("mode", "mode", "{}"), ("chunk_ms_p50", "chunk ms p50", "{:.1f}"),
            ("chunk_ms_p90", "p90", "{:.1f}"), ("cpu_ms_p50", "CPU ms p50", "{:.1f}"),
            ("speedup_vs_stock", "vs stock", "{:.2f}x"), ("rtf", "RTF", "{:.3f}"),
            ("same_as_stock", "same transcript as stock", "{}"), ("wer", "WER", "{:.4f}"),
            ("gflop_per_chunk", "matmul GFLOP/chunk", "{:.3f}"), ("floor_ms", "floor ms at peak", "{:.1f}")]
    cols = [c for c in cols if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(k) is None else f.format(r[k]) for k, _, f in cols) + " |")
    return "\n".join(lines)


def format_streams(rows: list[dict]) -> str:
    lines = ["| mode | streams | throughput (audio s / wall s) | per-stream chunk ms p50 | p90 | p99 "
             "| real time (p99 < chunk) | audio s / CPU s | CPU ms p50 | CPU ms p99 | real time by CPU "
             "| WER | audio s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "no"}
    for r in rows:
        wer = f"{r['wer']:.4f}" if "wer" in r else ""
        lines.append(f"| {r['mode']} | {r['streams']} | {r['throughput']:.2f} | {r['step_ms_p50']:.1f} "
                     f"| {r['step_ms_p90']:.1f} | {r['step_ms_p99']:.1f} | {yes[r['real_time']]} "
                     f"| {r['cpu_throughput']:.2f} | {r['cpu_ms_p50']:.1f} | {r['cpu_ms_p99']:.1f} "
                     f"| {yes[r['real_time_cpu']]} | {wer} | {r['audio_s']:.1f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ CLI

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m emformer_variants.bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", choices=["tiny", "emformer_base"])
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--chunks", type=int, default=60, help="streaming chunks (0.16 s each) per mode")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--modes", nargs="+", default=["stock", "exact", "exact@fp16", "exact@int8", "exact@int4",
                                                   "modified:4@fp16", "modified:4@int8", "modified@int8",
                                                   "greedy@fp16"],
                   help="decoder[:K][@precision]; the first stock mode is the reference")
    p.add_argument("--streams", nargs="*", type=int, default=[], help="e.g. 1 4 16")
    p.add_argument("--stream-modes", nargs="*", default=None,
                   help="modes for --streams (default: every engine mode of --modes)")
    p.add_argument("--manifest", default=None, help="a manifest (.jsonl) to take audio from instead of TTS")
    p.add_argument("--profile", default=None, help="write a torch.profiler table per mode into DIR")
    p.add_argument("--json", default=None, help="also write the results as JSON")
    p.add_argument("--plot", default=None, help="with --streams: write the throughput/latency curve (PNG)")
    p.add_argument("--variant-modes", nargs="+", default=["exact"],
                   help="with --variants: the engine modes run on every variant (e.g. exact exact@int8)")
    p.add_argument("--variants", nargs="*", default=None,
                   help="names in conf/variant/: stock and --variant-modes on each, interleaved in one run, "
                        "beside each variant's encoder FLOPs per chunk vs dense")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _short(mode: Mode) -> str:
    """``exact`` for exact@fp32, else the mode's label."""
    return mode.decoder if mode.precision == "fp32" and not mode.symbols else mode.label


def bench_variants(rec, note: str, args, waves, texts, audio_s: float) -> int:
    """``--variants``: each variant's stock pipeline and engine modes (``--variant-modes``)
    interleaved chunk by chunk in one run, with the variant's measured encoder FLOPs per
    steady-state chunk vs dense."""
    from emformer_variants.arch_report import load_variant, measure, random_calibration
    from emformer_variants.surgery.registry import apply_variant_

    names = args.variants or ["dense", "moe", "mla", "lowrank"]
    engine_modes = [Mode.parse(m) for m in args.variant_modes]
    if any(m.decoder == "stock" for m in engine_modes):
        raise UserError("--variant-modes: engine modes only (each variant's stock pipeline always runs)")
    calibration = random_calibration()
    recs, flops = {}, {}
    for name in names:
        r = copy.deepcopy(rec)
        apply_variant_(r, load_variant(name), init="convert", calibration=calibration)
        recs[name] = r.eval()
        flops[name] = measure(recs[name])["encoder_flops_chunk"]
    pipes, rec_for = {}, {}
    for name in names:
        pipes[f"{name}/stock"] = build_pipeline(recs[name], "stock", args.beam)
        rec_for[f"{name}/stock"] = recs[name]
        for mode in engine_modes:
            r = recs[name]
            if mode.precision != "fp32":
                r = copy.deepcopy(r)
                apply_precision_(r, mode.precision)
            pipes[f"{name}/{_short(mode)}"] = mode.build(r, args.beam)
            rec_for[f"{name}/{_short(mode)}"] = r
    interleaved(rec_for, pipes, [waves[0][: rec.features.cfg.segment_samples * 3]])  # warm-up
    results = interleaved(rec_for, pipes, waves)
    trained = args.model == "tiny"
    ref = flops.get("dense") or next(iter(flops.values()))
    print(f"# bench --variants: {note}")
    print(f"# beam {args.beam}, {len(waves)} utterances, {audio_s:.1f} s audio; threads {args.threads}; "
          f"every variant's stock and exact pipelines interleaved chunk by chunk")
    print(f"# {isa_report()}")
    lines = ["| variant | encoder GFLOP/chunk | vs dense | engine encoder | mode | chunk ms p50 | p90 "
             "| CPU ms p50 | RTF | vs stock (CPU p50) | WER |", "|" + "---|" * 11]
    rows = []
    for name in names:
        stock_cpu = statistics.median(results[f"{name}/stock"].cpu_ms)
        for decoder in ("stock", *(_short(m) for m in engine_modes)):
            t = results[f"{name}/{decoder}"]
            cpu = statistics.median(t.cpu_ms)
            row = {"variant": name, "mode": decoder, "encoder_flops_chunk": flops[name],
                   "flops_vs_dense": flops[name] / ref,
                   "encoder": pipes[f"{name}/{decoder}"].encoder.name,
                   "encoder_path": pipes[f"{name}/{decoder}"].encoder.path,
                   "chunk_ms_p50": statistics.median(t.wall_ms),
                   "chunk_ms_p90": percentiles(t.wall_ms)["p90"],
                   "cpu_ms_p50": cpu, "rtf": sum(t.wall_ms) / 1000 / audio_s, "speedup": stock_cpu / cpu}
            if trained:
                from emformer_variants.metrics.wer import error_rates

                hyps = [rec.tokenizer.decode(x) for x in t.tokens]
                row["wer"] = error_rates(texts, hyps)["wer"]
            rows.append(row)
            lines.append(f"| {name} | {flops[name] / 1e9:.3f} | {flops[name] / ref:.2f}x "
                         f"| {row['encoder']} ({row['encoder_path']}) | {decoder} "
                         f"| {row['chunk_ms_p50']:.1f} "
                         f"| {row['chunk_ms_p90']:.1f} | {cpu:.1f} | "
                         f"{row['rtf']:.3f} | {row['speedup']:.2f}x | "
                         + (f"{row['wer']:.4f}" if trained else "") + " |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "note": note, "variants": rows}, indent=1))
    return 0


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.beam < 1 or args.chunks < 1 or args.threads < 1:
        raise UserError("--beam, --chunks and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    modes = [Mode.parse(m) for m in args.modes]
    stream_modes = [Mode.parse(m) for m in args.stream_modes] if args.stream_modes is not None \
        else [m for m in modes if m.decoder != "stock"]
    rec, note = build_model(args.model)
    cfg = rec.features.cfg
    waves, texts = bench_audio(args.chunks, cfg.segment_samples, args.manifest)
    audio_s = sum(w.numel() for w in waves) / cfg.sample_rate
    if args.variants is not None:
        return bench_variants(rec, note, args, waves, texts, audio_s)

    recs: dict[str, object] = {}
    for precision in dict.fromkeys(m.precision for m in modes + stream_modes):
        r = rec if precision == "fp32" else copy.deepcopy(rec)
        apply_precision_(r, precision)
        recs[precision] = r
    pipes = {m.label: m.build(recs[m.precision], args.beam) for m in modes}
    rec_for = {m.label: recs[m.precision] for m in modes}
    # warm-up: one short pass of every mode (allocator, kernels, predictor tables)
    interleaved(rec_for, pipes, [waves[0][: cfg.segment_samples * 3]])

    results = interleaved(rec_for, pipes, waves)
    reference = next((m.label for m in modes if m.decoder == "stock"), None)
    trained = args.model == "tiny"
    peak = fp32_peak_gflops()
    rows = summarize(results, audio_s, reference, texts if trained else None,
                     rec.tokenizer.decode if trained else None, peak)

    print(f"# bench: {note}")
    print(f"# beam {args.beam}, {len(waves)} utterances, {audio_s:.1f} s audio, {args.chunks} chunks of "
          f"{1000 * cfg.chunk_seconds:.0f} ms (+{1000 * cfg.right_context_seconds:.0f} ms right context) "
          f"per mode; threads {args.threads}; torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; modes interleaved chunk by chunk")
    print(f"# {isa_report()}")
    print(f"# fp32 matmul peak here: {peak:.0f} GFLOP/s (256x1024x4096); 'floor ms at peak' = the packed "
          f"kernel's matmul work per chunk at that rate (fp32-arithmetic modes whose linears all run in "
          f"the packed kernels; int8 and int4 modes show the work only)")
    print(format_table(rows))
    stream_rows = []
    for m in stream_modes if args.streams else []:
        pipe = m.build(recs[m.precision], args.beam)
        for n in args.streams:
            many_streams(recs[m.precision], pipe, [waves[0][: cfg.segment_samples * 2]], n, 2, 1)
            stream_rows.append({"mode": m.label, **many_streams(recs[m.precision], pipe, waves, n,
                                                                texts=texts if trained else None)})
    if stream_rows:
        print()
        print(format_streams(stream_rows))
        if args.plot:
            plot_streams(stream_rows, Path(args.plot), 1000 * cfg.chunk_seconds,
                         f"{note}; beam {args.beam}; 1 thread; {torch.backends.cpu.get_cpu_capability()}")
            print(f"plot: {args.plot}")
    if args.profile:
        from emformer_variants.evaluation.profiling import profile_table

        out = Path(args.profile)
        out.mkdir(parents=True, exist_ok=True)
        for m in modes:
            text = profile_table(rec_for[m.label], m.build(rec_for[m.label], args.beam), waves[:2])
            path = out / f"profile_{args.model}_{m.label.replace(':', '-').replace('@', '_')}.txt"
            path.write_text(text + "\n")
            print(f"profile: {path}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "note": note, "audio_s": audio_s,
                                               "fp32_peak_gflops": peak,
                                               "single_stream": rows, "streams": stream_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
