"""python -m emformer_variants.transcribe on a TTS WAV: by path, and as raw PCM on stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf
import torch

from tests.conftest import ROOT


def transcribe(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "emformer_variants.transcribe", *args], cwd=ROOT,
                          env=env, input=stdin, capture_output=True, timeout=600)


def events(proc: subprocess.CompletedProcess) -> list[dict]:
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def check_events(evs: list[dict], duration: float) -> list[dict]:
    """Partial and final events, times within the audio and never going back."""
    kinds = {e["type"] for e in evs}
    assert kinds == {"partial", "final"}, kinds
    finals = [e for e in evs if e["type"] == "final"]
    assert all(e["text"].strip() for e in finals)
    for e in evs:
        assert 0 <= e["start"] <= e["end"] <= duration + 1e-6, e
        assert e["chunk_ms"] >= 0
    ends = [e["end"] for e in finals]
    assert ends == sorted(ends)
    for a, b in zip(finals, finals[1:], strict=False):
        assert a["end"] <= b["start"], (a, b)
    return finals


def test_file_and_stdin_pcm_give_the_same_segments(two_sentences_wav):
    """The WAV by path, and the same speech at 44.1 kHz stereo as raw PCM through stdin (read
    block by block, resampled and downmixed on the fly): two segments, one per sentence."""
    wave, sr = sf.read(two_sentences_wav, dtype="float32")
    duration = len(wave) / sr
    by_path = check_events(events(transcribe(str(two_sentences_wav), "--json", "--beam", "4")),
                           duration)
    assert len(by_path) == 2, by_path
    assert "youngest" in by_path[0]["text"] and "evening" in by_path[1]["text"]

    import torchaudio.functional as AF

    high = AF.resample(torch.from_numpy(wave), 16000, 44100).numpy()
    stereo = np.stack([high, 0.5 * high], axis=1)
    pcm = (np.clip(stereo, -1, 1) * 32767).astype("<i2").tobytes()
    by_pipe = check_events(events(transcribe("-", "--rate", "44100", "--channels", "2", "--json",
                                             "--beam", "4", stdin=pcm)), len(high) / 44100)
    assert len(by_pipe) == 2, by_pipe
    assert "youngest" in by_pipe[0]["text"] and "evening" in by_pipe[1]["text"]


def test_text_output_and_no_endpoint(two_sentences_wav):
    """Not a terminal: only finals, as ``[start-end] text``; --no-endpoint: one segment."""
    proc = transcribe(str(two_sentences_wav), "--no-endpoint", "--decoder", "exact", "--beam", "4")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[0.00-")
    assert "youngest" in lines[0] and "evening" in lines[0]


def test_unreadable_and_missing_files_give_one_line(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    for path, expect in ((bad, "unreadable audio"), (tmp_path / "gone.wav", "no such audio file")):
        proc = transcribe(str(path))
        err = proc.stderr.decode().strip()
        assert proc.returncode == 2
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(path) in err
        assert expect in err


def test_lm_needs_the_modified_decoder_and_runs_with_it(two_sentences_wav, tmp_path):
    from emformer_variants.lm.ngram import NgramLM
    from emformer_variants.models.build import load_named_checkpoint

    tok = load_named_checkpoint("base").tokenizer
    lm = tmp_path / "lm.npz"
    NgramLM.build([tok.encode("she was the youngest of two daughters")] * 3, tok.vocab_size, 5).save(lm)
    bad = transcribe(str(two_sentences_wav), "--lm", str(lm))
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr and b"pass decoder=modified" in bad.stderr
    proc = transcribe(str(two_sentences_wav), "--decoder", "modified", "--max-symbols", "4", "--beam", "4",
                      "--lm", str(lm), "--lm-weight", "0.3", "--no-endpoint")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert "youngest" in proc.stdout.decode()
