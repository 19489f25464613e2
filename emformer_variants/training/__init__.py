"""Training: the LightningModule (``module``), SpecAugment, the RNN-T loss, learning-rate
schedules, validation decoding, and crash-safe checkpoints and resume (``resume``)."""
