"""Training-time augmentation of raw waveforms: new speakers, then room, noise and channel.

Speaker (a handful of TTS engines becomes hundreds of speakers):
- ``formant``: Praat's "Change gender" (PSOLA resynthesis with every formant scaled by a
  ratio, pitch moved to a new median and its range scaled): the vocal tract of another
  speaker (praat-parselmouth).
- ``vtlp``: vocal-tract-length perturbation: every formant scaled by a warp factor, pitch
  and duration kept (Jaitly & Hinton 2013 warp the mel filterbank; scaling the spectral
  envelope before the filterbank has the same effect on formants).
- ``pitch``: pitch shift in semitones at the same tempo; ``tempo``: tempo at the same pitch.
  These three and ``formant`` run as one PSOLA pass of Praat (about 50 ms per 5 s clip).
- ``speed``: tempo and pitch together, by resampling (Ko et al. 2015, "Audio augmentation
  for speech recognition").
Room and noise: a synthetic room impulse response (Gaussian noise under an exponential
decay that falls 60 dB in RT60 seconds, the statistical model of a diffuse late field;
Schroeder 1962) and coloured Gaussian noise (white, pink 1/f, brown 1/f^2) at an SNR.
Channel: ``telephone`` (band-pass 300-3400 Hz and an 8 kHz round trip), ``codec`` (MP3 at
a low VBR quality or GSM full rate, real encoders through pedalboard), ``gain`` and
``clipping`` (a level and hard clipping below the peak).

Order: speaker, reverb, noise (it reaches the microphone unreverberated), channel, gain,
clipping. Every step has its own probability; the defaults keep only speed, reverb and
noise on (the fine-tuning default), and ``conf/data/augment/pretrain.yaml`` turns every
step on for pretraining.

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


CODECS = ("mp3", "gsm")
_PROBS = ("formant_prob", "vtlp_prob", "pitch_prob", "tempo_prob", "speed_prob", "reverb_prob",
          "noise_prob", "telephone_prob", "codec_prob", "gain_prob", "clip_prob")


@dataclass(frozen=True)
class AugmentConfig:
    # speaker
    formant_prob: float = 0.0
    formant_ratio: tuple[float, float] = (0.84, 1.2)  # every formant times this
    pitch_median_hz: tuple[float, float] = (85.0, 250.0)  # new median F0
    pitch_range: tuple[float, float] = (0.7, 1.4)  # pitch range factor
    vtlp_prob: float = 0.0
    vtlp_factors: tuple[float, float] = (0.9, 1.1)  # formant scale, pitch and tempo kept
    pitch_prob: float = 0.0
    pitch_semitones: tuple[float, float] = (-3.0, 3.0)
    tempo_prob: float = 0.0
    tempo_factors: tuple[float, float] = (0.85, 1.15)  # > 1 is faster, pitch kept
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)  # > 1 is faster (shorter)
    speed_prob: float = 1.0
    # room and noise
    reverb_prob: float = 0.3
    rt60: tuple[float, float] = (0.15, 0.8)  # seconds
    drr_db: tuple[float, float] = (0.0, 12.0)  # direct-to-reverberant energy ratio
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (5.0, 30.0)
    noise_colors: tuple[str, ...] = ("white", "pink", "brown")
    # channel
    telephone_prob: float = 0.0
    codec_prob: float = 0.0
    codecs: tuple[str, ...] = CODECS
    mp3_vbr_quality: tuple[float, float] = (4.0, 9.5)  # 0 best .. 10 worst
    gain_prob: float = 0.0
    gain_db: tuple[float, float] = (-20.0, 6.0)  # on a peak-normalised clip
    clip_prob: float = 0.0
    clip_db: tuple[float, float] = (-12.0, -1.0)  # clipping level below the peak

    def __post_init__(self) -> None:
        from emformer_variants.errors import UserError

        bad = [c for c in self.noise_colors if c not in NOISE_COLORS]
        if bad:
            raise UserError(f"augment.noise_colors: unknown {bad}; use {sorted(NOISE_COLORS)}")
        bad = [c for c in self.codecs if c not in CODECS]
        if bad:
            raise UserError(f"augment.codecs: unknown {bad}; use {list(CODECS)}")
        if not self.speed_factors or min(self.speed_factors) <= 0:
            raise UserError("augment.speed_factors: give one or more positive factors, e.g. [0.9, 1.0, 1.1]")
        for name in _PROBS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"augment.{name}: must be a probability in [0, 1]")
        for name in ("formant_ratio", "pitch_median_hz", "pitch_range", "vtlp_factors", "tempo_factors"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
                raise UserError(f"augment.{name}={list(lo_hi)}: give [low, high] with 0 < low <= high")


def _uniform(lo_hi: tuple[float, float], g: torch.Generator) -> float:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _happens(prob: float, g: torch.Generator) -> bool:
    return torch.rand((), generator=g).item() < prob


def _fires(prob: float, g: torch.Generator) -> bool:
    """Like ``_happens``, but draws nothing when off, so configs without the newer steps
    keep the random stream (and the audio) they always had."""
    return prob > 0 and _happens(prob, g)


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


def change_gender(wave, sample_rate: int, formant_ratio: float = 1.0, pitch_median_hz: float = 0.0,
                  pitch_range: float = 1.0, duration: float = 1.0, semitones: float = 0.0, seed: int = 0):
    """Praat's "Change gender" (PSOLA) on a float waveform (numpy or torch, (T,)).

    Formants scale by ``formant_ratio``; the pitch median moves to ``pitch_median_hz`` (0
    keeps it), then ``semitones`` higher, and its range scales by ``pitch_range``; the
    duration scales by ``duration`` (the output has ~T x duration samples, same type).
    Pitch analysis covers 75-600 Hz. ``seed`` fixes PSOLA's random numbers. Praat runs
    behind a time limit (``data/praat.py``): where it fails or loops, the clip comes back
    unchanged.
    """
    import numpy as np

    from emformer_variants.data.praat import change_gender_guarded, pitch_median

    is_torch = isinstance(wave, torch.Tensor)
    x = wave.detach().cpu().double().numpy() if is_torch else np.asarray(wave, dtype=np.float64)
    if x.size < sample_rate // 20:  # under 50 ms: too short to analyse pitch
        return wave
    median = float(pitch_median_hz)
    if semitones:
        if not median:
            median = pitch_median(x, sample_rate)
            median = 0.0 if not np.isfinite(median) else median  # unvoiced: keep it
        median *= 2 ** (semitones / 12)
    out = change_gender_guarded(x, sample_rate, [75, 600, float(formant_ratio), median,
                                                 float(pitch_range), float(duration)], seed)
    if out is None:
        return wave
    if duration == 1.0:
        out = np.pad(out[: x.size], (0, max(0, x.size - out.size)))
    out = np.nan_to_num(out).astype(np.float32)
    return torch.from_numpy(out) if is_torch else out


def telephone(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """A narrowband telephone channel: band-pass 300-3400 Hz, 8 kHz and back."""
    band = AF.highpass_biquad(AF.lowpass_biquad(wave, sample_rate, 3400.0), sample_rate, 300.0)
    return AF.resample(AF.resample(band, sample_rate, 8000), 8000, sample_rate)[: wave.numel()]


def codec(wave: torch.Tensor, sample_rate: int, name: str, mp3_quality: float = 6.0) -> torch.Tensor:
    """Round trip through a lossy speech/audio codec ("mp3" VBR quality, or "gsm" full rate)."""
    import pedalboard

    plugin = (pedalboard.MP3Compressor(vbr_quality=mp3_quality) if name == "mp3"
              else pedalboard.GSMFullRateCompressor())
    peak = wave.abs().max().clamp_min(1e-6)
    out = pedalboard.Pedalboard([plugin])(wave.numpy().astype("float32") / float(peak) * 0.9, sample_rate)
    out = torch.from_numpy(out.reshape(-1)[: wave.numel()].copy()) * (peak / 0.9)
    return torch.nn.functional.pad(out, (0, wave.numel() - out.numel()))


def augment(
    wave: torch.Tensor, sample_rate: int, cfg: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """(T,) float waveform -> (T',) augmented float32 waveform; T' ~ T / (tempo x speed).

    Order: speaker (formant, vtlp, pitch and tempo in one PSOLA pass, then speed), reverb,
    noise, telephone, codec, gain, clipping. Each draws from ``generator`` only when its
    probability fires.
    """
    g = generator
    wave = wave.to(torch.float32)
    psola = {}
    if _fires(cfg.formant_prob, g):  # another speaker: vocal tract, pitch level and range
        psola = {"formant_ratio": _uniform(cfg.formant_ratio, g),
                 "pitch_median_hz": _uniform(cfg.pitch_median_hz, g),
                 "pitch_range": _uniform(cfg.pitch_range, g)}
    if _fires(cfg.vtlp_prob, g):
        psola["formant_ratio"] = psola.get("formant_ratio", 1.0) * _uniform(cfg.vtlp_factors, g)
    if _fires(cfg.pitch_prob, g):
        psola["semitones"] = _uniform(cfg.pitch_semitones, g)
    if _fires(cfg.tempo_prob, g):
        psola["duration"] = 1.0 / _uniform(cfg.tempo_factors, g)
    if psola:
        seed = int(torch.randint(2**31 - 1, (), generator=g))
        wave = change_gender(wave, sample_rate, seed=seed, **psola)
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
    if _fires(cfg.telephone_prob, g):
        wave = telephone(wave, sample_rate)
    if cfg.codecs and _fires(cfg.codec_prob, g):
        name = cfg.codecs[int(torch.randint(len(cfg.codecs), (), generator=g))]
        wave = codec(wave, sample_rate, name, _uniform(cfg.mp3_vbr_quality, g))
    if _fires(cfg.gain_prob, g):
        wave = wave / wave.abs().max().clamp_min(1e-6) * 10 ** (_uniform(cfg.gain_db, g) / 20)
    if _fires(cfg.clip_prob, g):
        level = wave.abs().max() * 10 ** (_uniform(cfg.clip_db, g) / 20)
        wave = wave.clamp(-level, level)
    return wave
