"""Missing, empty, truncated, corrupt and foreign checkpoints, and checkpoints of another
variant or architecture: one clear line that names the file and lists what differs."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from emformer_variants.errors import UserError
from emformer_variants.models.build import resolve_checkpoint
from emformer_variants.models.checkpoints import diff_variants, peek, state_digest
from emformer_variants.models.features import FeatureConfig
from emformer_variants.models.recognizer import Recognizer, recognizer_payload, save_recognizer
from emformer_variants.models.tokenizer import train_tokenizer
from emformer_variants.surgery.registry import apply_surgery_, requested_specs
from emformer_variants.utils.config_checks import check_train_config
from tests.conftest import TEXTS, TINY_ARCH, compose_config, run_cli

MOE = {"name": "moe", "num_experts": 4, "top_k": 2, "d_ff": 16, "init": "upcycle"}


def _tiny_rec(variant: dict | None = None) -> Recognizer:
    """A model of the TINY_ARCH config (what the CLI tests train), optionally with a variant."""
    arch = OmegaConf.to_container(compose_config("train", TINY_ARCH).model.arch, resolve=True)
    torch.manual_seed(0)
    rec = Recognizer(arch, FeatureConfig(), train_tokenizer(TEXTS * 5))
    if variant:
        apply_surgery_(rec, variant, init="convert")
    return rec


def _lightning_ckpt(rec: Recognizer, path) -> None:
    """The layout train.py's checkpoints have (LightningModule state + recorded recognizer)."""
    state = {f"recognizer.{k}": v for k, v in rec.state_dict().items()}
    payload = recognizer_payload(rec) | {"state_digest": state_digest(state)}
    torch.save({"emformer_variants": payload, "state_dict": state, "global_step": 3, "epoch": 0,
                "loops": {}, "optimizer_states": [], "lr_schedulers": []}, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    save_recognizer(_tiny_rec(), d / "dense.pt")
    save_recognizer(_tiny_rec(MOE), d / "moe.pt")
    _lightning_ckpt(_tiny_rec(MOE), d / "moe.ckpt")
    raw = (d / "dense.pt").read_bytes()
    (d / "empty.pt").write_bytes(b"")
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (d / "noise.pt").write_bytes(bytes(range(256)) * 64)
    (d / "metrics.json").write_text(json.dumps({"wer": 0.1}))
    torch.save({"weights": [1, 2, 3]}, d / "foreign.pt")
    _damage_tensor_bytes(d / "dense.pt", d / "corrupt.pt")
    return d


def _damage_tensor_bytes(src, dst) -> None:
    """Overwrite 32 bytes in the middle of the largest tensor record of a torch zip file: the
    zip structure and the pickle stay valid, so torch.load succeeds on the damaged file."""
    import struct
    import zipfile

    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[start:start + 32] = bytes(b ^ 0x5A for b in raw[start:start + 32])
    dst.write_bytes(bytes(raw))


@pytest.mark.parametrize("name,needle", [
    ("missing.pt", "checkpoint not found"),
    ("empty.pt", "checkpoint is empty (0 bytes"),
    ("truncated.pt", "cannot read checkpoint"),
    ("noise.pt", "cannot read checkpoint"),
    ("metrics.json", "cannot read checkpoint"),
    ("foreign.pt", "not an emformer-variants checkpoint"),
    ("corrupt.pt", "do not match the checksum recorded when the file was written (the file is corrupt)"),
])
def test_bad_files_for_evaluation(files, name, needle):
    with pytest.raises(UserError) as e:
        resolve_checkpoint(str(files / name), compose_config("evaluate", ["ckpt=base"]).model)
    msg = str(e.value)
    assert needle in msg and str(files / name) in msg and "\n" not in msg


@pytest.mark.parametrize("name,needle", [
    ("empty.pt", "checkpoint is empty (0 bytes"),
    ("truncated.pt", "the file is truncated or not a torch checkpoint"),
    ("foreign.pt", "not an emformer-variants checkpoint"),
])
def test_bad_files_for_resume(files, name, needle):
    cfg = compose_config("train", [*TINY_ARCH, "init=scratch", f"ckpt_path={files / name}"])
    with pytest.raises(UserError) as e:
        check_train_config(cfg)
    assert needle in str(e.value) and str(files / name) in str(e.value)


def test_corrupt_resume_checkpoint_fails_its_checksum(files, tmp_path):
    _damage_tensor_bytes(files / "moe.ckpt", tmp_path / "last.ckpt")
    assert peek(tmp_path / "last.ckpt").kind == "lightning"  # readable: only the checksum tells
    with pytest.raises(UserError, match="last.ckpt: the weights do not match the checksum"):
        peek(tmp_path / "last.ckpt", verify=True)


def test_resume_with_another_variant_lists_what_differs(files):
    ok = [*TINY_ARCH, "init=scratch", f"ckpt_path={files / 'moe.ckpt'}", "variant=moe",
          "variant.num_experts=4", "variant.d_ff=16"]
    check_train_config(compose_config("train", [*ok, "variant.init=upcycle"]))  # the same variant resumes
    with pytest.raises(UserError) as e:
        check_train_config(compose_config("train", [*ok, "variant.top_k=1", "variant.init=random"]))
    msg = str(e.value)
    assert msg.startswith(f"ckpt_path={files / 'moe.ckpt'}: the checkpoint differs from the requested model")
    assert "moe.top_k: 2 in the checkpoint vs 1 requested" in msg
    assert "moe.init: 'upcycle' in the checkpoint vs 'random' requested" in msg
    with pytest.raises(UserError, match="variant moe in the checkpoint vs mla requested"):
        check_train_config(compose_config("train", [*TINY_ARCH, "init=scratch",
                                                    f"ckpt_path={files / 'moe.ckpt'}", "variant=mla"]))
    with pytest.raises(UserError, match="variant moe in the checkpoint vs dense requested"):
        check_train_config(compose_config("train", [*TINY_ARCH, "init=scratch",
                                                    f"ckpt_path={files / 'moe.ckpt'}"]))


def test_resume_with_another_architecture_lists_what_differs(files):
    with pytest.raises(UserError) as e:  # the default tiny size, not the checkpoint's test size
        check_train_config(compose_config("train", ["init=scratch", f"ckpt_path={files / 'moe.ckpt'}",
                                                    "variant=moe", "variant.num_experts=4", "variant.d_ff=16",
                                                    "variant.init=upcycle"]))
    assert "arch.encoding_dim: 32 in the checkpoint vs 256 requested" in str(e.value)
    assert "arch.transformer_ffn_dim: 64 in the checkpoint vs 1024 requested" in str(e.value)
    assert "; and 1 more;" in str(e.value)  # at most 6 listed: the line stays readable


def test_resume_from_final_pt_is_refused(files):
    with pytest.raises(UserError, match="holds a recognizer but no optimizer, scheduler or loop state"):
        check_train_config(compose_config("train", [*TINY_ARCH, "init=scratch",
                                                    f"ckpt_path={files / 'dense.pt'}"]))


def test_expected_variant_in_evaluation(files):
    rec = resolve_checkpoint(str(files / "moe.pt"), compose_config("evaluate", ["ckpt=base"]).model)
    moe = dict(MOE)
    assert diff_variants(rec.variants, requested_specs(moe)) == []
    assert "moe.num_experts: 4 in the checkpoint vs 8 requested" in \
        diff_variants(rec.variants, requested_specs({**moe, "num_experts": 8}))
    assert diff_variants(rec.variants, requested_specs({"name": "mla", "kv_rank_ratio": 0.5})) == \
        ["variant moe in the checkpoint vs mla requested"]


def test_cli_evaluate_expected_variant_and_truncated_file(files, mini_corpus, tmp_path):
    common = ["data=manifest", f"data.root={mini_corpus}", "beam=1", "flops=false"]
    proc = run_cli("evaluate.py", f"ckpt={files / 'dense.pt'}", "variant=moe", *common,
                   f"paths.output_dir={tmp_path / 'a'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == (f"error: ckpt={files / 'dense.pt'}: the checkpoint differs from the "
                                   "requested model: variant dense in the checkpoint vs moe requested; pass "
                                   "the matching variant= or another checkpoint")
    proc = run_cli("evaluate.py", f"ckpt={files / 'truncated.pt'}", *common,
                   f"paths.output_dir={tmp_path / 'b'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "truncated.pt: cannot read checkpoint" in proc.stderr
