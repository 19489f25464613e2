"""Corpus building: Austen text, TTS voices, the synthetic corpus and the Asterisk test set.

Downloads (Debian packages) go to $EMFORMER_VARIANTS_CACHE if set, else a session tmp dir.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emformer_variants.data import synthetic, tts
from emformer_variants.data.asterisk import build_asterisk
from emformer_variants.data.manifest import read_manifest
from emformer_variants.data.sources import SyntheticSource
from emformer_variants.data.synthetic import (
    SPLITS,
    _config,
    _pick_sentences,
    _plan,
    build_synthetic_corpus,
    check_engine_weights,
    sentence_pool,
)
from emformer_variants.data.text import (
    load_austen_clauses,
    load_austen_sentences,
    split_clauses,
    split_sentences,
)
from emformer_variants.errors import UserError
from emformer_variants.text_norm import normalize_text

TINY = {"num_train": 6, "num_dev": 2, "num_test": 2, "num_test_voice": 1}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    env = os.environ.get("EMFORMER_VARIANTS_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def sentences(cache_dir) -> list[str]:
    return load_austen_sentences(cache_dir)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, cache_dir, sentences) -> tuple[dict[str, Path], float]:
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    start = time.perf_counter()
    manifests = build_synthetic_corpus(out, **TINY, seed=0, workers=2, cache_dir=cache_dir)
    return manifests, time.perf_counter() - start


def test_austen_sentences(cache_dir, sentences):
    assert len(sentences) > 15000
    assert len(set(sentences)) == len(sentences)
    for s in sentences:
        assert normalize_text(s) == s and 5 <= len(s.split()) <= 25
    assert load_austen_sentences(cache_dir) == sentences  # from the cached text file


def test_split_sentences_keeps_titles_together():
    lines = ["It is Mr. Darcy. He came", "in at last!", "", "Chapter 2", "", '"No." She left.']
    assert split_sentences(lines) == [
        "It is Mr. Darcy.",
        "He came in at last!",
        "Chapter 2",
        '"No."',
        "She left.",
    ]


def test_split_clauses_cuts_long_sentences_only():
    long = ("When Mr. Knightley came in, she was sitting by the fire; he had walked from Donwell, "
            "which was a mile off -- and he spoke of nothing but the weather, as all the family "
            "knew he would.")
    clauses = split_clauses(long)
    assert clauses == [
        # neighbours joined while they fit in 25 words (21 here; 29 with the next piece)
        "when mister knightley came in she was sitting by the fire he had walked from donwell "
        "which was a mile off",
        "and he spoke of nothing but the weather as all the family knew he would",
    ]
    assert " ".join(clauses) == normalize_text(long.replace("Mr.", "Mister"))  # nothing lost here
    assert split_clauses("She was sitting by the fire, and he came in.") == []  # short: a sentence
    run_on = " ".join(["word"] * 30) + ", and then she was sitting by the fire " + "again " * 20
    assert split_clauses(run_on) == []  # each piece alone is over 25 words
    assert split_clauses("It cost 30 pounds, " + "and more " * 20) == []  # rejected characters


def test_austen_clauses_are_extra_training_text(cache_dir, sentences):
    clauses = load_austen_clauses(cache_dir)
    assert len(clauses) > 20000 and len(set(clauses)) == len(clauses)
    assert not set(clauses) & set(sentences)  # never a held-out (or any) sentence
    for c in clauses[:: 97]:
        assert normalize_text(c) == c and 5 <= len(c.split()) <= 25
    counts = {"train": 50, "dev": 8, "test": 8, "test_voice": 4}
    plain, extra = _pick_sentences(sentences, counts, 0), _pick_sentences(sentences, counts, 0, clauses)
    for split in ("dev", "test", "test_voice"):
        assert extra[split] == plain[split]
    assert set(extra["train"]) & set(clauses) and not set(plain["train"]) & set(clauses)
    assert _config({"train": 1}, 0) == _config({"train": 1}, 0, None, False)  # old corpora keep their key
    assert _config({"train": 1}, 0, None, True)["train_clauses"].startswith("austen-clauses")


def test_bad_train_clauses_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^data.source.train_clauses='yes': use true or false$"):
        SyntheticSource(train_clauses="yes", cache_dir=str(tmp_path)).splits()


def test_voices_all_speak():
    voices = tts.default_voices()
    assert len({v.name for v in voices}) == len(voices) >= 15
    assert {v.engine for v in voices} == {"espeak", "flite", "hibari"}
    assert tts.held_out_voice().name not in {v.name for v in voices}
    for voice in [*voices, tts.held_out_voice()]:
        wave, sr = tts.synthesize(voice, "good morning.", rate=1.05, pitch=0.95)
        assert wave.dtype == np.float32 and wave.ndim == 1 and sr >= 16000
        assert 0.3 < len(wave) / sr < 3.0, voice.name
        assert np.sqrt(np.mean(wave**2)) > 1e-3, voice.name


def test_flite_missing_is_a_user_error(monkeypatch):
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    voice = next(v for v in tts.default_voices() if v.engine == "flite")
    with pytest.raises(UserError, match="apt-get install flite"):
        tts.synthesize(voice, "hello")


def test_corpus_splits_and_audio(tiny_corpus):
    manifests, _ = tiny_corpus
    assert set(manifests) == set(SPLITS)
    utts = {split: read_manifest(path) for split, path in manifests.items()}
    assert {split: len(u) for split, u in utts.items()} == {"train": 6, "dev": 2, "test": 2, "test_voice": 1}
    texts = {split: {u.text for u in us} for split, us in utts.items()}
    assert not texts["train"] & (texts["dev"] | texts["test"] | texts["test_voice"])
    assert not texts["dev"] & texts["test"]
    assert texts["test_voice"] <= texts["test"]  # same sentences, unseen voice
    assert all(sentence_pool(t) == "train" for t in texts["train"])
    held_out = tts.held_out_voice().name
    assert {u.speaker for u in utts["test_voice"]} == {held_out}
    assert held_out not in {u.speaker for s in ("train", "dev", "test") for u in utts[s]}
    for u in (u for us in utts.values() for u in us):
        assert normalize_text(u.text) == u.text
        info = sf.info(u.audio)
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
        wave, _ = sf.read(u.audio, dtype="float32")
        assert abs(len(wave) / 16000 - u.duration) < 1e-3
        assert 0.5 < u.duration < 20.0
        # peak-normalised to -12..-1 dBFS, and speech rather than silence
        assert 0.2 < np.abs(wave).max() < 0.95
        assert np.sqrt(np.mean(wave**2)) > 0.01


def test_corpus_idempotent_and_atomic(tiny_corpus, cache_dir):
    manifests, _ = tiny_corpus
    out = manifests["train"].parent
    stamp = (out / "corpus.json").stat().st_mtime_ns
    again = build_synthetic_corpus(out, **TINY, seed=0, workers=2, cache_dir=cache_dir)
    assert again == manifests and (out / "corpus.json").stat().st_mtime_ns == stamp
    assert not list(out.parent.glob(f"{out.name}.tmp-*"))
    with pytest.raises(UserError, match="another config"):
        build_synthetic_corpus(out, **TINY, seed=1, workers=2, cache_dir=cache_dir)


def test_stale_build_folders_of_ended_processes_are_removed(tmp_path):
    """<out>.tmp-<pid> of a process that no longer exists goes; a live or unparsable one stays."""
    import subprocess
    import sys

    from emformer_variants.data.synthetic import _remove_stale_tmp

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True).stdout.strip()
    out = tmp_path / "corpus"
    for suffix in (ended, str(os.getpid()), "x"):
        (tmp_path / f"corpus.tmp-{suffix}").mkdir()
    _remove_stale_tmp(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"corpus.tmp-{os.getpid()}", "corpus.tmp-x"]


def test_corpus_bit_exact_across_worker_counts(tmp_path, cache_dir, monkeypatch):
    """Every engine, espeak-ng included, gives the same bytes for 1 and 2 workers: blocks of
    RENDER_BLOCK utterances each start in a fresh process (blocks of 4 here, so the 11
    utterances span three blocks and espeak's carried-over state matters)."""
    reseeded = build_synthetic_corpus(tmp_path / "seed1", **TINY, seed=1, workers=1, cache_dir=cache_dir)
    monkeypatch.setattr(synthetic, "RENDER_BLOCK", 4)
    one = build_synthetic_corpus(tmp_path / "one", **TINY, seed=0, workers=1, cache_dir=cache_dir)
    two = build_synthetic_corpus(tmp_path / "two", **TINY, seed=0, workers=2, cache_dir=cache_dir)
    engines = set()
    for split in SPLITS:
        a, b = read_manifest(one[split]), read_manifest(two[split])
        assert [(u.text, u.speaker, u.duration) for u in a] == [(u.text, u.speaker, u.duration) for u in b]
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(sf.read(x.audio)[0], sf.read(y.audio)[0]), x.audio
            engines.add(x.speaker.split("-")[0])
    assert {"espeak", "piper"} <= engines  # test_voice is piper
    assert [u.text for u in read_manifest(reseeded["train"])] != [u.text for u in read_manifest(one["train"])]


def test_train_engine_weights_shift_training_audio_only(sentences):
    """Weights give each voice of an engine that many round-robin slots in train; dev/test stay
    balanced; all-ones is the balanced corpus (same config, so the same cache folder)."""
    texts = _pick_sentences(sentences, {"train": 420, "dev": 28, "test": 28, "test_voice": 1}, 0)
    weights = check_engine_weights({"espeak": 1, "flite": 2, "hibari": 3})
    voices = tts.default_voices()
    per_engine = collections.Counter(v.engine for v in voices)
    slots = {e: n * weights[e] for e, n in per_engine.items()}
    balanced, weighted = _plan(texts, 0, Path("/x")), _plan(texts, 0, Path("/x"), weights)
    train = collections.Counter(j.voice.engine for j in weighted if j.split == "train")
    assert train == {e: 420 * k // sum(slots.values()) for e, k in slots.items()}  # 420 = 10 cycles
    for split in ("dev", "test", "test_voice"):
        assert [(j.text, j.voice) for j in weighted if j.split == split] == [
            (j.text, j.voice) for j in balanced if j.split == split]
    train_texts = [j.text for j in balanced if j.split == "train"]
    assert [j.text for j in weighted if j.split == "train"] == train_texts
    assert check_engine_weights({"espeak": 1, "flite": 1, "hibari": 1}) is None
    assert _config({"train": 1}, 0, None) == _config({"train": 1}, 0, check_engine_weights(None))
    assert "train_engine_weights" in _config({"train": 1}, 0, weights)


@pytest.mark.parametrize("bad,needle", [
    ({"espeak": 1}, "give one integer weight for each of ['espeak', 'flite', 'hibari']"),
    ({"espeak": 1, "flite": 0, "hibari": 1}, "train_engine_weights.flite=0: use an integer >= 1"),
    ({"espeak": 1, "flite": 1.5, "hibari": 1}, "train_engine_weights.flite=1.5: use an integer >= 1"),
    ([1, 2], "give a mapping engine -> weight"),
])
def test_bad_train_engine_weights_are_one_line(bad, needle):
    with pytest.raises(UserError) as e:
        check_engine_weights(bad)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_asterisk(tmp_path, cache_dir):
    manifest = build_asterisk(tmp_path / "asterisk", cache_dir)["test"]
    utts = read_manifest(manifest)
    assert 540 <= len(utts) <= 570
    assert 20 < sum(u.duration for u in utts) / 60 < 30
    assert all(u.text and normalize_text(u.text) == u.text for u in utts)
    by_name = {Path(u.audio).stem: u.text for u in utts}
    assert by_name["digits__7"] == "seven" and "silence__1" not in by_name
    info = sf.info(utts[0].audio)
    assert (info.samplerate, info.channels) == (16000, 1)
    stamp = (tmp_path / "asterisk" / "corpus.json").stat().st_mtime_ns
    assert build_asterisk(tmp_path / "asterisk", cache_dir)["test"] == manifest
    assert (tmp_path / "asterisk" / "corpus.json").stat().st_mtime_ns == stamp  # not rebuilt
