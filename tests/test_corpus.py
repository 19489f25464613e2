"""Corpus building: English text sources, TTS voices, the synthetic corpus and the Asterisk test set.

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
    _pick_texts,
    _plan,
    _quota,
    build_synthetic_corpus,
    check_engine_weights,
    check_text_weights,
    load_text_sources,
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

TINY = {"num_train": 6, "num_dev": 2, "num_test": 2, "num_test_everyday": 1, "num_test_voice": 1}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    env = os.environ.get("EMFORMER_VARIANTS_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def sentences(cache_dir) -> list[str]:
    return load_austen_sentences(cache_dir)


@pytest.fixture(scope="session")
def text_sources(cache_dir) -> dict[str, list[str]]:
    return load_text_sources(cache_dir)


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


def test_austen_clauses_are_new_text(cache_dir, sentences):
    clauses = load_austen_clauses(cache_dir)
    assert len(clauses) > 20000 and len(set(clauses)) == len(clauses)
    assert not set(clauses) & set(sentences)
    for c in clauses[:: 97]:
        assert normalize_text(c) == c and 5 <= len(c.split()) <= 25


def test_text_sources(text_sources):
    """Every source is large, normalised, 5-25 words, distinct, and the sources are disjoint."""
    minimum = {"austen": 40000, "gcide": 30000, "wordnet": 100000, "fortunes": 10000, "devil": 2000,
               "everyday": 60000, "harvard": 700}
    assert sorted(text_sources) == sorted(minimum)
    for name, texts in text_sources.items():
        assert len(texts) >= minimum[name] * 0.99, name
        assert len(set(texts)) == len(texts), name
        for t in texts[:: max(1, len(texts) // 300)]:
            assert normalize_text(t) == t and 5 <= len(t.split()) <= 25, (name, t)
    assert "the birch canoe slid on the smooth planks" in text_sources["harvard"]
    assert sum(map(len, text_sources.values())) == len(set().union(*text_sources.values()))


def test_everyday_texts_speak_numbers_as_words():
    from emformer_variants.data.everyday import everyday_texts

    texts = everyday_texts(500, seed=3)
    assert texts == everyday_texts(500, seed=3) and texts != everyday_texts(500, seed=4)
    assert len(set(texts)) == 500
    joined = " ".join(texts)
    for word in ("minutes", "o'clock", "dollars", "monday", "thousand"):
        assert word in joined
    assert not any(ch.isdigit() for ch in joined)


def test_pick_texts_mixes_sources_and_holds_out(text_sources):
    counts = {"train": 2000, "dev": 200, "test": 200, "test_everyday": 50, "test_voice": 20}
    weights = check_text_weights(None)
    picked = _pick_texts(text_sources, counts, 0, weights)
    assert {s: len(t) for s, t in picked.items()} == counts
    source_of = {t: name for name, texts in text_sources.items() for t in texts}
    for split in ("train", "dev", "test"):
        got = collections.Counter(source_of[t] for t in picked[split])
        assert dict(got) == _quota(weights, counts[split]), split
        assert all(sentence_pool(t) == split for t in picked[split])
    assert set(picked["test_everyday"]) <= set(text_sources["harvard"])
    assert picked["test_voice"] == picked["test"][:20]
    # held-out texts do not move with the corpus size
    bigger = _pick_texts(text_sources, {**counts, "train": 5000}, 0, weights)
    assert bigger["test"] == picked["test"] and bigger["dev"] == picked["dev"]
    only = _pick_texts(text_sources, counts, 0, check_text_weights({"everyday": 1}))
    assert {source_of[t] for t in only["train"]} == {"everyday"}


def test_weights_are_shares(text_sources):
    assert _quota({"a": 0.5, "b": 0.25, "c": 0.25}, 7) == {"a": 3, "b": 2, "c": 2}  # largest remainders
    assert check_engine_weights({"espeak": 2, "hibari": 2}) == {"espeak": 0.5, "hibari": 0.5}
    texts = {"train": ["t"] * 400, "dev": [], "test": [], "test_everyday": [], "test_voice": []}
    jobs = _plan(texts, 0, Path("/x"), check_engine_weights({"flite": 1, "hibari": 3}))
    engines = collections.Counter(j.voice.engine for j in jobs)
    assert set(engines) == {"flite", "hibari"} and 0.2 < engines["flite"] / 400 < 0.3


@pytest.mark.parametrize("bad,needle", [
    ({"espeak": -1}, "engine_weights.espeak=-1: use a number >= 0"),
    ({"piper": 1}, "engine_weights: unknown ['piper']"),
    ({"espeak": 0}, "engine_weights: at least one weight must be > 0"),
    ([1, 2], "give a mapping name -> weight"),
])
def test_bad_engine_weights_are_one_line(bad, needle):
    with pytest.raises(UserError) as e:
        check_engine_weights(bad)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_text_weights_via_the_source_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^data.source.text_weights: unknown \['bible'\]"):
        SyntheticSource(text_weights={"bible": 1}, cache_dir=str(tmp_path)).splits()


def test_voices_all_speak():
    voices = tts.default_voices()
    held_out = tts.held_out_voices()
    assert len({v.name for v in voices}) == len(voices) >= 250
    assert {v.engine for v in voices} == {"espeak", "flite", "festival", "hibari"}
    assert not {v.name for v in held_out} & {v.name for v in voices}
    assert "piper" not in {v.engine for v in voices}  # an engine family never trained on
    one_per_kind = {}
    for v in voices:
        one_per_kind.setdefault((v.engine, v.options.get("voice", v.name)[:6]), v)
    for voice in [*one_per_kind.values(), *held_out]:
        wave, sr = tts.synthesize(voice, "good morning.", rate=1.05, pitch=0.95)
        assert wave.dtype == np.float32 and wave.ndim == 1 and sr >= 8000
        assert 0.3 < len(wave) / sr < 3.0, voice.name
        assert np.sqrt(np.mean(wave**2)) > 1e-3, voice.name


def test_festival_batch_equals_single_calls():
    voice = next(v for v in tts.default_voices() if v.engine == "festival")
    requests = [(voice, "good morning.", 1.0, 1.0, 0), (voice, "see you on monday.", 0.9, 1.2, 0)]
    batch = tts.synthesize_many(requests)
    for (v, text, rate, pitch, seed), (wave, sr) in zip(requests, batch, strict=True):
        single, sr1 = tts.synthesize(v, text, rate=rate, pitch=pitch, seed=seed)
        assert sr == sr1 and np.array_equal(wave, single)
    assert len(batch[1][0]) > len(batch[0][0])


def test_formant_shifted_voice_is_another_speaker():
    """The held-out piper-joe-formant voice: joe's audio through Praat's Change gender
    (higher pitch, same length and words)."""
    import torch
    import torchaudio.functional as AF

    joe, shifted = tts.held_out_voices()[:2]
    a, sr = tts.synthesize(joe, "good morning to you all.", seed=3)
    b, _ = tts.synthesize(shifted, "good morning to you all.", seed=3)
    assert len(a) == len(b)
    pa = AF.detect_pitch_frequency(torch.from_numpy(a), sr).median()
    pb = AF.detect_pitch_frequency(torch.from_numpy(b), sr).median()
    assert pb > 1.3 * pa


def test_flite_missing_is_a_user_error(monkeypatch):
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    voice = next(v for v in tts.default_voices() if v.engine == "flite")
    with pytest.raises(UserError, match="apt-get install flite"):
        tts.synthesize(voice, "hello")


def test_corpus_splits_and_audio(tiny_corpus):
    manifests, _ = tiny_corpus
    assert set(manifests) == set(SPLITS)
    utts = {split: read_manifest(path) for split, path in manifests.items()}
    held_out = [v.name for v in tts.held_out_voices()]
    assert {split: len(u) for split, u in utts.items()} == {
        "train": 6, "dev": 2, "test": 2, "test_everyday": 1, "test_voice": len(held_out)}
    texts = {split: {u.text for u in us} for split, us in utts.items()}
    assert not texts["train"] & (texts["dev"] | texts["test"] | texts["test_voice"] | texts["test_everyday"])
    assert not texts["dev"] & texts["test"]
    assert texts["test_voice"] <= texts["test"]  # same sentences, unseen voices
    assert all(sentence_pool(t) == "train" for t in texts["train"])
    assert [u.speaker for u in utts["test_voice"]] == held_out  # one text, each held-out voice
    assert not set(held_out) & {u.speaker for s in ("train", "dev", "test", "test_everyday") for u in utts[s]}
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
    assert not list(out.parent.glob(f"{out.name}.tmp-*")) and not list(out.parent.glob(f"{out.name}.partial"))
    assert not list(out.glob("block-*")) and not (out / "config.json").exists()
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


def test_interrupted_build_resumes_from_its_finished_blocks(tmp_path, cache_dir, monkeypatch, capsys):
    """A build stopped after the first of its two blocks keeps it; run again, it renders only the
    second, and the corpus is the same as one built in one go."""
    monkeypatch.setattr(synthetic, "RENDER_BLOCK", 3)  # the 5 utterances span two blocks
    small = dict(num_train=3, num_dev=2, num_test=0, num_test_everyday=0, num_test_voice=0, seed=0,
                 workers=1, cache_dir=cache_dir, engine_weights={"flite": 1})  # deterministic
    ref = build_synthetic_corpus(tmp_path / "ref", **small)
    write = synthetic.write_manifest

    def stop_at_second_block(path, utts):  # after the first block is recorded
        if Path(path).name == "block-00001.jsonl":
            raise KeyboardInterrupt
        write(path, utts)

    monkeypatch.setattr(synthetic, "write_manifest", stop_at_second_block)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        build_synthetic_corpus(out, **small)
    partial = tmp_path / "out.partial"
    assert "1/2 blocks of 3 utterances kept" in capsys.readouterr().err
    kept = {u.audio: Path(u.audio).stat().st_mtime_ns for u in read_manifest(partial / "block-00000.jsonl")}
    assert len(kept) == 3 and not out.exists()

    monkeypatch.setattr(synthetic, "write_manifest", write)
    got = build_synthetic_corpus(out, **small)
    assert "3 kept from an interrupted build" in capsys.readouterr().out
    assert not partial.exists() and not list(out.glob("block-*")) and not (tmp_path / "out.lock").exists()
    for path, stamp in kept.items():  # not rendered again
        assert (out / Path(path).relative_to(partial)).stat().st_mtime_ns == stamp
    for split in SPLITS:
        a, b = read_manifest(ref[split]), read_manifest(got[split])
        assert [(u.text, u.speaker, u.duration) for u in a] == [(u.text, u.speaker, u.duration) for u in b]
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(sf.read(x.audio)[0], sf.read(y.audio)[0]), y.audio


def test_partial_build_of_another_config_is_discarded(tmp_path):
    from emformer_variants.data.synthetic import _open_partial

    partial = tmp_path / "c.partial"
    partial.mkdir()
    (partial / "config.json").write_text('{"seed": 1}')
    (partial / "block-00000.jsonl").write_text("")
    _open_partial(partial, {"seed": 2})
    assert sorted(p.name for p in partial.iterdir()) == ["config.json"]
    (partial / "block-00000.jsonl").write_text("")
    _open_partial(partial, {"seed": 2})  # the same config keeps its blocks
    assert (partial / "block-00000.jsonl").exists()


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
    assert {"piper", "festival"} <= engines  # test_voice
    assert [u.text for u in read_manifest(reseeded["train"])] != [u.text for u in read_manifest(one["train"])]


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


def _sleep_in_worker(seconds):
    synthetic._init_worker()
    print(os.getpid(), flush=True)
    time.sleep(seconds)


def test_render_workers_die_with_a_killed_build(tmp_path):
    """kill -9 of the building process also ends its render workers (no orphan keeps a core)."""
    import signal
    import subprocess
    import sys

    script = (
        "import multiprocessing as mp, sys\n"
        "from tests.test_corpus import _sleep_in_worker\n"
        "if __name__ == '__main__':\n"
        "    with mp.get_context('spawn').Pool(1) as pool:\n"
        "        pool.map(_sleep_in_worker, [60])\n"
    )
    from tests.conftest import ROOT

    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(100):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{worker}/stat") as f:
            if f.read().split()[2] == "Z":  # ended, not yet reaped
                return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    pytest.fail(f"render worker {worker} outlived its killed parent")


def test_render_worker_exits_when_its_parent_is_killed(tmp_path):
    """A worker whose parent dies (kill -9 of a build) stops within seconds."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing as mp, time\n"
        "from emformer_variants.data import synthetic\n"
        "def child():\n"
        "    synthetic._die_with_parent()\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('spawn').Process(target=child)\n"
        "    p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{child}/stat") as f:  # reaped by init, or a zombie: gone either way
            if f.read().split(")")[-1].split()[0] == "Z":
                return
        time.sleep(0.2)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the worker outlived its killed parent by 30 s")
