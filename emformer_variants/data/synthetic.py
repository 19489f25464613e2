"""A synthetic multi-speaker corpus of English: many texts, read by many offline TTS voices.

Splits:
- ``train``: texts of the training pools, training voices (``tts.default_voices()``).
- ``dev``, ``test``: held-out texts of the same sources (never in train, disjoint from each
  other), training voices.
- ``test_everyday``: the Harvard sentences (everyday English from no source used in
  training), training voices.
- ``test_voice``: the first ``num_test_voice`` texts of ``test``, read by each held-out voice
  (``tts.held_out_voices()``): same texts, unseen speakers and engines; the manifest's
  ``speaker`` names the voice, so WER is reported per voice.

Text sources (``TEXT_SOURCES``; share of each split's utterances from ``text_weights``):
Austen's sentences and the clauses of her long ones (``text.py``), GCIDE quotations, WordNet
glosses and examples, fortunes, The Devil's Dictionary (``english.py``) and template-made
everyday English (``everyday.py``). Texts go to the train/dev/test pools by a hash of the
text, so the held-out pools do not move with the seed, the weights or the corpus size.
Voices: each utterance of train/dev/test draws an engine by ``engine_weights``, one of that
engine's voices uniformly, and a tempo, pitch (and for espeak-ng a pitch range) within
``JITTER``, so the 296 training voices become thousands of settings; training-time
augmentation (``augment.py``) adds speakers and channels on top.

Everything comes from ``numpy.random.default_rng([seed, split, index])``: texts, voices and
settings do not depend on the number of workers. The audio does not either: the neural
voices (hibari, piper) are seeded per utterance, and espeak-ng's pitch-flutter phase, library
state that carries over from one utterance to the next in a process, starts afresh for every
block of ``RENDER_BLOCK`` utterances, each rendered in a new worker process. Blocks are fixed
slices of the job list, so a corpus is bit-exact across rebuilds and worker counts.

Layout of ``out_dir``: ``<split>.jsonl`` manifests, ``<split>/<split>-<index>.flac``
(16 kHz mono 16-bit), ``corpus.json`` (config + statistics).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
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

from emformer_variants.data.manifest import (
    Utterance,
    built_with,
    publish_corpus,
    read_manifest,
    write_manifest,
)
from emformer_variants.data.text import (
    CLAUSES_VERSION,
    SENTENCES_VERSION,
    add_cache_dir_argument,
)
from emformer_variants.data.tts import (
    OWN_TEMPO_ENGINES,
    Voice,
    held_out_voices,
    synthesize_many,
    training_voices,
)
from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.utils.paths import project_cache_dir
from emformer_variants.utils.run_dir import pid_alive

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test", "test_everyday", "test_voice")
FORMAT_VERSION = 2
TEXT_SOURCES = ("austen", "gcide", "wordnet", "fortunes", "devil", "everyday")
DEFAULT_TEXT_WEIGHTS = {"austen": 0.15, "gcide": 0.15, "wordnet": 0.2, "fortunes": 0.12, "devil": 0.03,
                        "everyday": 0.35}
TRAIN_ENGINES = ("espeak", "flite", "festival", "hibari", "kokoro", "kokoro_mix", "mbrola", "rhvoice", "pico",
                 "accents")
DEFAULT_ENGINE_WEIGHTS = {"espeak": 0.3, "flite": 0.25, "festival": 0.1, "hibari": 0.35}
EVERYDAY_TEXTS = 60000  # template sentences generated (their pools split like any source)
# Per-utterance jitter of a training voice: multipliers on its own tempo and pitch, and
# espeak-ng's pitch range (0-99).
JITTER = {"rate": (0.85, 1.18), "pitch": (0.8, 1.25), "espeak_range": (15, 90)}
PEAK_DBFS_RANGE = (-12.0, -1.0)
PAD_SECONDS_RANGE = (0.05, 0.25)  # silence kept at each end after trimming
TRIM_DB = 40.0  # frames quieter than peak frame - TRIM_DB count as silence
HELD_OUT_BUCKETS = 20  # 1/20 of texts for dev, 1/20 for test


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
    """'dev', 'test' or 'train': a fixed assignment by a hash of the text."""
    bucket = int(hashlib.sha1(text.encode()).hexdigest(), 16) % HELD_OUT_BUCKETS
    return {0: "dev", 1: "test"}.get(bucket, "train")


def load_text_sources(cache_dir: Path) -> dict[str, list[str]]:
    """Every source's distinct texts (``TEXT_SOURCES``), and ``harvard`` for test_everyday.

    Sources are disjoint: a Harvard sentence is removed from every other source, so it is
    never trained on, and a text two sources share stays with the first of ``TEXT_SOURCES``.
    """
    from emformer_variants.data.english import load_english
    from emformer_variants.data.everyday import VERSION, everyday_texts
    from emformer_variants.data.text import _cached_lines, load_austen_clauses, load_austen_sentences

    cache_dir = Path(cache_dir)
    harvard = load_english("harvard", cache_dir)
    texts = {
        "austen": load_austen_sentences(cache_dir) + load_austen_clauses(cache_dir),
        **{name: load_english(name, cache_dir) for name in ("gcide", "wordnet", "fortunes", "devil")},
        "everyday": _cached_lines(cache_dir / f"{VERSION}-{EVERYDAY_TEXTS}.txt",
                                  lambda: everyday_texts(EVERYDAY_TEXTS)),
    }
    seen = set(harvard)
    out = {}
    for name, pool in texts.items():  # a text two sources share stays with the first
        out[name] = [t for t in pool if t not in seen]
        seen.update(out[name])
    out["harvard"] = harvard
    return out


def _weights(weights: dict | None, names: tuple[str, ...], default: dict[str, float], field: str
             ) -> dict[str, float]:
    """``weights`` (None: ``default``) as shares summing to 1 over ``names``; errors name ``field``."""
    if weights is None:
        weights = default
    if not isinstance(weights, dict) or not weights:
        raise UserError(f"{field}={weights!r}: give a mapping name -> weight over {list(names)}")
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise UserError(f"{field}: unknown {unknown}; use names from {list(names)}")
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise UserError(f"{field}.{name}={w!r}: use a number >= 0")
    total = float(sum(weights.values()))
    if total <= 0:
        raise UserError(f"{field}: at least one weight must be > 0")
    return {n: float(weights.get(n, 0.0)) / total for n in names if weights.get(n, 0.0) > 0}


def check_text_weights(weights: dict | None, field: str = "text_weights") -> dict[str, float]:
    return _weights(weights, TEXT_SOURCES, DEFAULT_TEXT_WEIGHTS, field)


def check_engine_weights(weights: dict | None, field: str = "engine_weights") -> dict[str, float]:
    return _weights(weights, TRAIN_ENGINES, DEFAULT_ENGINE_WEIGHTS, field)


def _quota(weights: dict[str, float], n: int) -> dict[str, int]:
    """Integer counts summing to ``n`` in proportion to ``weights`` (largest remainders)."""
    raw = {k: w * n for k, w in weights.items()}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (out[k] - raw[k], k))[: n - sum(out.values())]:
        out[k] += 1
    return out


def _pick_texts(sources: dict[str, list[str]], counts: dict[str, int], seed: int,
                text_weights: dict[str, float]) -> dict[str, list[str]]:
    """Texts per split: train/dev/test by ``text_weights`` from each source's hash pool
    (cycled when a pool is smaller than its share), test_everyday from Harvard,
    test_voice the first texts of test."""
    pools: dict[str, dict[str, list[str]]] = {"train": {}, "dev": {}, "test": {}}
    for name in text_weights:
        for split in pools:
            pools[split][name] = []
        for t in sources[name]:
            pools[sentence_pool(t)][name].append(t)
        for split in pools:
            random.Random(f"{seed}-{split}-{name}").shuffle(pools[split][name])
    out: dict[str, list[str]] = {}
    for split in ("train", "dev", "test"):
        picked = []
        for name, n in _quota(text_weights, counts[split]).items():
            pool = pools[split][name]
            if n and not pool:
                raise UserError(f"text source {name}: no {split} texts; lower its weight to 0")
            if split != "train" and n > len(pool):
                raise UserError(f"num_{split}={counts[split]}: only {len(pool)} held-out {split} "
                                f"texts of {name} exist; ask for fewer")
            picked += (pool * (-(-n // len(pool)) if pool else 0))[:n]
        random.Random(f"{seed}-{split}-mix").shuffle(picked)
        out[split] = picked
    harvard = list(sources["harvard"])
    random.Random(f"{seed}-everyday").shuffle(harvard)
    if counts["test_everyday"] > len(harvard):
        raise UserError(f"num_test_everyday={counts['test_everyday']}: only {len(harvard)} Harvard "
                        "sentences exist; ask for fewer")
    out["test_everyday"] = harvard[: counts["test_everyday"]]
    if counts["test_voice"] > counts["test"]:
        raise UserError(f"num_test_voice={counts['test_voice']}: held-out voices read the first "
                        f"texts of test; ask for at most num_test={counts['test']}")
    out["test_voice"] = out["test"][: counts["test_voice"]]
    return out


def _jittered(voice: Voice, rng: np.random.Generator) -> tuple[Voice, float, float]:
    """The voice with a per-utterance pitch range (espeak-ng), and tempo and pitch multipliers
    (1 for an engine that reads at its own, ``tts.OWN_TEMPO_ENGINES``)."""
    rate, pitch = rng.uniform(*JITTER["rate"]), rng.uniform(*JITTER["pitch"])
    if voice.engine in OWN_TEMPO_ENGINES:
        rate, pitch = 1.0, 1.0
    if voice.engine == "espeak":
        pitch_range = int(rng.integers(*JITTER["espeak_range"]))
        voice = dataclasses.replace(voice, options={**voice.options, "range": pitch_range})
    return voice, float(rate), float(pitch)


def _plan(texts: dict[str, list[str]], seed: int, root: Path, engine_weights: dict[str, float]
          ) -> list[_Job]:
    by_engine: dict[str, list[Voice]] = {}
    for v in training_voices(engine_weights):
        by_engine.setdefault(v.group, []).append(v)
    engines = list(engine_weights)
    probs = np.array([engine_weights[e] for e in engines])
    held_out = held_out_voices()
    jobs = []
    for split_id, split in enumerate(SPLITS):
        split_texts = texts[split]
        if split == "test_voice":  # every held-out voice reads the same texts
            split_texts = [t for _ in held_out for t in split_texts]
        for i, text in enumerate(split_texts):
            rng = np.random.default_rng([seed, split_id, i])
            if split == "test_voice":
                voice, rate, pitch = held_out[i // max(len(texts[split]), 1)], 1.0, 1.0
            else:
                engine = engines[int(rng.choice(len(engines), p=probs))]
                voice = by_engine[engine][int(rng.integers(len(by_engine[engine])))]
                voice, rate, pitch = _jittered(voice, rng)
            jobs.append(_Job(split, i, text, voice, rate, pitch, float(rng.uniform(*PEAK_DBFS_RANGE)),
                             float(rng.uniform(*PAD_SECONDS_RANGE)), int(rng.integers(2**31)),
                             str(root / split / f"{split}-{i:06d}.flac")))
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


def to_sample_rate(wave: np.ndarray, sr: int) -> np.ndarray:
    """A float32 waveform at ``sr`` Hz resampled to the corpus's ``SAMPLE_RATE``."""
    if sr == SAMPLE_RATE:
        return wave
    import torch

    with torch.no_grad():
        return _resampler(sr)(torch.from_numpy(wave)).numpy()


