"""More held-out voices: the texts of a synthetic corpus's ``test_voice`` split read by three
engine families that no corpus trains on, from Debian's contrib and non-free sections (SVOX
Pico, RHVoice, MBROLA; ``tts.nonfree_voices``). Evaluation only (split ``test``); the
manifest's ``speaker`` names the voice, so WER is reported per voice as for ``test_voice``.

The texts are those of the default corpus (``conf/data/synthetic.yaml``: the first
``num_texts`` of its ``test`` split, which ``test_voice``'s voices also read), so every voice of
the two sets reads the same sentences. Idempotent and crash-safe like the other builders.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from emformer_variants.data.manifest import built_with, publish_corpus, write_manifest
from emformer_variants.data.synthetic import (
    PAD_SECONDS_RANGE,
    PEAK_DBFS_RANGE,
    _finish,
    _Job,
    _pick_texts,
    check_text_weights,
    load_text_sources,
)
from emformer_variants.data.tts import nonfree_voices, synthesize_many
from emformer_variants.errors import UserError

FORMAT_VERSION = 1


def build_nonfree_voices(out_dir: Path, *, num_texts: int, corpus_num_test: int, corpus_seed: int,
                         cache_dir: Path, text_weights: dict | None = None) -> dict[str, Path]:
    """Build (or find) the set; returns {"test": manifest path}."""
    out_dir = Path(out_dir).absolute()
    if isinstance(num_texts, bool) or not isinstance(num_texts, int) or not 0 < num_texts <= corpus_num_test:
        raise UserError(f"num_texts={num_texts!r}: an integer from 1 to corpus_num_test={corpus_num_test}")
    text_weights = check_text_weights(text_weights, "data.source.text_weights")
    voices = nonfree_voices()
    config = {"format_version": FORMAT_VERSION, "num_texts": num_texts, "corpus_num_test": corpus_num_test,
              "corpus_seed": corpus_seed, "text_weights": text_weights,
              "voices": [{"name": v.name, "engine": v.engine, "options": v.options} for v in voices]}
    manifests = {"test": out_dir / "test.jsonl"}
    if built_with(out_dir, config, f"delete {out_dir}, it rebuilds"):
        return manifests

    counts = {"train": 0, "dev": 0, "test": corpus_num_test, "test_everyday": 0, "test_voice": 0}
    texts = _pick_texts(load_text_sources(Path(cache_dir)), counts, corpus_seed, text_weights)["test"]
    texts = texts[:num_texts]
    start = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f"{out_dir.name}.tmp-{os.getpid()}"
    jobs = []
    for i, (voice, text) in enumerate((v, t) for v in voices for t in texts):
        rng = np.random.default_rng([corpus_seed, 7, i])
        jobs.append(_Job("test", i, text, voice, 1.0, 1.0, float(rng.uniform(*PEAK_DBFS_RANGE)),
                         float(rng.uniform(*PAD_SECONDS_RANGE)), 0, str(tmp / "test" / f"test-{i:06d}.flac")))
    try:
        audio = synthesize_many([(j.voice, j.text + ".", 1.0, 1.0, 0) for j in jobs])
        utts = [_finish(job, wave, sr) for job, (wave, sr) in zip(jobs, audio, strict=True)]
        write_manifest(tmp / "test.jsonl", utts)
        hours = sum(u.duration for u in utts) / 3600
        stats = {"utterances": len(utts), "hours": round(hours, 4), "speakers": len(voices)}
        meta = {"config": config, "stats": {"test": stats}}
        publish_corpus(tmp, out_dir, meta, lambda: (out_dir / "corpus.json").is_file())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"[nonfree_voices] {len(utts)} utterances ({len(voices)} voices x {len(texts)} texts), "
          f"{hours * 60:.1f} min, built in {time.perf_counter() - start:.1f} s -> {out_dir}", flush=True)
    return manifests
