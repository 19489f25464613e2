"""data=voices_nonfree: held-out voices of Debian's contrib/non-free engine families
(needs bash scripts/setup.sh --nonfree-voices; the synthesis tests skip without it)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from emformer_variants.data import tts
from emformer_variants.data.manifest import read_manifest
from emformer_variants.errors import UserError
from emformer_variants.utils.paths import project_cache_dir

_PROGRAMS = {"pico": "pico2wave", "rhvoice": "RHVoice-test", "mbrola": "espeak-ng"}
needs_nonfree = pytest.mark.skipif(
    not all(shutil.which(p) for p in _PROGRAMS.values()),
    reason="non-free voices not installed (bash scripts/setup.sh --nonfree-voices)")


def test_three_nonfree_voices_are_held_out_of_every_corpus():
    """No default corpus draws a non-free engine; a corpus naming every engine trains on seven
    of the ten voices, never on Pico en-GB, MBROLA us3 or RHVoice slt."""
    from emformer_variants.data.synthetic import DEFAULT_ENGINE_WEIGHTS, TRAIN_ENGINES

    voices = tts.nonfree_voices()
    assert len(voices) == 10 and len({v.name for v in voices}) == 10
    families = {v.engine for v in voices}
    assert families == {"pico", "rhvoice", "mbrola"} and not families & set(DEFAULT_ENGINE_WEIGHTS)
    assert not {v.name for v in tts.held_out_voices()} & {v.name for v in voices}
    trained = {v.name for v in tts.training_voices(TRAIN_ENGINES)} & {v.name for v in voices}
    assert trained == set(tts.NONFREE_TRAINING)
    assert {v.name for v in voices} - trained == {"pico-en-GB", "mbrola-us3", "rhvoice-slt"}
    # the shipped base's corpora (stage 9 names mbrola and rhvoice) never drew Pico
    stage9 = {v.name for v in tts.training_voices({"espeak", "mbrola", "rhvoice"})} & {v.name for v in voices}
    assert not any(name.startswith("pico") for name in stage9)
    assert not trained & {v.name for v in tts.training_voices(DEFAULT_ENGINE_WEIGHTS)}


def test_the_set_reads_the_test_voice_texts_of_the_default_corpus():
    """Same sentences as test_voice: composed from conf/, no audio made."""
    from hydra import compose, initialize_config_dir

    import emformer_variants.utils.paths  # noqa: F401  (the ev_* resolvers)
    from emformer_variants.data.synthetic import _pick_texts, check_text_weights, load_text_sources
    from tests.conftest import ROOT

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        default = compose("evaluate").data.source
        extra = compose("evaluate", overrides=["data=voices_nonfree"]).data.source
    assert (extra.corpus_num_test, extra.corpus_seed) == (default.num_test, default.seed)
    sources = load_text_sources(project_cache_dir())
    counts = {"train": 0, "dev": 0, "test": default.num_test, "test_everyday": 0,
              "test_voice": default.num_test_voice}
    picked = _pick_texts(sources, counts, default.seed, check_text_weights(None))
    assert extra.num_texts <= default.num_test_voice
    texts = _pick_texts(sources, {**counts, "test_voice": 0}, extra.corpus_seed, check_text_weights(None))
    assert texts["test"][: extra.num_texts] == picked["test_voice"][: extra.num_texts]


@needs_nonfree
def test_every_nonfree_voice_speaks():
    for voice in tts.nonfree_voices():
        wave, sr = tts.synthesize(voice, "one two three.")
        assert sr in (16000, 24000) and 0.4 < len(wave) / sr < 4.0, voice.name
        assert np.abs(wave).max() > 0.05, voice.name
        assert np.array_equal(wave, tts.synthesize(voice, "one two three.")[0]), voice.name


@needs_nonfree
def test_build_is_one_text_per_voice_and_idempotent(tmp_path):
    from emformer_variants.data.nonfree_voices import build_nonfree_voices

    kw = dict(num_texts=1, corpus_num_test=200, corpus_seed=0, cache_dir=project_cache_dir())
    manifests = build_nonfree_voices(tmp_path / "set", **kw)
    utts = read_manifest(manifests["test"])
    assert [u.speaker for u in utts] == [v.name for v in tts.nonfree_voices()]
    assert len({u.text for u in utts}) == 1
    for u in utts:
        info = sf.info(u.audio)
        assert (info.samplerate, info.channels) == (16000, 1) and abs(info.duration - u.duration) < 1e-3
    stamp = (tmp_path / "set" / "corpus.json").stat().st_mtime_ns
    assert build_nonfree_voices(tmp_path / "set", **kw) == manifests
    assert (tmp_path / "set" / "corpus.json").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="built with another config"):
        build_nonfree_voices(tmp_path / "set", **{**kw, "num_texts": 2})


@pytest.mark.parametrize("bad", [0, 201, 1.5, True])
def test_bad_num_texts_is_one_line(tmp_path, bad):
    from emformer_variants.data.nonfree_voices import build_nonfree_voices

    with pytest.raises(UserError, match="num_texts="):
        build_nonfree_voices(tmp_path / "x", num_texts=bad, corpus_num_test=200, corpus_seed=0,
                             cache_dir=project_cache_dir())


def test_missing_program_and_tempo_are_user_errors(monkeypatch):
    voice = tts.nonfree_voices()[0]
    with pytest.raises(UserError, match="read at their own tempo"):
        tts.synthesize(voice, "hello", rate=1.1)
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    for voice in tts.nonfree_voices()[::4]:
        with pytest.raises(UserError, match="apt-get install .*--nonfree-voices"):
            tts.synthesize(voice, "hello")


@needs_nonfree
def test_trainable_nonfree_voices_take_tempo_and_pitch():
    """The corpus jitter reaches MBROLA and RHVoice: faster is shorter, and a pitch change
    changes the audio; rate and pitch 1 are the program's own defaults. Pico has neither: the
    corpus reads it at its own (``_jittered``), and asking for one is a one-line error."""
    from emformer_variants.data.synthetic import _jittered

    pico = [v for v in tts.nonfree_training_voices() if v.engine in tts.OWN_TEMPO_ENGINES]
    assert [v.name for v in pico] == ["pico-en-US"]
    assert _jittered(pico[0], np.random.default_rng(0))[1:] == (1.0, 1.0)
    with pytest.raises(UserError, match="pico voices read at their own tempo and pitch"):
        tts.synthesize(pico[0], "the garden gate", rate=1.3)
    for voice in [v for v in tts.nonfree_training_voices() if v not in pico][::3]:
        plain, sr = tts.synthesize(voice, "the garden gate was open all morning")
        fast, _ = tts.synthesize(voice, "the garden gate was open all morning", rate=1.3)
        high, _ = tts.synthesize(voice, "the garden gate was open all morning", pitch=1.2)
        assert len(fast) < 0.9 * len(plain), voice.name
        assert len(high) != len(plain) or not np.array_equal(high, plain), voice.name


def test_accent_voices_are_an_opt_in_family_held_out_of_nothing_else():
    """``accents`` draws 13 accented voices only when a corpus names it; no corpus without it
    changes, and no held-out voice is among them."""
    from emformer_variants.data.synthetic import DEFAULT_ENGINE_WEIGHTS, TRAIN_ENGINES, _config

    accents = tts.accent_voices()
    names = {v.name for v in accents}
    assert len(accents) == len(names) == 13 and {v.group for v in accents} == {"accents"}
    assert {v.engine for v in accents} == {"mbrola", "rhvoice", "festival"}
    held = {v.name for v in tts.held_out_voices() + tts.nonfree_voices()}
    assert not names & held and not names & {"mbrola-us3", "festival-kal_diphone"}
    assert not any("kdlpc" in v.options.get("voice", "") for v in accents)  # kept for outside checks
    assert names <= {v.name for v in tts.training_voices(TRAIN_ENGINES)}
    without = set(TRAIN_ENGINES) - {"accents"}
    assert not names & {v.name for v in tts.training_voices(without)}
    config = _config({"train": 1}, 0, DEFAULT_ENGINE_WEIGHTS, {"austen": 1.0})
    assert not any("family" in v for v in config["voices"])


@needs_nonfree
def test_accent_voices_speak_and_take_tempo():
    missing = [v for v in tts.accent_voices() if v.engine == "mbrola"
               and not tts.os.path.exists(f"/usr/share/mbrola/{tts.mbrola_database(v.options['voice'])}")]
    if missing:
        pytest.skip(f"MBROLA diphones missing for {missing[0].name} (bash scripts/setup.sh --nonfree-voices)")
    for voice in tts.accent_voices()[::3]:
        wave, sr = tts.synthesize(voice, "one two three.")
        assert 0.4 < len(wave) / sr < 4.0 and np.abs(wave).max() > 0.05, voice.name
        fast, _ = tts.synthesize(voice, "one two three four five six.", rate=1.3)
        plain, _ = tts.synthesize(voice, "one two three four five six.")
        assert len(fast) < 0.9 * len(plain), voice.name


def test_missing_mbrola_diphones_are_one_line(monkeypatch):
    voice = tts.Voice("mbrola-zz9-en", "mbrola", {"voice": "mb-zz9-en"})
    monkeypatch.setattr(tts.os.path, "isdir", lambda p: True)
    with pytest.raises(UserError, match="apt-get install mbrola-zz9"):
        tts.synthesize(voice, "hello")
