"""Hostile audio in evaluation and training: each case is handled, or rejected with a message
naming the file (data.skip_bad=true: skipped and counted, the other utterances still scored)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from emformer_variants.data.datamodule import validate_utterances
from emformer_variants.data.dataset import UtteranceDataset, collate
from emformer_variants.data.manifest import Utterance, write_manifest
from emformer_variants.errors import UserError
from emformer_variants.evaluation.evaluate import evaluate_recognizer
from emformer_variants.long_stream import measure_long_stream, tile
from emformer_variants.models.recognizer import save_recognizer
from emformer_variants.training.module import RNNTModule
from tests.conftest import SENTENCES, TINY_ARCH, make_tiny_rec, run_cli

# name -> what must happen: "handled" (decoded / trained on) or the rejection message.
CASES = {
    "silence.wav": "handled",
    "clip_0.05s.wav": "handled",
    "clip_1_sample.wav": "handled",
    "rate_8k.wav": "handled",
    "rate_44k.wav": "handled",
    "stereo.wav": "handled",
    "six_channels.wav": "handled",
    "clipping_x50.wav": "handled",
    "nan.wav": "audio contains NaN or inf samples",
    "inf.wav": "audio contains NaN or inf samples",
    "empty_0_bytes.wav": "audio file is empty (0 bytes)",
    "header_only.wav": "audio file is empty",
    "garbage.wav": "unreadable audio",
    "truncated.flac": "unreadable audio",
    "missing.wav": "audio file not found",
}


def make_case(folder, name: str, speech: np.ndarray):
    """Write the hostile file ``name`` built from 16 kHz ``speech``; returns its path."""
    import torchaudio.functional as AF

    path = folder / name
    if name == "silence.wav":
        sf.write(path, np.zeros(32000, "float32"), 16000)
    elif name == "clip_0.05s.wav":
        sf.write(path, speech[:800], 16000)
    elif name == "clip_1_sample.wav":
        sf.write(path, speech[:1], 16000)
    elif name == "rate_8k.wav":
        sf.write(path, AF.resample(torch.from_numpy(speech), 16000, 8000).numpy(), 8000)
    elif name == "rate_44k.wav":
        sf.write(path, AF.resample(torch.from_numpy(speech), 16000, 44100).numpy(), 44100)
    elif name == "stereo.wav":
        sf.write(path, np.stack([speech, 0.3 * speech], 1), 16000)
    elif name == "six_channels.wav":
        sf.write(path, np.stack([speech] * 6, 1), 16000)
    elif name == "clipping_x50.wav":
        sf.write(path, np.clip(50 * speech, -1, 1), 16000)
    elif name in ("nan.wav", "inf.wav"):
        x = speech.copy()
        x[1000] = np.nan if name == "nan.wav" else np.inf
        sf.write(path, x, 16000, subtype="FLOAT")
    elif name == "empty_0_bytes.wav":
        path.write_bytes(b"")
    elif name == "header_only.wav":
        sf.write(path, np.zeros(0, "float32"), 16000)
    elif name == "garbage.wav":
        path.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    elif name == "truncated.flac":
        sf.write(folder / "whole.flac", speech, 16000)
        raw = (folder / "whole.flac").read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    return path


@pytest.fixture(scope="module")
def speech(mini_corpus) -> np.ndarray:
    return sf.read(mini_corpus / "u3.flac", dtype="float32")[0]


@pytest.fixture(scope="module")
def hostile(speech, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return {name: make_case(folder, name, speech) for name in CASES}


@pytest.fixture(scope="module")
def rec():
    return make_tiny_rec()


@pytest.mark.parametrize("name", list(CASES))
def test_evaluation(name, hostile, mini_corpus, rec):
    """Decoded, or rejected naming the file; with skip_bad the good utterance is still scored."""
    good = Utterance(str(mini_corpus / "u0.flac"), SENTENCES[0], 2.0)
    case = Utterance(str(hostile[name]), "it is a truth", 1.0)
    expected = CASES[name]
    flops = name.startswith("clip_")  # FlopCounterMode is slow; short clips are where it matters
    kept, skipped = validate_utterances([case, good], "test", skip_bad=True)  # header checks
    metrics, rows = evaluate_recognizer(rec, kept, beam=2, flops=flops, skip_bad=True, progress=False)
    num_skipped = len(skipped) + metrics["num_skipped"]  # at the header check or when decoding
    if expected == "handled":
        assert num_skipped == 0 and metrics["num_utterances"] == 2
        assert rows[0]["audio"] == str(hostile[name])
        assert np.isfinite(metrics["wer"])
        if flops:  # FLOPs per audio second come from the longest utterance, not the clip
            assert 0 < metrics["gflops_per_audio_s"] < 1.0
    else:
        assert metrics["num_utterances"] == 1 and rows[0]["audio"] == good.audio
        assert num_skipped == 1
        with pytest.raises(UserError) as e:  # without skip_bad: one line naming the file
            kept, _ = validate_utterances([case, good], "test", skip_bad=False)
            evaluate_recognizer(rec, kept, beam=2, flops=False, skip_bad=False, progress=False)
        assert str(hostile[name]) in str(e.value) and expected in str(e.value)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", [n for n, v in CASES.items() if v == "handled" and n != "clip_1_sample.wav"])
def test_training_step_on_handled_audio(name, hostile, rec):
    """Features, RNN-T loss and gradients are finite on every handled case."""
    data = UtteranceDataset([Utterance(str(hostile[name]), "it is a truth", 1.0)], rec.features,
                            rec.tokenizer)
    batch = collate([data[0]])
    module = RNNTModule(rec, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    rec.train()
    try:
        loss = module.compute_losses(batch, augment=True)["loss"]
        loss.backward()
    finally:
        rec.eval()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in rec.parameters() if p.grad is not None)
    rec.zero_grad(set_to_none=True)


def test_training_leaves_out_clips_too_short_for_one_encoder_frame(hostile, mini_corpus, tmp_path):
    """A 1-sample clip decodes (streaming pads the chunk) but gives no encoder frame to train on."""
    from emformer_variants.data.datamodule import ASRDataModule
    from emformer_variants.data.sources import ManifestSource

    keep = [hostile["clip_1_sample.wav"], hostile["clip_0.05s.wav"], mini_corpus / "u0.flac"]
    write_manifest(tmp_path / "train.jsonl", [Utterance(str(p), "it is", 1.0) for p in keep])
    dm = ASRDataModule(ManifestSource(str(tmp_path)))
    assert [u.audio for u in dm._train_utterances()] == [str(p) for p in keep[1:]]


@pytest.mark.parametrize("name", [n for n, v in CASES.items() if v != "handled"])
def test_training_data_rejected_or_skipped(name, hostile, rec):
    """A bad training file: a UserError naming it; with skip_bad the loader drops it."""
    utt = Utterance(str(hostile[name]), "it is a truth", 1.0)
    strict = UtteranceDataset([utt], rec.features, rec.tokenizer)
    with pytest.raises(UserError, match=CASES[name].replace("(", r"\(").replace(")", r"\)")):
        strict[0]
    lenient = UtteranceDataset([utt], rec.features, rec.tokenizer, skip_bad=True)
    assert lenient[0] is None and collate([lenient[0]])["features"].shape[0] == 0


# ---------------------------------------------------------------- through the CLIs


@pytest.fixture(scope="module")
def hostile_corpus(hostile, mini_corpus, tmp_path_factory):
    """A manifest corpus: every hostile file plus the good utterances, in train and test."""
    folder = tmp_path_factory.mktemp("hostile_corpus")
    good = [json.loads(x) for x in (mini_corpus / "train.jsonl").read_text().splitlines()]
    good_utts = [Utterance(str(mini_corpus / g["audio"]), g["text"], g["duration"]) for g in good]
    bad_utts = [Utterance(str(p), "it is a truth", 1.0) for p in hostile.values()]
    write_manifest(folder / "train.jsonl", good_utts + bad_utts)
    write_manifest(folder / "dev.jsonl", good_utts[:2])
    write_manifest(folder / "test.jsonl", bad_utts + good_utts[:3])
    save_recognizer(make_tiny_rec(), folder / "model.pt")
    return folder


def test_cli_evaluate_scores_the_rest(hostile_corpus, tmp_path):
    common = [f"ckpt={hostile_corpus / 'model.pt'}", "data=manifest", f"data.root={hostile_corpus}",
              "beam=1", "flops=false"]
    proc = run_cli("evaluate.py", *common, f"paths.output_dir={tmp_path / 'strict'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "hostile" in proc.stderr  # names the first bad file
    proc = run_cli("evaluate.py", *common, "data.skip_bad=true", f"paths.output_dir={tmp_path / 'lenient'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "lenient" / "metrics.json").read_text())
    rejected = sum(v != "handled" for v in CASES.values())
    assert metrics["num_skipped"] == rejected
    assert metrics["num_utterances"] == len(CASES) - rejected + 3


def test_cli_train_on_hostile_data_with_skip_bad(hostile_corpus, tmp_path):
    proc = run_cli("train.py", "data=manifest", f"data.root={hostile_corpus}", "data.skip_bad=true",
                   "init=scratch", *TINY_ARCH, "trainer.max_steps=6", "trainer.val_check_interval=3",
                   "data.batch_seconds=4", "eval.before=false", "eval.after=false", "threads=1",
                   f"paths.output_dir={tmp_path}", "trainer.enable_progress_bar=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 6
    assert "clips shorter than 0.05 s left out" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- a long stream


def test_one_minute_stream_holds_constant_state(speech, rec):
    """~1 minute of speech and pauses as one stream: the carried encoder state has the same
    size at every chunk, and RSS does not grow with the stream."""
    wave = tile([torch.from_numpy(speech)], 60.0)
    report = measure_long_stream(rec, wave, beam=2, rss_every=25)
    assert report["chunks"] == 375
    assert report["state_bytes_steady_min"] == report["state_bytes_steady_max"] == report["state_bytes_last"]
    assert report["state_bytes_max"] == report["state_bytes_last"]
    rss = [mb for _, mb in report["rss_samples"]]
    assert max(rss[len(rss) // 4:]) - rss[len(rss) // 4] < 30, report["rss_samples"]


@pytest.mark.slow
def test_ten_minute_stream_memory_is_flat(tmp_path):
    """The shipped base on a 10-minute TTS stream (python -m emformer_variants.long_stream)."""
    from emformer_variants.long_stream import main

    assert main(["--minutes", "10", "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["state_bytes_steady_min"] == report["state_bytes_steady_max"] == report["state_bytes_last"]
    assert report["rss_growth_mb_after_1min"] < 20, report
