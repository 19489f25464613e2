"""Training-time augmentation of raw waveforms: speed perturbation, reverb, additive noise.

No corpora needed: noise is coloured Gaussian noise (white, pink 1/f, brown 1/f^2 power)
and reverb is a synthetic room impulse response, Gaussian noise under an exponential
decay that falls 60 dB in RT60 seconds (the classic statistical model of a diffuse late
field; Schroeder 1962). Speed perturbation resamples, changing tempo and pitch together
(Ko et al. 2015, "Audio augmentation for speech recognition").

``augment`` is a pure function: all randomness comes from the ``torch.Generator`` passed
in, so the same generator state gives the same output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio.functional as AF

# Exponent of the noise power spectrum, power ~ 1 / f**alpha.
NOISE_COLORS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


@dataclass(frozen=True)
class AugmentConfig:
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)  # > 1 is faster (shorter)
    speed_prob: float = 1.0
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (5.0, 30.0)
    noise_colors: tuple[str, ...] = ("white", "pink", "brown")
    reverb_prob: float = 0.3
    rt60: tuple[float, float] = (0.15, 0.8)  # seconds
    drr_db: tuple[float, float] = (0.0, 12.0)  # direct-to-reverberant energy ratio

    def __post_init__(self) -> None:
        from emformer_variants.errors import UserError

        bad = [c for c in self.noise_colors if c not in NOISE_COLORS]
        if bad:
            raise UserError(f"augment.noise_colors: unknown {bad}; use {sorted(NOISE_COLORS)}")
        if not self.speed_factors or min(self.speed_factors) <= 0:
            raise UserError("augment.speed_factors: give one or more positive factors, e.g. [0.9, 1.0, 1.1]")
        for name in ("speed_prob", "noise_prob", "reverb_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"augment.{name}: must be a probability in [0, 1]")


def _uniform(lo_hi: tuple[float, float], g: torch.Generator) -> float:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _happens(prob: float, g: torch.Generator) -> bool:
    return torch.rand((), generator=g).item() < prob


def speed_perturb(wave: torch.Tensor, sample_rate: int, factor: float) -> torch.Tensor:
    """(T,) -> (~T / factor,): play ``factor`` times faster (tempo and pitch)."""
    if factor == 1.0:
        return wave
    # Treat the samples as recorded at sample_rate * factor and resample back; rounding to
    # 100 Hz keeps the resampling kernel small.
    orig = int(round(sample_rate * factor / 100.0)) * 100
    return AF.resample(wave, orig, sample_rate)


def colored_noise(num_samples: int, color: str, g: torch.Generator) -> torch.Tensor:
    """(T,) unit-RMS Gaussian noise with power spectrum ~ 1/f**alpha."""
    white = torch.randn(num_samples, generator=g)
    alpha = NOISE_COLORS[color]
    if alpha == 0.0 or num_samples < 2:
        return white / white.pow(2).mean().sqrt().clamp_min(1e-12)
    spec = torch.fft.rfft(white)
    f = torch.arange(spec.numel(), dtype=torch.float32)
    f[0] = 1.0  # no DC blow-up
    noise = torch.fft.irfft(spec / f.pow(alpha / 2), n=num_samples)
    noise = noise - noise.mean()
    return noise / noise.pow(2).mean().sqrt().clamp_min(1e-12)


def add_noise(wave: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    signal_power = wave.pow(2).mean().clamp_min(1e-12)
    noise_power = noise.pow(2).mean().clamp_min(1e-12)
    return wave + noise * torch.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))


def synthetic_rir(sample_rate: int, rt60: float, drr_db: float, g: torch.Generator) -> torch.Tensor:
    """(L,) impulse response: unit direct path, then a noise tail decaying 60 dB in rt60 s."""
    length = max(2, int(rt60 * sample_rate))
    t = torch.arange(1, length, dtype=torch.float32) / sample_rate
    tail = torch.randn(length - 1, generator=g) * torch.exp(-3.0 * math.log(10.0) * t / rt60)
    tail = tail * torch.sqrt(10 ** (-drr_db / 10) / tail.pow(2).sum().clamp_min(1e-12))
    return torch.cat([torch.ones(1), tail])


def reverberate(wave: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """Convolve and keep the input length and peak level."""
    out = AF.fftconvolve(wave, rir)[: wave.numel()]
    return out * (wave.abs().max() / out.abs().max().clamp_min(1e-12))


def augment(
    wave: torch.Tensor, sample_rate: int, cfg: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """(T,) float waveform -> (T',) augmented float32 waveform; T' ~ T / speed factor.

    Order: speed, reverb, then noise (noise reaches the microphone unreverberated).
    """
    g = generator
    wave = wave.to(torch.float32)
    if _happens(cfg.speed_prob, g):
        idx = int(torch.randint(len(cfg.speed_factors), (), generator=g))
        wave = speed_perturb(wave, sample_rate, cfg.speed_factors[idx])
    if wave.numel() == 0:
        return wave
    if _happens(cfg.reverb_prob, g):
        rir = synthetic_rir(sample_rate, _uniform(cfg.rt60, g), _uniform(cfg.drr_db, g), g)
        wave = reverberate(wave, rir)
    if cfg.noise_colors and _happens(cfg.noise_prob, g):
        color = cfg.noise_colors[int(torch.randint(len(cfg.noise_colors), (), generator=g))]
        wave = add_noise(wave, colored_noise(wave.numel(), color, g), _uniform(cfg.snr_db, g))
    return wave
