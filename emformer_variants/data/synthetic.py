"""A synthetic multi-speaker read-speech corpus: Austen sentences spoken by offline TTS voices.

Splits:
- ``train``: sentences of the training pool, training voices (``tts.default_voices()``).
- ``dev``, ``test``: held-out sentences (never in train, disjoint from each other),
  training voices.
- ``test_voice``: the first ``num_test_voice`` sentences of ``test``, spoken by the
  held-out voice (``tts.held_out_voice()``): same sentences, unseen speaker.

Sentences go to the train/dev/test pools by a hash of their text, so the held-out pools
do not move with the seed or corpus size. Each utterance's voice, rate, pitch, gain and
padding come from ``numpy.random.default_rng([seed, split, index])``: texts, voices and
settings do not depend on the number of workers. The audio does not either: the neural
voices (hibari, piper) are seeded per utterance, and espeak-ng's pitch-flutter phase, library
state that carries over from one utterance to the next in a process, starts afresh for every
block of ``RENDER_BLOCK`` utterances, each rendered in a new worker process. Blocks are fixed
slices of the job list, so a corpus is bit-exact across rebuilds and worker counts.

``train_engine_weights`` (e.g. ``{"espeak": 1, "flite": 2, "hibari": 3}``) gives each voice of
an engine that many slots in the train split's round-robin, to put more training audio on
the engines a model finds hard; dev and test stay balanced over voices.

``train_clauses=True`` adds the clauses of Austen's sentences too long to read whole
(``text.load_austen_clauses``, ~25k texts) to the train pool: more than twice the training
text, while dev and test keep the same sentences and audio.

Layout of ``out_dir``: ``<split>.jsonl`` manifests, ``<split>/<split>-<index>.flac``
(16 kHz mono 16-bit), ``corpus.json`` (config + statistics).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emformer_variants.cli import one_line_errors
from emformer_variants.data.manifest import Utterance, publish_corpus, read_manifest, write_manifest
from emformer_variants.data.text import (
    CLAUSES_VERSION,
    SENTENCES_VERSION,
    add_cache_dir_argument,
    default_cache_dir,
    load_austen_clauses,
    load_austen_sentences,
)
from emformer_variants.data.tts import Voice, default_voices, held_out_voice, synthesize
from emformer_variants.errors import UserError
from emformer_variants.run_dir import pid_alive

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test", "test_voice")
FORMAT_VERSION = 1
# Per-utterance jitter on top of each training voice's own settings.
RATE_RANGE = (0.9, 1.1)
PITCH_RANGE = (0.92, 1.08)
PEAK_DBFS_RANGE = (-12.0, -1.0)
PAD_SECONDS_RANGE = (0.05, 0.25)  # silence kept at each end after trimming
TRIM_DB = 40.0  # frames quieter than peak frame - TRIM_DB count as silence
HELD_OUT_BUCKETS = 20  # 1/20 of sentences for dev, 1/20 for test


@dataclass(frozen=True)
class _Job:
    split: str
    index: int
    text: str
    voice: Voice
    rate: float
    pitch: float
    peak_dbfs: float
    pad_seconds: float
    tts_seed: int
    path: str


def sentence_pool(text: str) -> str:
    """'dev', 'test' or 'train': a fixed assignment by a hash of the sentence."""
    bucket = int(hashlib.sha1(text.encode()).hexdigest(), 16) % HELD_OUT_BUCKETS
    return {0: "dev", 1: "test"}.get(bucket, "train")


def _pick_sentences(sentences: list[str], counts: dict[str, int], seed: int,
                    extra_train: list[str] = ()) -> dict[str, list[str]]:
    pools: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for s in sentences:
        pools[sentence_pool(s)].append(s)
    pools["train"].extend(extra_train)  # training-only text (clauses), shuffled in with the rest
    for name, pool in pools.items():
        random.Random(f"{seed}-{name}").shuffle(pool)
    for split in ("dev", "test"):
        if counts[split] > len(pools[split]):
            raise UserError(
                f"num_{split}={counts[split]}: only {len(pools[split])} held-out "
                f"{split} sentences exist; ask for fewer"
            )
    if counts["test_voice"] > len(pools["test"]):
        raise UserError(
            f"num_test_voice={counts['test_voice']}: only {len(pools['test'])} "
            "held-out test sentences exist; ask for fewer"
        )
    train = pools["train"]
    # More train utterances than sentences: reuse sentences (with other voices).
    reps = -(-counts["train"] // len(train)) if counts["train"] else 0
    return {
        "train": (train * reps)[: counts["train"]],
        "dev": pools["dev"][: counts["dev"]],
        "test": pools["test"][: counts["test"]],
        "test_voice": pools["test"][: counts["test_voice"]],
    }


def check_engine_weights(weights: dict[str, int] | None, field: str = "train_engine_weights"
                         ) -> dict[str, int] | None:
    """None (balanced), or {engine: positive int} for every engine the training voices use;
    errors name ``field``."""
    if weights is None:
        return None
    engines = sorted({v.engine for v in default_voices()})
    if not isinstance(weights, dict):
        raise UserError(f"{field}={weights!r}: give a mapping engine -> weight, e.g. "
                        "{espeak: 1, flite: 2, hibari: 3}")
    if sorted(weights) != engines:
        raise UserError(f"{field}={weights}: give one integer weight for each of {engines}")
    for engine, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise UserError(f"{field}.{engine}={w!r}: use an integer >= 1")
    return None if set(weights.values()) == {1} else {e: weights[e] for e in engines}


def _plan(texts: dict[str, list[str]], seed: int, root: Path,
          engine_weights: dict[str, int] | None = None) -> list[_Job]:
    voices = default_voices()
    jobs = []
    for split_id, split in enumerate(SPLITS):
        # Voices in a shuffled round-robin: every voice gets an equal share of each split
        # (in train, ``engine_weights`` slots per voice of an engine).
        cycle = voices
        if split == "train" and engine_weights:
            cycle = [v for v in voices for _ in range(engine_weights[v.engine])]
        order = np.random.default_rng([seed, split_id, 1 << 30]).permutation(len(cycle))
        for i, text in enumerate(texts[split]):
            rng = np.random.default_rng([seed, split_id, i])
            if split == "test_voice":
                voice, rate, pitch = held_out_voice(), 1.0, 1.0
            else:
                voice = cycle[order[i % len(cycle)]]
                rate, pitch = rng.uniform(*RATE_RANGE), rng.uniform(*PITCH_RANGE)
            jobs.append(
                _Job(
                    split,
                    i,
                    text,
                    voice,
                    float(rate),
                    float(pitch),
                    float(rng.uniform(*PEAK_DBFS_RANGE)),
                    float(rng.uniform(*PAD_SECONDS_RANGE)),
                    int(rng.integers(2**31)),
                    str(root / split / f"{split}-{i:06d}.flac"),
                )
            )
    return jobs


def trim_silence(wave: np.ndarray, sample_rate: int, pad_seconds: float) -> np.ndarray:
    """Cut leading/trailing silence (10 ms frames TRIM_DB below the loudest), keep a pad."""
    hop = sample_rate // 100
    n = len(wave) // hop
    if n == 0:
        return wave
    energy = (wave[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy > energy.max() * 10 ** (-TRIM_DB / 10))
    pad = int(pad_seconds * sample_rate)
    start = max(0, loud[0] * hop - pad)
    end = min(len(wave), (loud[-1] + 1) * hop + pad)
    return wave[start:end]


@functools.lru_cache(maxsize=32)
def _resampler(orig_freq: int):
    import torchaudio.transforms as AT

    return AT.Resample(orig_freq, SAMPLE_RATE)  # caches its kernel: 4x faster than the function


def _render(job: _Job) -> Utterance:
    import soundfile as sf
    import torch

    wave, sr = synthesize(job.voice, job.text + ".", rate=job.rate, pitch=job.pitch, seed=job.tts_seed)
    if wave.size == 0 or not np.isfinite(wave).all() or np.abs(wave).max() == 0:
        raise RuntimeError(f"voice {job.voice.name} produced no audio for {job.text!r}")
    if sr != SAMPLE_RATE:
        with torch.no_grad():
            wave = _resampler(sr)(torch.from_numpy(wave)).numpy()
    wave = trim_silence(wave, SAMPLE_RATE, job.pad_seconds)
    wave = wave * (10 ** (job.peak_dbfs / 20) / np.abs(wave).max())
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(job.path, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return Utterance(job.path, job.text, round(len(wave) / SAMPLE_RATE, 4), job.voice.name)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


RENDER_BLOCK = 256  # utterances per fresh worker process: espeak-ng starts from the same state


def _render_block(jobs: list[_Job]) -> list[Utterance]:
    _init_worker()
    return [_render(job) for job in jobs]


def _config(counts: dict[str, int], seed: int, engine_weights: dict[str, int] | None = None,
            train_clauses: bool = False) -> dict:
    config = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "counts": counts,
        "sample_rate": SAMPLE_RATE,
        "sentences": SENTENCES_VERSION,
        "voices": [{"name": v.name, "engine": v.engine, "options": v.options} for v in default_voices()],
        "held_out_voice": {"name": held_out_voice().name, "engine": held_out_voice().engine},
        "jitter": {
            "rate": RATE_RANGE,
            "pitch": PITCH_RANGE,
            "peak_dbfs": PEAK_DBFS_RANGE,
            "pad_seconds": PAD_SECONDS_RANGE,
        },
    }
    if engine_weights:  # absent when balanced, so existing corpora keep their config
        config["train_engine_weights"] = engine_weights
    if train_clauses:  # likewise absent when off
        config["train_clauses"] = CLAUSES_VERSION
    return config


def _remove_stale_tmp(out_dir: Path) -> None:
    for tmp in out_dir.parent.glob(f"{out_dir.name}.tmp-*"):
        if not pid_alive(tmp.name.rsplit("-", 1)[1]):
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed build


def _existing(out_dir: Path, config: dict) -> dict[str, Path] | None:
    meta = out_dir / "corpus.json"
    if not out_dir.exists():
        return None
    try:
        found = json.loads(meta.read_text())["config"]
    except (OSError, json.JSONDecodeError, KeyError):
        raise UserError(
            f"{out_dir}: exists but has no valid corpus.json; delete it or pick another --out"
        ) from None
    if found != json.loads(json.dumps(config)):
        raise UserError(f"{meta}: built with another config; delete {out_dir} or pick another --out")
    return {split: out_dir / f"{split}.jsonl" for split in SPLITS}


def build_synthetic_corpus(
    out_dir: Path,
    *,
    num_train: int,
    num_dev: int,
    num_test: int,
    num_test_voice: int,
    seed: int = 0,
    workers: int = 2,
    cache_dir: Path,
    train_engine_weights: dict[str, int] | None = None,
    train_clauses: bool = False,
) -> dict[str, Path]:
    """Build (or find) the corpus; returns split name -> manifest path.

    Idempotent: an ``out_dir`` holding the same config returns at once; one built with
    another config is an error. Crash-safe: built in ``<out_dir>.tmp-<pid>``, renamed
    when complete. ``workers`` processes render blocks of ``RENDER_BLOCK`` utterances.
    """
    out_dir = Path(out_dir).absolute()
    counts = {"train": num_train, "dev": num_dev, "test": num_test, "test_voice": num_test_voice}
    for split, n in counts.items():
        if n < 0:
            raise UserError(f"num_{split}={n}: must be >= 0")
    engine_weights = check_engine_weights(train_engine_weights)
    config = _config(counts, seed, engine_weights, train_clauses)
    found = _existing(out_dir, config)
    if found is not None:
        return found
    sentences = load_austen_sentences(Path(cache_dir))
    clauses = load_austen_clauses(Path(cache_dir)) if train_clauses else []

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out_dir)
    tmp = out_dir.parent / f"{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = _plan(_pick_sentences(sentences, counts, seed, clauses), seed, tmp, engine_weights)
    # Slow held-out-voice jobs first, so they spread over the workers instead of trailing.
    jobs.sort(key=lambda j: (j.split != "test_voice", SPLITS.index(j.split), j.index))
    print(f"[synthetic] building {out_dir} ({len(jobs)} utterances, {max(workers, 1)} workers)", flush=True)

    start = time.perf_counter()
    results: dict[tuple[str, int], Utterance] = {}
    seconds = 0.0
    last_report = start

    def record(job_key, utt):
        nonlocal seconds, last_report
        results[job_key] = utt
        seconds += utt.duration
        now = time.perf_counter()
        if now - last_report > 15 or len(results) == len(jobs):
            last_report = now
            print(
                f"[synthetic] {len(results)}/{len(jobs)} utterances, {seconds / 3600:.2f} h, "
                f"{len(results) / (now - start):.1f} utt/s",
                flush=True,
            )

    blocks = [jobs[i:i + RENDER_BLOCK] for i in range(0, len(jobs), RENDER_BLOCK)]
    try:
        # One new process per block, also for workers=1, so no block sees another's espeak state.
        with mp.get_context("spawn").Pool(max(workers, 1), maxtasksperchild=1) as pool:
            for block, utts in zip(blocks, pool.imap(_render_block, blocks), strict=True):
                for job, utt in zip(block, utts, strict=True):
                    record((job.split, job.index), utt)
        stats = {}
        for split in SPLITS:
            utts = [results[(split, i)] for i in range(counts[split])]
            write_manifest(tmp / f"{split}.jsonl", utts)
            stats[split] = {
                "utterances": len(utts),
                "hours": round(sum(u.duration for u in utts) / 3600, 4),
                "speakers": len({u.speaker for u in utts}),
            }
        elapsed = time.perf_counter() - start
        meta = {"config": config, "stats": stats, "build_seconds": round(elapsed, 1)}
        publish_corpus(tmp, out_dir, meta, lambda: _existing(out_dir, config) is not None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(
        f"[synthetic] done in {elapsed:.0f} s: {seconds / 3600:.2f} h of audio "
        f"({len(jobs) / elapsed:.1f} utt/s, {seconds / elapsed:.0f}x real time)",
        flush=True,
    )
    return {split: out_dir / f"{split}.jsonl" for split in SPLITS}


def _parse_weights(text: str) -> dict[str, int]:
    try:
        return {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use engine=weight pairs, e.g. espeak=1,flite=2") \
            from None


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="corpus folder to create")
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-dev", type=int, default=200)
    p.add_argument("--num-test", type=int, default=200)
    p.add_argument("--num-test-voice", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--train-engine-weights", type=_parse_weights, default=None, metavar="E=W,...",
                   help="train-split slots per voice of each engine, e.g. espeak=1,flite=2,hibari=3")
    p.add_argument("--train-clauses", action="store_true",
                   help="add clauses of Austen's long sentences to the train text (~2.3x the text)")
    add_cache_dir_argument(p)
    args = p.parse_args(argv)
    manifests = build_synthetic_corpus(
        args.out,
        num_train=args.num_train,
        num_dev=args.num_dev,
        num_test=args.num_test,
        num_test_voice=args.num_test_voice,
        seed=args.seed,
        workers=args.workers,
        cache_dir=args.cache_dir or default_cache_dir(),
        train_engine_weights=args.train_engine_weights,
        train_clauses=args.train_clauses,
    )
    for split, path in manifests.items():
        print(f"{split}: {path} ({len(read_manifest(path))} utterances)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
