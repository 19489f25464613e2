"""Crash and resume: SIGKILL mid-epoch, resume with ckpt_path=last, continue exactly; atomic writes;
and determinism (same seed and config, same numbers)."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from emformer_variants.data.resumable import ResumableDataLoader
from emformer_variants.training.resume import atomic_torch_save
from tests.conftest import ROOT, TINY_ARCH, run_cli

# 8 training utterances of ~2 s; batch_seconds=3 puts one per batch: 8 batches per epoch, so
# 20 steps span 2.5 epochs; validation every 5 steps, last.ckpt every 3 steps, 2 best kept.
TRAIN = [*TINY_ARCH, "init=scratch", "trainer.max_steps=20", "trainer.val_check_interval=5",
         "checkpoint_every_n_steps=3", "checkpoint_keep_best=2", "data.batch_seconds=3",
         "log_batch_order=true",
         "eval.before=false", "eval.max_utterances=2", "eval.beam=2", "eval.flops=false", "threads=1",
         "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false"]
BATCHES_PER_EPOCH = 8
TIMING_KEYS = {"rtf", "ttft_s", "chunk_ms_p50", "chunk_ms_p90", "chunk_ms_p99", "features_ms_per_chunk",
               "encoder_ms_per_chunk", "decoder_ms_per_chunk", "peak_rss_mb"}


def _train(corpus: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = run_cli("train.py", "data=manifest", f"data.root={corpus}", *TRAIN,
                   f"paths.output_dir={out}", *extra, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(run: Path) -> dict[int, str]:
    """{global step: train/loss as logged (exact text)}."""
    with open(run / "csv" / "metrics.csv") as f:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(f) if r.get("train/loss")}


def _batches(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "batch_order.jsonl").read_text().splitlines()]


def _scores(run: Path) -> dict:
    fine_tuned = json.loads((run / "metrics.json").read_text())["results"]["fine_tuned"]
    return {k: v for k, v in fine_tuned.items() if k not in TIMING_KEYS}


@pytest.fixture(scope="module")
def reference(mini_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    _train(mini_corpus, out)
    return out


def test_same_seed_same_numbers(reference, mini_corpus, tmp_path):
    """Determinism on CPU: a second run with the same seed and config logs the same loss at every
    step, the same data order, and the same WER/CER/params/state bytes (timings aside)."""
    _train(mini_corpus, tmp_path / "again")
    assert _losses(tmp_path / "again") == _losses(reference)
    assert len(_losses(reference)) == 20
    assert _batches(tmp_path / "again") == _batches(reference)
    assert _scores(tmp_path / "again") == _scores(reference)


def test_keeps_the_requested_number_of_best_checkpoints(reference):
    """checkpoint_keep_best=2 over 4 validations: two best-step files (to average) and last.ckpt."""
    best = sorted(p.name for p in (reference / "checkpoints").glob("best-step=*.ckpt"))
    assert len(best) == 2, best
    assert (reference / "checkpoints" / "last.ckpt").is_file()


def test_sigkill_mid_epoch_then_resume_continues_exactly(reference, mini_corpus, tmp_path):
    """Kill -9 a run mid-epoch (after >= 11 batches: epoch 1, past a validation), resume with
    ckpt_path=last: same step count, same remaining batches in the same order, same loss at every
    step after the checkpoint (optimizer, scheduler and RNG continue), same final scores."""
    root = tmp_path / "root"
    cmd = [sys.executable, str(ROOT / "train.py"), "data=manifest", f"data.root={mini_corpus}", *TRAIN,
           f"paths.root_dir={root}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    killed = None
    while time.time() < deadline and proc.poll() is None:
        logs = list(root.glob("outputs/train/*/batch_order.jsonl"))
        if logs and len(logs[0].read_text().splitlines()) >= 11:
            proc.send_signal(signal.SIGKILL)
            killed = logs[0].parent
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert killed is not None, f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final.pt").exists()
    ckpt = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    step = ckpt["global_step"]
    # Saved every 3 steps or after the validation at step 10; either way mid-epoch 1.
    assert step in (9, 10, 12, 15) and step % BATCHES_PER_EPOCH != 0, step
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": step // BATCHES_PER_EPOCH, "batches": step % BATCHES_PER_EPOCH}]

    resumed = root / "resumed"
    proc = run_cli("train.py", "data=manifest", f"data.root={mini_corpus}", *TRAIN, f"paths.root_dir={root}",
                   f"paths.output_dir={resumed}", "ckpt_path=last", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {killed}" in proc.stdout + proc.stderr
    assert json.loads((resumed / "metrics.json").read_text())["steps"] == 20

    # Data order: the resumed run sees exactly the reference's batches from the checkpoint on.
    ref_batches = _batches(reference)
    assert _batches(resumed) == ref_batches[step:]
    assert _batches(resumed)[0] == {**ref_batches[step], "step": step}
    # Optimizer, scheduler and randomness: the same loss, bit for bit, at every later step.
    ref_losses = _losses(reference)
    assert _losses(resumed) == {s: v for s, v in ref_losses.items() if s >= step}
    assert _scores(resumed) == _scores(reference)


def test_ddp_resume_continues_every_rank_exactly(mini_corpus, tmp_path):
    """trainer=ddp (2 CPU processes): a run stopped at step 3 and resumed from its last.ckpt to
    step 6 gives each rank the same batches and rank 0 the same losses as an unbroken 6-step run."""
    ddp = ["trainer=ddp", "trainer.val_check_interval=3", "module.scheduler.total_steps=6",
           "eval.after=false"]
    _train(mini_corpus, tmp_path / "whole", *ddp, "trainer.max_steps=6")
    _train(mini_corpus, tmp_path / "first", *ddp, "trainer.max_steps=3")
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 3
    proc = _train(mini_corpus, tmp_path / "rest", *ddp, "trainer.max_steps=6", f"ckpt_path={ckpt}")
    assert f"Restored all states from the checkpoint at {ckpt}" in proc.stdout + proc.stderr

    def by_rank(run: Path) -> dict[int, list[dict]]:
        rows: dict[int, list[dict]] = {}
        for row in _batches(run):
            rows.setdefault(row.pop("rank"), []).append(row)
        return rows

    whole, first, rest = by_rank(tmp_path / "whole"), by_rank(tmp_path / "first"), by_rank(tmp_path / "rest")
    assert sorted(whole) == sorted(rest) == [0, 1]
    for rank in (0, 1):
        assert first[rank] + rest[rank] == whole[rank]
        assert [r["step"] for r in rest[rank]] == [3, 4, 5]
    assert whole[0] != whole[1]  # each rank has its own share of the data
    ref = _losses(tmp_path / "whole")
    assert _losses(tmp_path / "rest") == {s: v for s, v in ref.items() if s >= 3} and len(ref) == 6


# ---------------------------------------------------------------- atomic writes

_WRITER = textwrap.dedent("""
    import sys, torch
    from emformer_variants.utils.files import write_json_atomic
    from emformer_variants.training.resume import AtomicCheckpointIO
    out = sys.argv[1]
    io = AtomicCheckpointIO()
    i = 0
    while True:  # rewrite both files forever, each time with new content, until killed
        i += 1
        io.save_checkpoint({"i": i, "w": torch.full((4_000_000,), float(i))}, out + "/last.ckpt")
        write_json_atomic(out + "/metrics.json", {"i": i, "pad": "x" * 200_000})
