"""The engine's feature step: ``FeatureExtractor.streaming`` in one C++ call.

``kernels/log_mel.cpp`` computes the extractor's normalised log-mel frames of each chunk window
with the same arithmetic (the FFT, filterbank product and log are the ATen ops torchaudio
calls; the steps between round once each, as the ATen ops do), so the frames are the same bits
(tests/test_engine_features.py); what goes is about fifteen ATen ops and their Python per
chunk. Engine pipelines use it; the stock pipeline keeps torchaudio's transforms. Without the
kernels, or for a window shorter than one FFT, the extractor itself runs.

Shapes: N streams, S samples per window, T frames, F mel bins.
"""

from __future__ import annotations

import torch

from emformer_variants.engine.packed import kernel
from emformer_variants.models.features import _GAIN, FeatureExtractor


class EngineFeatures:
    """``(S,)`` or ``(N, S)`` windows -> ``(N, T, F)`` frames, as ``extractor.streaming``."""

    def __init__(self, extractor: FeatureExtractor):
        self.extractor = extractor
        self.kernel = kernel()

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        ex = self.extractor
        batch = windows if windows.dim() == 2 else windows.unsqueeze(0)
        if (self.kernel is None or batch.dtype != torch.float32
                or batch.shape[-1] < ex.cfg.n_fft):  # the extractor pads short clips first
            return ex.streaming(batch)
        return self.kernel.log_mel(batch, ex.mel.spectrogram.window, ex.mel.mel_scale.fb, _GAIN,
                                   ex.mean, ex.invstddev, ex.cfg.hop_length)
