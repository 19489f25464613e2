"""Scale-out: DDP on CPU (2 processes, gloo), data-loader workers, validation sharding that
scores every utterance once, and the GPU / Slurm configs (composed, not run)."""

from __future__ import annotations

import json

from hydra import compose, initialize_config_dir

import emformer_variants.utils.paths  # noqa: F401  (registers the config resolvers)
from emformer_variants.data.dataset import DurationBatchSampler
from emformer_variants.data.manifest import read_manifest
from tests.conftest import ROOT, TINY_ARCH, corpus_wer_of, run_cli


def test_validation_shards_are_disjoint_and_complete():
    durations = [1.0, 3.0, 2.0, 5.0, 4.0, 2.5, 1.5]
    shards = [[i for b in DurationBatchSampler(durations, 6.0, shuffle=False, num_replicas=3, rank=r,
                                               pad=False) for i in b] for r in range(3)]
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(len(durations)))  # each utterance exactly once
    assert all(shards)


def test_training_shards_have_equal_length():
    durations = [1.0, 3.0, 2.0, 5.0, 4.0, 2.5, 1.5]
    lens = [len(DurationBatchSampler(durations, 4.0, seed=3, num_replicas=2, rank=r)) for r in range(2)]
    assert lens[0] == lens[1] > 0  # DDP ranks step in lockstep


def _tiny(mini_corpus, out, *extra):
    return ["data=manifest", f"data.root={mini_corpus}", "init=scratch", *TINY_ARCH, "eval.max_utterances=1",
            "eval.beam=1", "eval.flops=false", "trainer.enable_progress_bar=false", "threads=1",
            f"paths.output_dir={out}", *extra]


def test_ddp_two_cpu_processes(mini_corpus, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train.py", "trainer=ddp", *_tiny(mini_corpus, out, "trainer.max_steps=3",
                                                     "trainer.val_check_interval=3", "eval.before=false"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in text and "MEMBER: 2/2" in text
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == 3
    # Each rank decoded its own share of the 2 dev utterances; WER is over both, once each.
    assert summary["val"]["val/num_utterances"] == 2
    # Corpus-level: a whole number of edits over both utterances' words (a mean of per-rank
    # rates would not be).
    corpus_wer_of(summary["val"]["val/wer"], [u.text for u in read_manifest(mini_corpus / "dev.jsonl")])
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "final.pt").is_file()
    # Rank 1 ran in the same run folder (its Hydra log is there) and wrote nothing else.
    assert (out / "train_ddp_process_1.log").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_data_loader_workers(mini_corpus, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train.py", "data.num_workers=2", *_tiny(mini_corpus, out, "trainer.max_steps=2",
                                                          "trainer.val_check_interval=2", "eval.after=false"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == 2 and summary["val"]["val/num_utterances"] == 2


def test_gpu_and_slurm_configs_compose():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        gpu = compose("train", overrides=["trainer=gpu"])
        slurm = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp"],
                        return_hydra_config=True)
    assert gpu.trainer.accelerator == "gpu" and gpu.trainer.precision == "bf16-mixed"
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.tasks_per_node == 1 and launcher.timeout_min > 0
    assert slurm.trainer.strategy == "ddp" and slurm.trainer.use_distributed_sampler is False
    from hydra.utils import get_class
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher  # installed

    assert get_class(launcher._target_) is SlurmLauncher  # the configured target is the installed plugin