""")


def test_kill_during_writes_never_leaves_a_half_file(tmp_path):
    """SIGKILL a process that keeps rewriting a 16 MB checkpoint and a metrics file, at random
    moments, 6 times: every time both files load whole and self-consistent."""
    rng = random.Random(0)
    seen = set()
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], cwd=ROOT)
        t0 = time.time()
        while not (tmp_path / "metrics.json").exists() and time.time() - t0 < 60:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
        assert ckpt["w"].shape == (4_000_000,) and bool((ckpt["w"] == ckpt["i"]).all())
        assert json.loads((tmp_path / "metrics.json").read_text())["pad"] == "x" * 200_000
        seen.add(ckpt["i"])
    assert max(seen) > 1  # the kills did land during rewrites, not only before the first one


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"step": 2, "w": torch.zeros(1000), "bad": _Unpicklable()}, path)
    assert torch.load(path, weights_only=False) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# ---------------------------------------------------------------- the resumable loader


class _Batches:
    def __init__(self, n, epoch=0):
        self.n, self.epoch = n, epoch

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        order = list(range(self.n))
        random.Random(self.epoch).shuffle(order)
        return iter([[i] for i in order])


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_at_the_consumed_batch(workers):
    """The state counts batches handed out, not batches the workers pre-read from the sampler."""
    data = list(range(100, 110))

    def loader():
        return ResumableDataLoader(data, _Batches(10, epoch=3), num_workers=workers,
                                   collate_fn=lambda items: items)

    full = list(loader())
    first = loader()
    it = iter(first)
    seen = [next(it) for _ in range(4)]
    state = first.state_dict()
    assert state == {"epoch": 3, "batches": 4}
    second = loader()
    second.load_state_dict(state)
    rest = list(second)
    assert seen + rest == full
    assert list(second) == full  # the skip applies once; the next pass is a whole epoch
    # A state from another epoch does not skip anything.
    third = loader()
    third.load_state_dict({"epoch": 2, "batches": 4})
    assert list(third) == full


def test_a_resume_into_the_same_folder_keeps_the_earlier_csv_rows(mini_corpus, tmp_path):
    """``python -m emformer_variants.results`` continues an interrupted row in its own folder:
    metrics.csv then holds both runs' rows (Lightning's CSV logger would delete the first's)."""
    from emformer_variants.utils.run_dir import release_ended_claim

    out = tmp_path / "run"
    _train(mini_corpus, out, "trainer.max_steps=6", "trainer.val_check_interval=3")
    first = _losses(out)
    assert max(first) >= 5
    release_ended_claim(out)
    _train(mini_corpus, out, "trainer.max_steps=9", "trainer.val_check_interval=3",
           f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")
    both = _losses(out)
    assert {k: v for k, v in both.items() if k in first} == first  # the first run's rows, as written
    assert max(both) >= 8  # and the resumed run's
