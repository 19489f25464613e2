"""Bad corpus entries: one clear error naming the file, or skipped and counted."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from emformer_variants.data.audio import load_audio
from emformer_variants.data.datamodule import validate_utterances
from emformer_variants.data.dataset import DurationBatchSampler
from emformer_variants.data.manifest import Utterance, read_manifest
from emformer_variants.errors import UserError


@pytest.fixture()
def entries(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, np.random.default_rng(0).normal(0, 0.1, 16000).astype("float32"), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF????WAVEjunk")
    return [Utterance(str(good), "hello", 1.0), Utterance(str(good), "  ", 1.0),
            Utterance(str(bad), "x", 1.0), Utterance(str(tmp_path / "gone.flac"), "y", 1.0)]


def test_each_bad_entry_named(entries):
    for utt, needle in [(entries[1], "empty transcript"), (entries[2], "bad.wav: unreadable"),
                        (entries[3], "gone.flac: audio file not found")]:
        with pytest.raises(UserError, match=needle):
            validate_utterances([entries[0], utt], "train", skip_bad=False)


def test_skip_bad_counts(entries):
    good, skipped = validate_utterances(entries, "train", skip_bad=True)
    assert len(good) == 1 and len(skipped) == 3


def test_stereo_any_rate_becomes_16k_mono(tmp_path):
    path = tmp_path / "s.wav"
    t = np.linspace(0, 1, 44100, endpoint=False)
    sf.write(path, np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], 1).astype("float32"), 44100)
    wave = load_audio(path)
    assert wave.shape == (16000,) and wave.dtype == torch.float32
    assert 0.3 < wave.abs().max() < 0.6  # downmixed: mean of the two channels


def test_nan_audio_rejected(tmp_path):
    path = tmp_path / "n.wav"
    data = np.zeros(1600, dtype="float32")
    data[3] = np.nan
    sf.write(path, data, 16000, subtype="FLOAT")
    with pytest.raises(UserError, match="n.wav: audio contains NaN"):
        load_audio(path)


def test_bad_manifest_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"audio": "a.wav", "text": "hi", "duration": 1}\n{"audio": "b.wav"}\n')
    with pytest.raises(UserError, match="train.jsonl:2: bad manifest line"):
        read_manifest(path)


def test_batches_respect_budget_and_cover_everything():
    durations = [float(d) for d in np.random.default_rng(0).uniform(1, 10, 200)]
    sampler = DurationBatchSampler(durations, max_batch_seconds=30, seed=1)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(200))
        assert all(max(durations[i] for i in b) * len(b) <= 30 or len(b) == 1 for b in batches)
    sampler.set_epoch(0)
    first = [max(durations[i] for i in b) for b in sampler]
    assert first == sorted(first)  # epoch 0 runs short-to-long