def _finish(job: _Job, wave: np.ndarray, sr: int) -> Utterance:
    import soundfile as sf

    if wave.size == 0 or not np.isfinite(wave).all() or np.abs(wave).max() == 0:
        raise RuntimeError(f"voice {job.voice.name} produced no audio for {job.text!r}")
    wave = to_sample_rate(wave, sr)
    wave = trim_silence(wave, SAMPLE_RATE, job.pad_seconds)
    wave = wave * (10 ** (job.peak_dbfs / 20) / np.abs(wave).max())
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(job.path, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return Utterance(job.path, job.text, round(len(wave) / SAMPLE_RATE, 4), job.voice.name)


def _die_with_parent() -> None:
    """Exit this worker once the process that started it is gone, so a killed build leaves no
    worker rendering on: a daemon thread watches the parent pid. (Not prctl's PDEATHSIG: it
    fires when the parent's *thread* that started the worker ends, and the pool's
    worker-handler thread ends at every shutdown, killing workers that hold the pool's queue
    locks and deadlocking it.)"""
    import threading

    started_by = mp.parent_process()  # known from the start, even if the parent is already gone
    parent = started_by.pid if started_by is not None else os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _init_worker() -> None:
    import torch

    _die_with_parent()
    torch.set_num_threads(1)


RENDER_BLOCK = 256  # utterances per fresh worker process: espeak-ng starts from the same state


def _render_block(jobs: list[_Job]) -> list[Utterance]:
    _init_worker()
    audio = synthesize_many([(j.voice, j.text + ".", j.rate, j.pitch, j.tts_seed) for j in jobs])
    return [_finish(job, wave, sr) for job, (wave, sr) in zip(jobs, audio, strict=True)]


def _voice_record(v: Voice) -> dict:
    """A voice as the corpus config records it (``family`` only when set, so the configs of
    corpora without one stay as they were)."""
    record = {"name": v.name, "engine": v.engine, "options": v.options}
    return {**record, "family": v.family} if v.family else record


def _config(counts: dict[str, int], seed: int, engine_weights: dict[str, float],
            text_weights: dict[str, float]) -> dict:
    from emformer_variants.data.english import VERSIONS
    from emformer_variants.data.everyday import VERSION

    return {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "counts": counts,
        "sample_rate": SAMPLE_RATE,
        "texts": {"austen": [SENTENCES_VERSION, CLAUSES_VERSION], "everyday": [VERSION, EVERYDAY_TEXTS],
                  **{name: f"{name}-{v}" for name, v in VERSIONS.items()}},
        "text_weights": text_weights,
        "engine_weights": engine_weights,
        "voices": [_voice_record(v) for v in training_voices(engine_weights)],
        "held_out_voices": [_voice_record(v) for v in held_out_voices()],
        "jitter": {**JITTER, "peak_dbfs": PEAK_DBFS_RANGE, "pad_seconds": PAD_SECONDS_RANGE},
    }


def _remove_stale_tmp(out_dir: Path) -> None:
    for tmp in out_dir.parent.glob(f"{out_dir.name}.tmp-*"):
        if not pid_alive(tmp.name.rsplit("-", 1)[1]):
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed build of an older version


@contextlib.contextmanager
def _build_lock(out_dir: Path):
    """One builder per corpus: a second waits (flock, released when a builder dies). The lock
    file goes once the corpus is there (whoever takes a lock after that finds the corpus)."""
    lock = out_dir.parent / f"{out_dir.name}.lock"
    with open(lock, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[synthetic] waiting for another process building {out_dir}", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield
        lock.unlink(missing_ok=True)


def _block_file(partial: Path, index: int) -> Path:
    return partial / f"block-{index:05d}.jsonl"


def _resumed_block(partial: Path, index: int, block: list[_Job]) -> list[Utterance] | None:
    """The utterances an interrupted build finished for ``block``, if all are there."""
    path = _block_file(partial, index)
    if not path.is_file():
        return None
    try:
        utts = read_manifest(path)
    except UserError:
        return None
    same = len(utts) == len(block) and all(
        (u.text, u.speaker, Path(u.audio)) == (j.text, j.voice.name, Path(j.path)) and Path(u.audio).is_file()
        for u, j in zip(utts, block, strict=False))
    return utts if same else None


def _open_partial(partial: Path, config: dict) -> None:
    """``partial`` holds the blocks of an interrupted build of ``config``, or is made empty."""
    meta = partial / "config.json"
    try:
        same = json.loads(meta.read_text()) == json.loads(json.dumps(config))
    except (OSError, json.JSONDecodeError):
        same = False
    if not same:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        meta.write_text(json.dumps(config) + "\n")


def _existing(out_dir: Path, config: dict) -> dict[str, Path] | None:
    if not built_with(out_dir, config, f"delete {out_dir} or pick another --out"):
        return None
    return {split: out_dir / f"{split}.jsonl" for split in SPLITS}


def build_synthetic_corpus(
    out_dir: Path,
    *,
    num_train: int,
    num_dev: int,
    num_test: int,
    num_test_everyday: int,
    num_test_voice: int,
    seed: int = 0,
    workers: int = 2,
    cache_dir: Path,
    engine_weights: dict | None = None,
    text_weights: dict | None = None,
) -> dict[str, Path]:
    """Build (or find) the corpus; returns split name -> manifest path.

    ``num_test_voice`` texts are read by each held-out voice. Idempotent: an ``out_dir``
    holding the same config returns at once; one built with another config is an error.
    Crash-safe and resumable: built in ``<out_dir>.partial``, renamed when complete; each
    finished block of ``RENDER_BLOCK`` utterances is recorded there, so the same build run
    again after an interruption renders only the blocks still missing (the audio is the
    same either way). One process builds a corpus at a time (``<out_dir>.lock``); ``workers``
    processes render the blocks.
    """
    out_dir = Path(out_dir).absolute()
    counts = {"train": num_train, "dev": num_dev, "test": num_test, "test_everyday": num_test_everyday,
              "test_voice": num_test_voice}
    for split, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UserError(f"num_{split}={n!r}: must be an integer >= 0")
    engine_weights = check_engine_weights(engine_weights)
    text_weights = check_text_weights(text_weights)
    config = _config(counts, seed, engine_weights, text_weights)
    found = _existing(out_dir, config)
    if found is not None:
        return found
    texts = _pick_texts(load_text_sources(Path(cache_dir)), counts, seed, text_weights)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out_dir)
    with _build_lock(out_dir):
        found = _existing(out_dir, config)  # built by the process this one waited for
        if found is not None:
            return found
        return _build(out_dir, config, texts, seed, workers, engine_weights)


def _build(out_dir: Path, config: dict, texts: dict[str, list[str]], seed: int, workers: int,
           engine_weights: dict[str, float]) -> dict[str, Path]:
    partial = out_dir.parent / f"{out_dir.name}.partial"
    _open_partial(partial, config)
    jobs = _plan(texts, seed, partial, engine_weights)
    # Slow held-out-voice jobs first, so they spread over the workers instead of trailing.
    jobs.sort(key=lambda j: (j.split != "test_voice", SPLITS.index(j.split), j.index))
    blocks = [jobs[i:i + RENDER_BLOCK] for i in range(0, len(jobs), RENDER_BLOCK)]
    done = {i: utts for i, block in enumerate(blocks)
            if (utts := _resumed_block(partial, i, block)) is not None}
    todo = [i for i in range(len(blocks)) if i not in done]
    resumed = f", {sum(len(u) for u in done.values())} kept from an interrupted build" if done else ""
    print(f"[synthetic] building {out_dir} ({len(jobs)} utterances{resumed}, {max(workers, 1)} workers)",
          flush=True)

    start = time.perf_counter()
    new = 0
    seconds = sum(u.duration for utts in done.values() for u in utts)
    try:
        # One new process per block, also for workers=1, so no block sees another's espeak state.
        with mp.get_context("spawn").Pool(max(workers, 1), maxtasksperchild=1) as pool:
            for i, utts in zip(todo, pool.imap(_render_block, [blocks[i] for i in todo]), strict=True):
                write_manifest(_block_file(partial, i), utts)  # the unit a resumed build keeps
                done[i] = utts
                new += len(utts)
                seconds += sum(u.duration for u in utts)
                now = time.perf_counter()
                print(f"[synthetic] {sum(len(u) for u in done.values())}/{len(jobs)} utterances, "
                      f"{seconds / 3600:.2f} h, {new / (now - start):.2f} utt/s", flush=True)
    except BaseException:
        if done:
            print(f"[synthetic] stopped: {len(done)}/{len(blocks)} blocks of {RENDER_BLOCK} utterances "
                  f"kept in {partial}; the same build resumes from them", file=sys.stderr, flush=True)
        raise
    results = {(job.split, job.index): utt
               for i in sorted(done) for job, utt in zip(blocks[i], done[i], strict=True)}
    stats = {}
    for split in SPLITS:
        n = sum(1 for key in results if key[0] == split)
        utts = [results[(split, i)] for i in range(n)]
        write_manifest(partial / f"{split}.jsonl", utts)
        stats[split] = {
            "utterances": len(utts),
            "hours": round(sum(u.duration for u in utts) / 3600, 4),
            "speakers": len({u.speaker for u in utts}),
        }
    for path in [*partial.glob("block-*.jsonl"), partial / "config.json"]:
        path.unlink()
    elapsed = time.perf_counter() - start
    meta = {"config": config, "stats": stats, "build_seconds": round(elapsed, 1)}
    publish_corpus(partial, out_dir, meta, lambda: _existing(out_dir, config) is not None)
    print(
        f"[synthetic] done in {elapsed:.0f} s: {seconds / 3600:.2f} h of audio "
        f"({new / max(elapsed, 1e-9):.1f} utt/s rendered, {seconds / max(elapsed, 1e-9):.1f}x real time)",
        flush=True,
    )
    return {split: out_dir / f"{split}.jsonl" for split in SPLITS}


def _parse_weights(text: str) -> dict[str, float]:
    try:
        return {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use name=weight pairs, e.g. espeak=0.3,hibari=0.7") \
            from None


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="corpus folder to create")
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-dev", type=int, default=200)
    p.add_argument("--num-test", type=int, default=200)
    p.add_argument("--num-test-everyday", type=int, default=200)
    p.add_argument("--num-test-voice", type=int, default=100, help="texts read by each held-out voice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--engine-weights", type=_parse_weights, default=None, metavar="E=W,...",
                   help=f"share of utterances per engine (default {DEFAULT_ENGINE_WEIGHTS})")
    p.add_argument("--text-weights", type=_parse_weights, default=None, metavar="S=W,...",
                   help=f"share of utterances per text source (default {DEFAULT_TEXT_WEIGHTS})")
    add_cache_dir_argument(p)
    args = p.parse_args(argv)
    manifests = build_synthetic_corpus(
        args.out,
        num_train=args.num_train,
        num_dev=args.num_dev,
        num_test=args.num_test,
        num_test_everyday=args.num_test_everyday,
        num_test_voice=args.num_test_voice,
        seed=args.seed,
        workers=args.workers,
        cache_dir=args.cache_dir or project_cache_dir(),
        engine_weights=args.engine_weights,
        text_weights=args.text_weights,
    )
    for split, path in manifests.items():
        print(f"{split}: {path} ({len(read_manifest(path))} utterances)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
