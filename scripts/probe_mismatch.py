"""Which acoustic mismatch costs a model on a test set: the same utterances passed through one
transform at a time (band, tempo, speaker, noise, level, padding), each scored against the
untouched audio with the paired bootstrap. A transform that brings the WER down names a
mismatch that training augmentation could cover; none moving it says the gap is elsewhere.

    python scripts/probe_mismatch.py [--ckpt base] [--manifest test.jsonl] [--transforms orig tel ...]
        [--out cache/probe] [--max-utterances N]

Default set: the Asterisk prompts (real speech, ``data=asterisk``). Each transformed copy is
written once under ``--out`` (FLAC, a manifest per transform), then ``evaluate.py
decoder=exact`` scores it (1 thread, beam 10), and ``compare`` pairs it with ``orig``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import soundfile as sf
import torch

from emformer_variants.compare import compare, read_hyps
from emformer_variants.data import augment as A
from emformer_variants.data.manifest import Utterance, read_manifest, write_manifest
from emformer_variants.data.synthetic import trim_silence
from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.results import run_step
from emformer_variants.utils.paths import PROJECT_ROOT

SR = 16000


def _noise(w: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return A.add_noise(w, A.colored_noise(w.numel(), "pink", g), 30.0)


TRANSFORMS = {
    "orig": ("the audio as it is", lambda w: w),
    "tel": ("telephone band: 300-3400 Hz, 8 kHz and back", lambda w: A.telephone(w, SR)),
    "fast": ("speed x1.15 (tempo and pitch)", lambda w: A.speed_perturb(w, SR, 1.15)),
    "slow": ("speed x0.87", lambda w: A.speed_perturb(w, SR, 0.87)),
    "fast130": ("speed x1.3", lambda w: A.speed_perturb(w, SR, 1.3)),
    "fast145": ("speed x1.45 (about the training audio's words per minute)",
                lambda w: A.speed_perturb(w, SR, 1.45)),
    "tempo130": ("tempo x1.3, pitch kept (PSOLA)", lambda w: A.change_gender(w, SR, duration=1 / 1.3)),
    "tempo145": ("tempo x1.45, pitch kept (PSOLA)", lambda w: A.change_gender(w, SR, duration=1 / 1.45)),
    "trim": ("silence trimmed as the corpus's (0.15 s kept at each end)",
             lambda w: torch.from_numpy(trim_silence(w.numpy(), SR, 0.15).copy())),
    "male": ("formants x0.87, pitch median 120 Hz (Praat Change gender)",
             lambda w: A.change_gender(w, SR, formant_ratio=0.87, pitch_median_hz=120.0)),
    "lowf": ("formants x0.92", lambda w: A.change_gender(w, SR, formant_ratio=0.92)),
    "noise30": ("pink noise at 30 dB SNR", _noise),
    "pad": ("0.5 s of silence at both ends",
            lambda w: torch.cat([torch.zeros(SR // 2), w, torch.zeros(SR // 2)])),
    "quiet": ("peak at -20 dBFS", lambda w: w / w.abs().max().clamp_min(1e-6) * 0.1),
    "loud": ("peak at -1 dBFS", lambda w: w / w.abs().max().clamp_min(1e-6) * 0.9),
    "hp200": ("high-pass at 200 Hz", lambda w: A.AF.highpass_biquad(w, SR, 200.0)),
    "lp7k": ("low-pass at 6.5 kHz (two biquads)",
             lambda w: A.AF.lowpass_biquad(A.AF.lowpass_biquad(w, SR, 6500.0), SR, 6500.0)),
}


def transformed(utts: list[Utterance], name: str, out: Path) -> Path:
    """``out/<name>/test.jsonl`` with every utterance through the transform (made once)."""
    folder = out / name
    manifest = folder / "test.jsonl"
    if manifest.is_file():
        return folder
    fn = TRANSFORMS[name][1]
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, u in enumerate(utts):
        wave, sr = sf.read(u.audio, dtype="float32")
        if sr != SR or wave.ndim != 1:
            raise UserError(f"{u.audio}: {sr} Hz, {wave.ndim} channels; the probe takes 16 kHz mono")
        y = fn(torch.from_numpy(wave)).numpy()
        path = folder / "audio" / f"{i:05d}.flac"
        sf.write(path, y, SR)
        rows.append(Utterance(str(path.relative_to(folder)), u.text, round(len(y) / SR, 4), u.speaker))
    write_manifest(folder / "test.jsonl.tmp", rows)
    (folder / "test.jsonl.tmp").replace(manifest)
    return folder


def evaluate(ckpt: str, folder: Path) -> Path:
    """The run folder of ``evaluate.py`` on the manifest folder, one per checkpoint, reused once
    scored (``results.run_step``: a failed run is removed and its log named)."""
    run = folder / f"eval-{hashlib.sha1(ckpt.encode()).hexdigest()[:10]}"
    cmd = [sys.executable, "evaluate.py", f"ckpt={ckpt}", "data=manifest", f"data.root={folder}",
           "decoder=exact", "flops=false", "threads=1", f"paths.output_dir={run}"]
    run_step(cmd, run, folder / "commands.log")
    return run


def _rows(run: Path) -> list[dict]:
    """The run's hyps keyed by utterance index (the file name), so transforms pair up."""
    return [{**r, "audio": Path(r["audio"]).name} for r in read_hyps(run)]


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default="base", help="evaluate.py ckpt= (default: the shipped base)")
    p.add_argument("--manifest", type=Path, default=None, help="a test.jsonl (default: the Asterisk prompts)")
    p.add_argument("--transforms", nargs="+", choices=list(TRANSFORMS), default=list(TRANSFORMS))
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "cache" / "probe")
    p.add_argument("--max-utterances", type=int, default=None)
    args = p.parse_args(argv)
    if args.manifest is None:
        from emformer_variants.data.sources import AsteriskSource

        cache = os.environ.get("EMFORMER_VARIANTS_CACHE") or PROJECT_ROOT / "cache"  # as conf/paths
        utts, label = AsteriskSource(cache_dir=str(cache)).splits()["test"], "asterisk"
    else:
        utts, label = read_manifest(args.manifest), args.manifest.stem
    utts = utts[: args.max_utterances]
    names = ["orig", *[t for t in args.transforms if t != "orig"]]
    out = args.out.resolve() / f"{label}-{len(utts)}"  # evaluate.py runs from the project root
    runs = {}
    for name in names:
        runs[name] = evaluate(args.ckpt, transformed(utts, name, out))
        print(f"[probe] {name}: {runs[name]}", flush=True)
    base = _rows(runs["orig"])
    print(f"\n{label}, {len(utts)} utterances, ckpt={args.ckpt}, decoder=exact, beam 10")
    print("| transform | what | WER % | vs orig (points, 95% paired interval) |")
    print("|---|---|---|---|")
    table = {}
    for name in names:
        res = compare(base, _rows(runs[name]))
        d = res["delta"]
        star = "*" if d.excludes(0.0) else ""
        delta = f"{100 * d.value:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]{star}"
        delta = "" if name == "orig" else delta
        print(f"| {name} | {TRANSFORMS[name][0]} | {100 * res['b'].value:.2f} | {delta} |")
        table[name] = {"wer": res["b"].value, "delta": d.value, "low": d.low, "high": d.high}
    (out / "probe.json").write_text(json.dumps({"ckpt": args.ckpt, "rows": table}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
