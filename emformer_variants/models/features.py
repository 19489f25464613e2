"""Log-mel features exactly as torchaudio's Emformer RNN-T pipeline computes them.

MelSpectrogram (n_fft 400, hop 160, 80 mels) -> (T, F) -> piecewise-linear log of the
power times a fixed gain -> global mean / inv-stddev normalisation. The full-utterance
extractor appends ``right_padding`` zero frames so that the training forward (which drops
the right-context frames) still covers every frame; the streaming extractor is applied to
each ``segment + right context`` window of samples.

Shapes: S samples, T frames, F mel bins.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchaudio

from emformer_variants.errors import UserError

# Same constants as torchaudio.pipelines.rnnt_pipeline.
_DECIBEL = 2 * 20 * math.log10(torch.iinfo(torch.int16).max)
_GAIN = pow(10, 0.05 * _DECIBEL)


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    segment_length: int = 16  # feature frames per streaming chunk (before time reduction)
    right_context_length: int = 4  # look-ahead frames per chunk

    @property
    def segment_samples(self) -> int:
        return self.segment_length * self.hop_length

    @property
    def window_samples(self) -> int:
        """Samples fed to the streaming extractor per chunk: segment + right context."""
        return (self.segment_length + self.right_context_length) * self.hop_length

    @property
    def chunk_seconds(self) -> float:
        return self.segment_samples / self.sample_rate

    @property
    def right_context_seconds(self) -> float:
        return self.right_context_length * self.hop_length / self.sample_rate


def piecewise_linear_log(x: torch.Tensor) -> torch.Tensor:
    """log(x) above e, x / e below: continuous, finite at zero power."""
    return torch.where(x > math.e, torch.log(torch.clamp(x, min=math.e)), x / math.e)


class FeatureExtractor(torch.nn.Module):
    """Waveform -> normalised log-mel frames, carrying its own global statistics."""

    def __init__(self, cfg: FeatureConfig, mean: torch.Tensor | None = None,
                 invstddev: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, hop_length=cfg.hop_length
        )
        self.register_buffer("mean", torch.zeros(cfg.n_mels) if mean is None else mean.float().clone())
        self.register_buffer(
            "invstddev", torch.ones(cfg.n_mels) if invstddev is None else invstddev.float().clone()
        )

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(S,) or (B, S) -> (T, F) or (B, T, F), log-compressed but not normalised.

        A clip shorter than one FFT window (25 ms) is zero-padded to one window: the centred
        STFT cannot reflect-pad less than half a window."""
        if wave.shape[-1] < self.cfg.n_fft:
            wave = torch.nn.functional.pad(wave, (0, self.cfg.n_fft - wave.shape[-1]))
        spec = self.mel(wave).transpose(-1, -2)
        return piecewise_linear_log(spec * _GAIN)

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) * self.invstddev

    def full(self, wave: torch.Tensor) -> torch.Tensor:
        """Whole utterance (S,) -> (T + right_context_length, F) for full-context forward."""
        feats = self.normalize(self.log_mel(wave))
        return torch.nn.functional.pad(feats, (0, 0, 0, self.cfg.right_context_length))

    def streaming(self, window: torch.Tensor) -> torch.Tensor:
        """One chunk window (window_samples,) -> (segment + rc + 1, F) frames."""
        return self.normalize(self.log_mel(window))

    def num_frames(self, num_samples: int) -> int:
        """Frames ``full`` returns for a waveform of ``num_samples`` (before padding)."""
        return num_samples // self.cfg.hop_length + 1


def compute_global_stats(extractor: FeatureExtractor, waves: Iterable[torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/stddev of log-mel frames over a corpus (float64 accumulation)."""
    total = torch.zeros(extractor.cfg.n_mels, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    with torch.no_grad():
        for wave in waves:
            feats = extractor.log_mel(wave).double()
            total += feats.sum(0)
            total_sq += (feats**2).sum(0)
            count += feats.shape[0]
    if count == 0:
        raise UserError("global feature statistics: no audio frames; the training split is empty")
    mean = total / count
    var = (total_sq / count - mean**2).clamp_min(1e-8)
    return mean.float(), var.rsqrt().float()


def load_global_stats(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read torchaudio's ``{"mean": [F], "invstddev": [F]}`` JSON."""
    path = Path(path)
    try:
        blob = json.loads(path.read_text())
        return torch.tensor(blob["mean"]), torch.tensor(blob["invstddev"])
    except FileNotFoundError:
        raise UserError(f"{path}: global stats file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a global stats JSON with 'mean' and 'invstddev' ({e})") from None
