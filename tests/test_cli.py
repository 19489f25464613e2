"""End-to-end through the real CLIs on a few seconds of real audio (tmp output dirs)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import TINY_ARCH, run_cli

REQUIRED_KEYS = {
    "wer", "cer", "rtf", "ttft_s", "chunk_ms_p50", "chunk_ms_p90", "chunk_ms_p99",
    "gflops_per_audio_s", "params_total", "params_active", "kv_cache_bytes", "peak_rss_mb",
    "num_utterances", "audio_s", "features_ms_per_chunk", "encoder_ms_per_chunk",
    "decoder_ms_per_chunk",
}


@pytest.fixture(scope="module")
def trained(mini_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_run")
    proc = run_cli(
        "train.py", "data=manifest", f"data.root={mini_corpus}", "init=scratch", *TINY_ARCH,
        "trainer.max_steps=4", "trainer.val_check_interval=2", "eval.max_utterances=2",
        "eval.beam=2", f"paths.output_dir={out}", "trainer.enable_progress_bar=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_train_writes_checkpoints_and_metrics(trained):
    out, proc = trained
    assert (out / "final.pt").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == 4
    assert REQUIRED_KEYS <= set(summary["results"]["fine_tuned"])
    assert "| wer |" in proc.stdout


@pytest.mark.parametrize("which", ["final.pt", "checkpoints/last.ckpt"])
def test_evaluate_project_checkpoints(trained, mini_corpus, tmp_path, which):
    out, _ = trained
    proc = run_cli("evaluate.py", f"ckpt={out / which}", "data=manifest", f"data.root={mini_corpus}",
                   "beam=2", f"paths.output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert REQUIRED_KEYS <= set(metrics)
    assert metrics["num_utterances"] == 2 and metrics["kv_cache_bytes"] > 0
    assert 0 < metrics["rtf"] < 5
    # FlopCounterMode and the analytic encoder count agree (the streaming feature window has one
    # frame more than the chunk, which only the input linear sees: under 1%).
    ratio = metrics["gflops_per_audio_s_encoder"] / metrics["gflops_per_audio_s_encoder_analytic"]
    assert 1 <= ratio < 1.01
    assert (tmp_path / "hyps.jsonl").is_file()
    assert "wer_by_speaker" not in metrics  # one speaker: nothing to break down
    # the data fingerprint: the test split's samples and references, in order
    import hashlib

    from emformer_variants.data.audio import load_audio

    h = hashlib.sha1()
    for line in (mini_corpus / "test.jsonl").read_text().splitlines():
        row = json.loads(line)
        h.update(load_audio(str(mini_corpus / row["audio"])).numpy().tobytes())
        h.update(row["text"].encode() + b"\0")
    assert metrics["data_sha1"] == h.hexdigest()


def test_evaluate_breaks_wer_down_by_speaker(trained, mini_corpus, tmp_path):
    """Two speakers: metrics.json holds each one's corpus WER (as recomputed from hyps.jsonl,
    whose rows carry the speaker); the printed table stays flat."""
    from emformer_variants.metrics.wer import error_rates

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "dev", "test"):
        rows = [json.loads(x) for x in (mini_corpus / f"{split}.jsonl").read_text().splitlines()]
        for i, row in enumerate(rows):
            row["audio"] = str(mini_corpus / row["audio"])
            row["speaker"] = f"voice{i % 2}"
        (corpus / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, _ = trained
    proc = run_cli("evaluate.py", f"ckpt={out / 'final.pt'}", "data=manifest", f"data.root={corpus}",
                   "beam=2", "flops=false", f"paths.output_dir={tmp_path / 'ev'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    hyps = [json.loads(x) for x in (tmp_path / "ev" / "hyps.jsonl").read_text().splitlines()]
    assert sorted(metrics["wer_by_speaker"]) == ["voice0", "voice1"]
    for speaker, wer in metrics["wer_by_speaker"].items():
        mine = [h for h in hyps if h["speaker"] == speaker]
        assert wer == pytest.approx(error_rates([h["ref"] for h in mine], [h["hyp"] for h in mine])["wer"])
    assert metrics["wer_speaker_mean"] == pytest.approx(sum(metrics["wer_by_speaker"].values()) / 2, abs=1e-6)
    assert "wer_by_speaker" not in proc.stdout
    assert "| wer [voice0] |" in proc.stdout and "| wer_speaker_mean |" in proc.stdout


def _audiofolder(mini_corpus, tmp_path, rows_extra=()):
    """A folder the project has never seen: 44.1 kHz stereo WAVs + metadata.csv."""
    import torch
    import torchaudio.functional as AF

    folder = tmp_path / "af"
    folder.mkdir()
    manifest = [json.loads(x) for x in (mini_corpus / "test.jsonl").read_text().splitlines()]
    rows = []
    for i, row in enumerate(manifest):
        wave, sr = sf.read(mini_corpus / row["audio"], dtype="float32")
        wave = AF.resample(torch.from_numpy(wave), sr, 44100).numpy()
        sf.write(folder / f"clip{i}.wav", np.stack([wave, wave * 0.5], axis=1), 44100)
        rows.append({"file_name": f"clip{i}.wav", "transcription": row["text"].upper() + "."})
    rows.extend(rows_extra)
    with open(folder / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file_name", "transcription"])
        w.writeheader()
        w.writerows(rows)
    return folder


def test_evaluate_audiofolder_resamples_and_downmixes(trained, mini_corpus, tmp_path):
    out, _ = trained
    folder = _audiofolder(mini_corpus, tmp_path)
    proc = run_cli("evaluate.py", f"ckpt={out / 'final.pt'}", "data=audiofolder",
                   f"data.path={folder}", "beam=2", "flops=false", f"paths.output_dir={tmp_path / 'ev'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["num_utterances"] == 2
    assert abs(metrics["audio_s"] - json.loads((out / "metrics.json").read_text())
               ["results"]["fine_tuned"]["audio_s"]) < 0.05


def test_bad_audio_one_line_error_or_skipped(trained, mini_corpus, tmp_path):
    out, _ = trained
    folder = _audiofolder(mini_corpus, tmp_path)
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav")
    with open(folder / "metadata.csv", "a") as f:
        f.write("broken.wav,hello there\n")
    args = [f"ckpt={out / 'final.pt'}", "data=audiofolder", f"data.path={folder}", "beam=1",
            "flops=false"]
    proc = run_cli("evaluate.py", *args, f"paths.output_dir={tmp_path / 'e1'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "broken.wav" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("evaluate.py", *args, "data.skip_bad=true", f"paths.output_dir={tmp_path / 'e2'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert metrics["num_utterances"] == 2 and metrics["num_skipped"] == 1


def test_folder_without_metadata_is_rejected(trained, tmp_path):
    out, _ = trained
    (tmp_path / "empty").mkdir()
    proc = run_cli("evaluate.py", f"ckpt={out / 'final.pt'}", "data=audiofolder",
                   f"data.path={tmp_path / 'empty'}", f"paths.output_dir={tmp_path / 'e'}")
    assert proc.returncode == 2
    assert "metadata.csv" in proc.stderr and "Traceback" not in proc.stderr


def test_wandb_logger_offline(mini_corpus, tmp_path):
    """logger=wandb works with no server and nothing else set (offline by default)."""
    out = tmp_path / "run"
    proc = run_cli("train.py", "data=manifest", f"data.root={mini_corpus}", "init=scratch", *TINY_ARCH,
                   "trainer.max_steps=1", "trainer.val_check_interval=1", "eval.after=false",
                   "logger=wandb", f"paths.output_dir={out}", "trainer.enable_progress_bar=false",
                   env={"WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list(out.glob("wandb/offline-run-*"))
    assert runs, list(out.rglob("*"))[:20]


def test_peer_whisper_script_names_a_missing_manifest(tmp_path):
    """scripts/peer_whisper.py (its own venv) fails in one line before importing whisper."""
    missing = tmp_path / "nope.jsonl"
    proc = run_cli("scripts/peer_whisper.py", str(missing), str(tmp_path / "out.json"), timeout=60)
    err = proc.stderr.strip()
    assert proc.returncode == 1 and "\n" not in err, proc.stderr[-2000:]
    assert err.startswith(f"error: {missing}: no such manifest")
    assert not (tmp_path / "out.json").exists()


def test_wer_breakdown_script_groups_by_engine(tmp_path):
    """scripts/wer_breakdown.py: per-engine corpus WER from hyps rows (speaker from the manifest
    when a row lacks it) and the count of reference words unseen in training."""
    rows = [{"audio": "/a/u0.flac", "ref": "a b c d", "hyp": "a b c d"},
            {"audio": "/a/u1.flac", "ref": "e f", "hyp": "x f", "speaker": "flite-slt"},
            {"audio": "/a/u2.flac", "ref": "g h i j", "hyp": "g h"}]
    (tmp_path / "hyps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = [{"audio": "test/u0.flac", "text": "a b c d", "speaker": "espeak-en-us-m1"},
                {"audio": "test/u2.flac", "text": "g h i j", "speaker": "espeak-en-gb-f2"}]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in manifest))
    (tmp_path / "train.jsonl").write_text(json.dumps({"audio": "x.flac", "text": "a b e f g"}) + "\n")
    proc = run_cli("scripts/wer_breakdown.py", str(tmp_path / "hyps.jsonl"),
                   "--manifest", str(tmp_path / "test.jsonl"),
                   "--train-manifest", str(tmp_path / "train.jsonl"), timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["all: 30.00% (3 utterances)", "  espeak: 25.0% (2)",
                                        "  flite: 50.0% (1)",
                                        "reference words never in training transcripts: 5 of 10"]
    proc = run_cli("scripts/wer_breakdown.py", str(tmp_path / "hyps.jsonl"), timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: {tmp_path / 'hyps.jsonl'}: a row has no speaker (/a/u0.flac); pass --manifest")


def test_speaking_rate_script_counts_words_and_characters(tmp_path):
    """scripts/speaking_rate.py: words a minute over all audio, median characters a second."""
    import soundfile as sf

    from emformer_variants.data.manifest import Utterance, write_manifest

    rows = []
    for i, (text, seconds) in enumerate([("one two three", 2.0), ("four five six seven", 4.0)]):
        path = tmp_path / f"{i}.flac"
        sf.write(path, [0.0] * int(16000 * seconds), 16000)
        rows.append(Utterance(str(path), text, seconds))
    write_manifest(tmp_path / "test.jsonl", rows)
    proc = run_cli("scripts/speaking_rate.py", str(tmp_path / "test.jsonl"), timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # 7 words in 6 s = 70/min; characters a second 11/2 and 16/4, median 4.75
    assert "70.0 words/min, 4.75 chars/s (median), 2 utterances" in proc.stdout
    proc = run_cli("scripts/speaking_rate.py", str(tmp_path / "nope.jsonl"), timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no such manifest" in proc.stderr


def test_voice_manifest_script_names_an_unknown_voice(tmp_path):
    out = tmp_path / "x"
    proc = run_cli("scripts/voice_manifest.py", "--voices", "nobody", "--out", str(out), timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert "--voices nobody: unknown voice" in proc.stderr and not out.exists()
