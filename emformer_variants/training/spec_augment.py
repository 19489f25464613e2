"""SpecAugment (Park et al. 2019): frequency and time masks on training features.

Shapes: B batch, T frames, F mel bins.
"""

from __future__ import annotations

import torch
import torchaudio


class SpecAugment(torch.nn.Module):
    """Frequency and time masks on (B, T, F) features (Park et al. 2019), train mode only."""

    def __init__(self, freq_masks: int = 2, freq_width: int = 15, time_masks: int = 2,
                 time_width: int = 40, time_p: float = 0.1):
        super().__init__()
        self.freq = torch.nn.ModuleList(
            torchaudio.transforms.FrequencyMasking(freq_width) for _ in range(freq_masks)
        )
        self.time = torch.nn.ModuleList(
            torchaudio.transforms.TimeMasking(time_width, p=time_p) for _ in range(time_masks)
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats.transpose(1, 2)  # (B, F, T)
        for m in [*self.freq, *self.time]:
            x = m(x)
        return x.transpose(1, 2)
