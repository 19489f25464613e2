from __future__ import annotations

import math

import pytest
import torch

from emformer_variants.data.augment import (
    AugmentConfig,
    augment,
    colored_noise,
    speed_perturb,
    synthetic_rir,
)
from emformer_variants.errors import UserError

SR = 16000


def _speechlike(seconds: float = 2.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    envelope = 0.5 * (1 + torch.sin(2 * math.pi * 3 * t))  # syllable-rate modulation
    tone = sum(torch.sin(2 * math.pi * f * t) / k for k, f in enumerate((150, 300, 450, 900), 1))
    return (0.3 * envelope * tone + 0.01 * torch.randn(t.numel(), generator=g)).float()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_deterministic_given_generator():
    wave, cfg = _speechlike(), AugmentConfig()
    for seed in range(5):
        torch.testing.assert_close(augment(wave, SR, cfg, _gen(seed)), augment(wave, SR, cfg, _gen(seed)))
    outs = [augment(wave, SR, cfg, _gen(seed)) for seed in range(8)]
    assert len({(o.numel(), round(float(o.abs().sum()), 3)) for o in outs}) > 1


def test_length_and_signal_change():
    wave = _speechlike()
    cfg = AugmentConfig(speed_prob=1.0, noise_prob=1.0, reverb_prob=1.0)
    for seed in range(10):
        out = augment(wave, SR, cfg, _gen(seed))
        assert out.dtype == torch.float32 and out.ndim == 1 and torch.isfinite(out).all()
        assert wave.numel() / 1.15 < out.numel() < wave.numel() / 0.85
        if out.numel() == wave.numel():
            assert not torch.allclose(out, wave, atol=1e-3)
    off = AugmentConfig(speed_prob=0.0, noise_prob=0.0, reverb_prob=0.0)
    torch.testing.assert_close(augment(wave, SR, off, _gen(0)), wave)


def test_speed_perturb_lengths():
    wave = _speechlike()
    for factor in (0.9, 1.1):
        assert abs(speed_perturb(wave, SR, factor).numel() - wave.numel() / factor) <= 2


def test_noise_snr_and_color():
    wave = _speechlike()
    cfg = AugmentConfig(
        speed_prob=0.0, reverb_prob=0.0, noise_prob=1.0, snr_db=(10.0, 10.0), noise_colors=("white",)
    )
    noise = augment(wave, SR, cfg, _gen(0)) - wave
    snr = 10 * torch.log10(wave.pow(2).mean() / noise.pow(2).mean())
    assert abs(float(snr) - 10.0) < 0.01
    # Brown noise keeps most energy at low frequencies, white noise spreads it evenly.
    for color, low_share in (("white", (0.05, 0.2)), ("brown", (0.9, 1.0))):
        spec = torch.fft.rfft(colored_noise(SR, color, _gen(1))).abs().pow(2)
        share = float(spec[: spec.numel() // 10].sum() / spec.sum())
        assert low_share[0] < share < low_share[1], color


def test_rir_decays():
    rir = synthetic_rir(SR, rt60=0.5, drr_db=0.0, g=_gen(0))
    assert rir.numel() == SR // 2 and rir[0] == 1.0
    tail = rir[1:].pow(2)
    early, late = tail[: SR // 10].sum(), tail[-SR // 10 :].sum()
    assert late < early * 1e-3  # ~40+ dB lower near the end of a 60 dB decay
    assert abs(float(tail.sum()) - 1.0) < 1e-4  # DRR 0 dB: tail energy equals direct


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="noise_colors"):
        AugmentConfig(noise_colors=("purple",))
    with pytest.raises(UserError, match="speed_factors"):
        AugmentConfig(speed_factors=())


def test_psola_is_seeded_and_guarded(monkeypatch):
    """Praat's PSOLA is random (seeded per call: same seed, same audio, in any process); a
    Praat error or a call over the time limit leaves the clip unchanged instead of failing or
    hanging the run, and the next call works again."""
    from emformer_variants.data import praat
    from emformer_variants.data.augment import change_gender

    wave = _speechlike(1.5)
    a = change_gender(wave, SR, 1.1, 180.0, seed=3)
    assert torch.equal(a, change_gender(wave, SR, 1.1, 180.0, seed=3))
    assert not torch.equal(a, change_gender(wave, SR, 1.1, 180.0, seed=4))
    assert a.shape == wave.shape and not torch.allclose(a, wave)
    raw = praat.change_gender_raw(wave.double().numpy(), SR, [75, 600, 1.1, 180.0, 1.0, 1.0], 3)
    torch.testing.assert_close(a, torch.from_numpy(raw[: wave.numel()]).float(), rtol=0, atol=0)
    assert torch.equal(change_gender(wave, SR, -1.0), wave)  # Praat refuses a negative ratio
    monkeypatch.setattr(praat, "TIMEOUT_S", 1e-4)
    assert torch.equal(change_gender(wave, SR, 1.1, 180.0, seed=3), wave)  # "too slow": unchanged
    monkeypatch.setattr(praat, "TIMEOUT_S", 10.0)
    assert torch.equal(change_gender(wave, SR, 1.1, 180.0, seed=3), a)  # a fresh helper
