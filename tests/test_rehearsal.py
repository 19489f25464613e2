"""The researcher's real path, rehearsed: torchaudio's ``emformer_rnnt_base`` from
torchaudio's own bundle cache, LibriSpeech from a folder in LibriSpeech's own layout, and the
real CLIs in subprocesses, as docs/real_model.md tells a GPU user to type them.

Everything is the real thing except its size: random weights in the bundle files (this
machine cannot download the checkpoint), a 4,096-piece SentencePiece model trained here, and
a dozen generated utterances of 2 s. Runs are shrunk (1-utterance batches, 2 steps, 1
evaluation utterance), never rerouted: each variant goes through its surgery on the full
76.7M-parameter model and two fine-tuning steps (moe also through validation, checkpoints and
distillation), then ``evaluate.py`` rebuilds it from ``final.pt`` alone. One variant per CLI
call; the shared files are made once.

``trainer=gpu`` runs twice: its config on this CPU (``trainer.accelerator=cpu``: the same
bf16-mixed autocast) in the fast suite, and on a real GPU in ``test_gpu_rehearsal`` when
``torch.cuda.is_available()``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli as _run_cli
from tests.real_path import LIBRISPEECH_LAYOUT, write_real_path

BASE_PARAMS = 76_738_049  # torchaudio's emformer_rnnt_base(num_symbols=4097)
# Structural sizes on emformer_base (README "Variants" table); lowrank's depend on the
# singular values of the weights, so they are checked against train.py's own report instead.
PARAMS = {"moe": (160_859_809, 66_334_369), "mla": (70_163_969, 70_163_969)}
KV_CACHE_BYTES = {"moe": 2_457_680, "mla": 307_280, "lowrank": 2_457_680}

SHRINK = [  # sizes only: every stage of the path still runs
    "trainer.max_steps=2", "data.batch_seconds=3", "data.max_dev_utterances=1",
    "eval.max_utterances=1", "eval.flops=false", "threads=1", "trainer.enable_progress_bar=false",
]
# variant -> its train.py call. moe is docs/real_model.md's recovery recipe (experiment=finetune/moe:
# distillation from the frozen base) and takes the whole path: the base and the variant
# evaluated before fine-tuning, calibration, validation, best/last checkpoints. mla and lowrank
# run in the plain `variant=` form; lowrank runs conf/trainer/gpu.yaml (bf16-mixed
# autocast) on the CPU. Stages that do not depend on the variant run once, for moe: each costs
# time (a 160M-parameter MoE checkpoint with AdamW is 1.9 GB).
NO_VALIDATION = "trainer.val_check_interval=1000"
TRAIN = {
    "moe": ["experiment=finetune/moe", "augment=none", "eval.before=true", "eval.after=true",
            "trainer.val_check_interval=2"],
    "mla": ["variant=mla", NO_VALIDATION, "eval.before=false"],
    "lowrank": ["variant=lowrank", "trainer=gpu", "trainer.accelerator=cpu", NO_VALIDATION,
                "eval.before=false"],
}
# variant -> (LibriSpeech part evaluate.py reads, its overrides); FLOPs are counted once, for
# the pretrained base (FlopCounterMode over a beam search is slow).
EVALUATE = {
    "moe": ("test-clean", []),
    "mla": ("test-other", ["data.source.test=[test-other]"]),
    "lowrank": ("test-clean", []),
}


@pytest.fixture(scope="module")
def real_path(tmp_path_factory):
    """(TORCH_HOME with the bundle files, LibriSpeech data.root, env for the CLIs, tmp dir)."""
    root = tmp_path_factory.mktemp("real_path")
    torch_home, data = write_real_path(root)
    yield torch_home, data, {"TORCH_HOME": str(torch_home)}, root
    shutil.rmtree(root, ignore_errors=True)  # ~10 GB of checkpoints: never kept for later runs


def run_cli(*args, **kw):
    # A 160M-parameter model on a busy 2-core machine: minutes per call, never hours.
    return _run_cli(*args, timeout=1800, **kw)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_bundle_files_have_the_real_shapes(real_path):
    """The stand-ins are what torchaudio's getters read: its own pipeline loads them."""
    import sentencepiece as spm

    torch_home, data, _, _ = real_path
    hub = torch_home / "hub" / "torchaudio"
    assets = hub / "pipeline-assets"
    sp = spm.SentencePieceProcessor(model_file=str(assets / "spm_bpe_4096_librispeech.model"))
    assert sp.get_piece_size() == 4096
    assert [sp.id_to_piece(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]  # as the bundle's
    stats = _json(assets / "global_stats_rnnt_librispeech.json")
    assert sorted(stats) == ["invstddev", "mean"] and len(stats["mean"]) == len(stats["invstddev"]) == 80
    state = torch.load(hub / "models" / "emformer_rnnt_base_librispeech.pt", weights_only=True)
    assert sum(v.numel() for v in state.values()) == BASE_PARAMS
    parts = sorted(p.name for p in (data / "LibriSpeech").iterdir())
    assert parts == sorted(LIBRISPEECH_LAYOUT)
    trans = sorted((data / "LibriSpeech" / "test-clean").glob("*/*/*.trans.txt"))
    assert trans and trans[0].read_text().split()[0] == "1089-134686-0000"


@pytest.fixture(scope="module", params=list(TRAIN))
def trained(request, real_path):
    variant = request.param
    _, data, env, root = real_path
    out = root / f"train-{variant}"
    proc = run_cli("train.py", "model=emformer_base", "data=librispeech", f"data.root={data}",
                   *TRAIN[variant], *SHRINK, f"paths.output_dir={out}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return variant, out, proc


def test_train(trained):
    variant, out, proc = trained
    summary = _json(out / "metrics.json")
    assert summary["steps"] == 2 and summary["variant_name"] == variant
    surgery = summary["surgery"][0]
    assert surgery["name"] == variant and surgery["params_before"] == BASE_PARAMS
    assert surgery["replaced"] >= 20  # every one of the 20 Emformer layers
    if variant in PARAMS:
        assert surgery["params_after"] == PARAMS[variant][0]
    else:
        assert surgery["params_after"] < 0.7 * BASE_PARAMS
    assert (out / "final.pt").is_file() and (out / "surgery.pt").is_file()
    results = summary["results"]
    after = results["fine_tuned"]
    assert after["params_total"] == surgery["params_after"] and after["num_utterances"] == 1
    assert after["kv_cache_bytes"] == KV_CACHE_BYTES[variant]
    if "trainer=gpu" in TRAIN[variant]:
        assert "precision: bf16-mixed" in (out / ".hydra" / "config.yaml").read_text()
    if NO_VALIDATION in TRAIN[variant]:
        assert summary["val"] == {}  # and so no Lightning checkpoint in 2 steps
    else:
        assert 0 <= summary["val"]["val/wer"] and (out / "checkpoints" / "last.ckpt").is_file()
    if variant == "moe":  # the whole path: base and variant evaluated before fine-tuning
        assert "kind: joiner" in (out / ".hydra" / "config.yaml").read_text()  # distillation
        assert sorted(results) == ["after_surgery", "base", "fine_tuned"]
        assert results["base"]["params_total"] == BASE_PARAMS
        assert results["after_surgery"]["params_active"] == PARAMS["moe"][1]
        assert list((out / "checkpoints").glob("best-step=*.ckpt"))
    assert "| wer |" in proc.stdout


def test_evaluate_rebuilds_the_variant(trained, real_path, tmp_path):
    """evaluate.py reads final.pt alone; variant=NAME must match what the checkpoint holds."""
    variant, out, _ = trained
    _, data, env, _ = real_path
    part, extra = EVALUATE[variant]
    ev = tmp_path / "ev"
    proc = run_cli("evaluate.py", f"ckpt={out / 'final.pt'}", "model=emformer_base", "data=librispeech",
                   f"data.root={data}", f"variant={variant}", "max_utterances=1", "beam=2", "flops=false",
                   *extra, f"paths.output_dir={ev}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _json(ev / "metrics.json")
    trained_metrics = _json(out / "metrics.json")["results"]["fine_tuned"]
    assert [v["name"] for v in metrics["variants"]] == [variant]
    for key in ("params_total", "params_active", "kv_cache_bytes"):
        assert metrics[key] == trained_metrics[key], key
    assert metrics["num_utterances"] == 1 and metrics["split"] == "test" and metrics["wer"] >= 0
    # The first utterance of that LibriSpeech part, its upper-case transcript normalised.
    row = _json_lines(ev / "hyps.jsonl")[0]
    assert row["ref"] == LIBRISPEECH_LAYOUT[part][0][2][0].lower()


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_evaluate_pretrained_base_with_only_the_test_parts(real_path, tmp_path):
    """The first thing a researcher runs: the pretrained checkpoint (ckpt=base, read from the
    bundle cache) on test-clean, with only LibriSpeech's test parts on disk (the command in
    docs/real_model.md: the train and dev parts are emptied, else they must exist)."""
    _, data, env, _ = real_path
    only_test = tmp_path / "only_test"
    (only_test / "LibriSpeech").mkdir(parents=True)
    for part in ("test-clean", "test-other"):
        (only_test / "LibriSpeech" / part).symlink_to(data / "LibriSpeech" / part)
    ev = tmp_path / "ev"
    proc = run_cli("evaluate.py", "ckpt=base", "model=emformer_base", "data=librispeech",
                   f"data.root={only_test}", "data.source.train=[]", "data.source.dev=[]",
                   "max_utterances=1", "beam=2", f"paths.output_dir={ev}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _json(ev / "metrics.json")
    assert metrics["params_total"] == BASE_PARAMS and metrics["variants"] == []
    assert metrics["num_utterances"] == 1 and metrics["kv_cache_bytes"] == KV_CACHE_BYTES["moe"]
    # FlopCounterMode and the analytic count agree on the base encoder: 4.18 GFLOP per audio
    # second in steady state (README), a little more on one short utterance (first chunks).
    enc = metrics["gflops_per_audio_s_encoder"]
    assert 0.98 < enc / metrics["gflops_per_audio_s_encoder_analytic"] < 1.02
    assert 4.0 < enc < 4.6


# ------------------------------------------------ what moves to the GPU, checked on the CPU

def test_data_features_stay_on_the_cpu_when_the_model_moves():
    """Lightning moves the LightningModule (and the recognizer's feature extractor in it) to
    the GPU; the DataModule featurises on the CPU, in worker processes, with its own copy.
    ("meta" stands in for the GPU: mixing devices fails there as on CUDA.)"""
    from emformer_variants.data.datamodule import ASRDataModule
    from tests.conftest import make_tiny_rec

    rec = make_tiny_rec()
    dm = ASRDataModule(source=None)
    dm.bind(rec.features, rec.tokenizer)
    expected = rec.features.full(torch.ones(1600) * 0.1)
    rec.to("meta")
    torch.testing.assert_close(dm.features.full(torch.ones(1600) * 0.1), expected)


def test_validation_decoding_keeps_lengths_on_the_features_device():
    """Validation's beam search gets the utterance length on the features' device (torchaudio
    builds the Emformer's padding mask on the lengths' device)."""
    from emformer_variants.training.validation import decode_full
    from tests.conftest import make_tiny_rec

    rec = make_tiny_rec()
    seen = []

    def search(features, lengths, beam):
        seen.append((features.device, lengths.device))
        return [([rec.blank], 0.0, None, None)]

    feats = torch.zeros(2, 30, 80, device="meta")
    decode_full(rec, feats, torch.tensor([20, 26]), 2, search)
    assert seen == [(torch.device("meta"), torch.device("meta"))] * 2


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA GPU here (torch.cuda.is_available() is False): the trainer=gpu "
                           "rehearsal only runs on a machine with one")
@pytest.mark.parametrize("variant", list(TRAIN))
def test_gpu_rehearsal(variant, real_path, tmp_path):
    """trainer=gpu (1 device, bf16-mixed) on a real GPU, then evaluate.py (CPU) on final.pt."""
    _, data, env, _ = real_path
    out = tmp_path / "train"
    proc = run_cli("train.py", "model=emformer_base", "data=librispeech", f"data.root={data}",
                   f"variant={variant}", "trainer=gpu", "trainer.val_check_interval=2", *SHRINK,
                   f"paths.output_dir={out}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _json(out / "metrics.json")
    assert summary["steps"] == 2 and summary["val"]["val/wer"] >= 0
    ev = tmp_path / "ev"
    proc = run_cli("evaluate.py", f"ckpt={out / 'final.pt'}", "model=emformer_base", "data=librispeech",
                   f"data.root={data}", f"variant={variant}", "max_utterances=1", "flops=false",
                   f"paths.output_dir={ev}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _json(ev / "metrics.json")["params_total"] == summary["surgery"][0]["params_after"]
