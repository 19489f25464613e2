"""Audio reading: any format soundfile reads, any rate or channel count -> 16 kHz mono.

Errors name the file and the fix; nothing here raises a bare library traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from emformer_variants.errors import UserError

SAMPLE_RATE = 16000


def to_mono_16k(data: np.ndarray, sample_rate: int, source: str = "audio") -> torch.Tensor:
    """(S,) or (S, C) array at any rate -> float32 (S',) at 16 kHz."""
    wave = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if wave.ndim == 2:
        wave = wave.mean(dim=1)
    if wave.ndim != 1:
        raise UserError(f"{source}: expected 1-D or (samples, channels) audio, got shape {tuple(data.shape)}")
    if not torch.isfinite(wave).all():
        raise UserError(f"{source}: audio contains NaN or inf samples; fix or remove the file")
    if sample_rate != SAMPLE_RATE:
        wave = AF.resample(wave, sample_rate, SAMPLE_RATE)
    return wave


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"{path}: audio file not found; fix the manifest/metadata or remove the entry")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: audio file is empty (0 bytes); remove it or replace it")


def load_audio(path: str | Path) -> torch.Tensor:
    """Read a file as float32 16 kHz mono (S,)."""
    path = Path(path)
    _check_file(path)
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"{path}: unreadable audio ({str(e).splitlines()[0][:100]}); "
                        "re-encode it as WAV/FLAC or remove it") from None
    if data.size == 0:
        raise UserError(f"{path}: audio file is empty; remove it or replace it")
    return to_mono_16k(data, sample_rate, str(path))


def audio_duration(path: str | Path) -> float:
    """Header-only duration in seconds (fast), with the same errors as load_audio."""
    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"{path}: unreadable audio ({str(e).splitlines()[0][:100]}); "
                        "re-encode it as WAV/FLAC or remove it") from None
    if info.frames == 0:
        raise UserError(f"{path}: audio file is empty; remove it or replace it")
    return info.frames / info.samplerate
